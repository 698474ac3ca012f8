"""Run a command, timestamp its output lines as they arrive, and read its peak memory."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Finished:
    lines: list[tuple[float, str]]  # (seconds since start, line) of stdout and stderr together
    peak_rss_gib: float
    seconds: float


def run_measured(command: list[str], env: dict, log_path) -> Finished:
    """Runs `command` to the end (raising with its log on failure); peak RSS from wait4, of the process itself."""
    started = time.perf_counter()
    lines = []
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                   bufsize=1)
        for line in process.stdout:
            lines.append((time.perf_counter() - started, line.rstrip("\n")))
            log.write(line)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(line for _, line in lines[-40:])
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({process.returncode}); log {log_path}:\n{tail}")
    return Finished(lines, usage.ru_maxrss / 2**20, time.perf_counter() - started)


def throughput(updates: list[tuple[int, float]], skip: int) -> dict:
    """Target tokens per second over [(target tokens, seconds)] of each update, the first `skip` left out."""
    timed = updates[skip:]
    if not timed:
        raise ValueError(f"only {len(updates)} updates: none left after skipping {skip}")
    tokens, seconds = sum(t for t, _ in timed), sum(s for _, s in timed)
    return {"tokens_per_s": tokens / seconds, "seconds_per_update": seconds / len(timed),
            "tokens_per_update": tokens / len(timed), "updates_timed": len(timed),
            "median_update_tokens_per_s": statistics.median(t / s for t, s in timed)}


def thread_env(threads: int, **extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **extra}
    env.pop("PYTHONPATH", None)
    return env
