"""Facts about this machine that benchmarks report beside their results (measured in the same run)."""
from __future__ import annotations

import time

import torch


def matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of an n×n×n matmul in `dtype` on the CPU with torch's current thread count."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up (allocations, kernel selection)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def memory_bandwidth(n_bytes: int = 256 << 20, repeats: int = 5) -> float:
    """Best-of-`repeats` bytes/s of a large tensor copy (each byte read once and written once).

    The decode floor of bench.offline divides the bytes a step must read by this: a copy is the best case for a
    streaming read, so the floor it gives is optimistic (no model can beat it)."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page faults of the destination
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2.0 * src.numel() * src.element_size() / best
