"""Peak memory of one training step per method, on the corpus's most memory-hungry batches:
`python -m benchmarks.memory` (after a benchmark run has prepared the corpus).

Each method runs in a process of its own (peak RSS is per process): the benchmark's student and a
randomly initialised teacher of the benchmark's shape (loaded in every process, so that the
figures differ by what each method computes), plain AdamW, the two batches with the largest
attention maps (sentences x length^2) and the batch with the most sentences, at --max-tokens 4096.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from a2d.config import MethodConfig, ModelConfig
from a2d.data import ParallelData
from a2d.distill import DistillationModule, FrozenTeacher
from a2d.model import Transformer
from benchmarks.run import HERE, RECIPE, STUDENT, TEACHER

METHODS = {"none": {"name": "none"}, "word_kd": {"name": "word_kd"}, "a2d faithful-described": {"name": "a2d"},
           "a2d corrected": {"name": "a2d", "a2d_mode": "corrected"}}


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def hungriest_batches(data: ParallelData, max_tokens: int) -> list[list[int]]:
    batches = data.batches(max_tokens, seed=1)
    maps = lambda b: len(b) * max(max(len(data.src[i]), len(data.tgt[i])) for i in b) ** 2  # noqa: E731
    return sorted(batches, key=maps)[-2:] + sorted(batches, key=len)[-1:]


def measure(corpus: Path, method: dict, threads: int) -> dict:
    """This process: peak RSS after loading, then after each of the batches' steps."""
    torch.set_num_threads(threads)
    data = ParallelData(str(corpus))
    torch.manual_seed(0)
    teacher_cfg = ModelConfig(vocab_size=8000, **TEACHER)
    method_cfg = MethodConfig(**method)
    teacher = FrozenTeacher(Transformer(teacher_cfg), method_cfg)
    module = DistillationModule(Transformer(ModelConfig(vocab_size=8000, **STUDENT)), method_cfg,
                                teacher_cfg if method_cfg.needs_teacher else None).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)
    steps, loaded = [], peak_gib()
    for indices in hungriest_batches(data, RECIPE["max_tokens"]):
        batch = data.collate(indices)
        started = time.perf_counter()
        loss, _ = module(batch, teacher if method_cfg.needs_teacher else None, 1, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps.append({"batch": list(batch.src.shape), "target_length": batch.prev.size(1),
                      "seconds": round(time.perf_counter() - started, 2), "peak_rss_gib": round(peak_gib(), 3)})
    return {"loaded_gib": round(loaded, 3), "steps": steps}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(HERE / "work"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", choices=list(METHODS), help=argparse.SUPPRESS)  # the child process's method
    args = p.parse_args(argv)
    corpora = sorted(Path(args.work).glob("corpus-test*/train.safetensors"))
    if not corpora:
        raise SystemExit(f"no prepared corpus under {args.work}: run `python -m benchmarks` first")
    if args.one:
        print(json.dumps(measure(corpora[0], METHODS[args.one], args.threads)))
        return
    results = {}
    for name in METHODS:
        child = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--work", args.work, "--threads",
                                str(args.threads), "--one", name], capture_output=True, text=True, check=True)
        results[name] = json.loads(child.stdout.splitlines()[-1])
        steps = results[name]["steps"]
        print(f"{name:<14} loaded {results[name]['loaded_gib']:.2f} GiB; peak after each step: "
              + ", ".join(f"{s['peak_rss_gib']:.2f} GiB ({s['batch'][0]}x{s['batch'][1]}, {s['seconds']} s)"
                          for s in steps), flush=True)
    base = max(s["peak_rss_gib"] for s in results["none"]["steps"])
    for name, result in results.items():
        print(f"{name:<14} peak {max(s['peak_rss_gib'] for s in result['steps']) / base:.2f}x no-KD's")


if __name__ == "__main__":
    main()
