"""The machine's own limit: fp32 matmul FLOP/s, and what a training run's FLOP/s are measured against."""

from __future__ import annotations

import statistics
import time

import torch


def matmul_peak(threads: int, size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32,
                device: str = "cpu") -> float:
    """Median GFLOP/s of a size x size matmul (after two warm-up products)."""
    torch.set_num_threads(threads)
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    seconds = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        a @ b
        sync()
        seconds.append(time.perf_counter() - started)
    return 2 * size ** 3 / statistics.median(seconds) / 1e9


def training_gflops(parameters: int, tokens_per_s: float) -> float:
    """Model FLOP/s of training at 6 FLOPs per parameter per target token (forward 2, backward 4;
    attention scores and the source side's different length are left out, as is usual)."""
    return 6 * parameters * tokens_per_s / 1e9
