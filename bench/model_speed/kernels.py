"""The weight-only kernels against the dense matmul, one shape, best-of-N per row count.

    python -m bench.model_speed.kernels [--n 2048] [--k 1536] [--rows 1,8,64] [--group 128] [--repeats 30]

Columns: F.linear in fp32 and bf16; torch's int8 / int4 ops fed fp32 activations (their scalar path) and
QuantizedLinear (the same ops fed bf16 activations, as the engine calls them). Milliseconds per call.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from engine.models.quant import QuantizedLinear, quantize_int4, quantize_int8


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--k", type=int, default=1536)
    ap.add_argument("--rows", default="1,8,64")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args(argv)
    w = torch.randn(a.n, a.k) * 0.02
    wb = w.bfloat16()
    q8, s8 = quantize_int8(w)
    q4, s4, lo = quantize_int4(w, a.group)
    packed4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 1)
    sz32 = torch.stack([s4.t(), (lo + 8 * s4).t()], -1).contiguous()  # fp32 scales for fp32 activations
    int8, int4 = (QuantizedLinear.from_dense(w, None, m, a.group) for m in ("int8", "int4"))
    print(f"[M x {a.k}] @ [{a.k} x {a.n}], group {a.group}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; ms, best of {a.repeats}")
    print("| M | fp32 dense | bf16 dense | int8, fp32 act. | int4, fp32 act. | int8 (engine, bf16 act.) | "
          "int4 (engine, bf16 act.) |")
    print("|---|---|---|---|---|---|---|")
    for m in (int(r) for r in a.rows.split(",")):
        x = torch.randn(m, a.k)
        xb = x.bfloat16()
        cells = [best_ms(lambda: F.linear(x, w), a.repeats), best_ms(lambda: F.linear(xb, wb), a.repeats),
                 best_ms(lambda: torch.ops.aten._weight_int8pack_mm(x, q8, s8), a.repeats),
                 best_ms(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed4, a.group, sz32), a.repeats),
                 best_ms(lambda: int8(x), a.repeats), best_ms(lambda: int4(x), a.repeats)]
        print(f"| {m} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
