"""Where a training step's time goes: `python -m benchmarks.profile [student|teacher]`.

Runs a few steps of the benchmark's shapes (plain AdamW, the step the DeepSpeed engine wraps)
under torch.profiler on the prepared corpus and prints the busiest operators, the share of time
in matrix products and the FLOP/s those reach. Needs a `python -m benchmarks` work directory.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from a2d.config import MethodConfig, ModelConfig
from a2d.data import ParallelData
from a2d.distill import DistillationModule
from a2d.model import Transformer
from benchmarks import hardware
from benchmarks.run import HERE, RECIPE, STUDENT, TEACHER

GEMMS = ("aten::mm", "aten::addmm", "aten::bmm")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    p.add_argument("shape", choices=["student", "teacher"])
    p.add_argument("--work", default=str(HERE / "work"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpora = sorted(Path(args.work).glob("corpus-test*/train.safetensors"))
    if not corpora:
        raise SystemExit(f"no prepared corpus under {args.work}: run `python -m benchmarks` first")
    data = ParallelData(str(corpora[0]))
    batches = data.batches(RECIPE["max_tokens"], seed=1)
    random.Random(1).shuffle(batches)
    shape = STUDENT if args.shape == "student" else TEACHER
    module = DistillationModule(Transformer(ModelConfig(vocab_size=8000, **shape)), MethodConfig("none")).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)

    def step(indices) -> int:
        batch = data.collate(indices)
        loss, _ = module(batch, None, 1, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return batch.target_tokens

    for indices in batches[:2]:  # warm-up
        step(indices)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        tokens = sum(step(indices) for indices in batches[2:2 + args.steps])
        seconds = time.perf_counter() - started
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMMS)
    parameters = sum(q.numel() for q in module.parameters())
    model_gflops = hardware.training_gflops(parameters, tokens / seconds)
    print(f"{args.shape}: {tokens / seconds:,.0f} target tokens/s under the profiler; matrix products "
          f"{100 * gemm / total:.0f}% of operator time; model FLOP/s {model_gflops:.0f} G, that is "
          f"{model_gflops / (gemm / total):.0f} GFLOP/s while in matrix products, against a "
          f"{hardware.matmul_peak(args.threads):.0f} GFLOP/s 2048x2048 matmul")


if __name__ == "__main__":
    main()
