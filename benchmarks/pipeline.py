"""Pipeline overhead: the wall time of a Snakemake re-run of a finished experiment (nothing to do)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def noop_rerun(work: Path, config: Path = ROOT / "tests" / "configs" / "tiny.yaml") -> dict:
    """Runs the experiment to the end once (if not yet finished), then times a plain re-run."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(config, work / config.name)
    # Rules call `python -m a2d`: this interpreter's environment first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--profile",
               str(ROOT / "workflow" / "profiles" / "local"), "--cores", "2", "--directory", str(work),
               "--configfile", str(work / config.name)]
    first = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if first.returncode != 0:
        raise RuntimeError(f"snakemake failed on {config}:\n{first.stderr[-3000:]}")
    started = time.perf_counter()
    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - started
    if again.returncode != 0 or "Nothing to be done" not in again.stdout + again.stderr:
        raise RuntimeError(f"the re-run was not a no-op:\n{(again.stdout + again.stderr)[-3000:]}")
    return {"seconds": seconds, "experiment": config.name}
