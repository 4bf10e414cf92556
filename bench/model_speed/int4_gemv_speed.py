"""The int4 GEMV kernel (engine/kernels/cpu/int4_gemv.py) against torch's `_weight_int4pack_mm_for_cpu`, weights
streaming from DRAM: every decoder linear of `--layers` layers of a model, distinct matrices, more bytes than the
last-level cache holds, called in model order.

    python -m bench.model_speed.int4_gemv_speed [--models 0.5B,1.5B] [--layers 24] [--rows 1,2,4,8,16]
        [--group 128] [--repeats 5] [--prefetch 1024]

Per model and M (rows of x): ms per pass over all the layers' linears (best of `--repeats`) and GB/s of packed
int4 weight bytes (N * K / 2 per linear; the bf16 scales and zeros add 4 / G bytes per weight on top). torch is
called as the engine calls it (bf16 activations, cast beforehand), the kernel through its wrapper with fp32
activations into a preallocated output. `--prefetch` takes a comma list to sweep the kernel's prefetch distance.
Run heavy: `flock /tmp/pairserve-heavy.lock python -m bench.model_speed.int4_gemv_speed`.
"""
from __future__ import annotations

import argparse
import time

import torch

from bench.model_speed.int8_gemv_speed import SHAPES, best_seconds
from engine.kernels.cpu.int4_gemv import CpuInt4Gemv


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="0.5B,1.5B")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prefetch", default=None,
                    help="comma list of prefetch distances in bytes (default: the kernel's)")
    a = ap.parse_args(argv)
    kernels = ([CpuInt4Gemv()] if a.prefetch is None
               else [CpuInt4Gemv(prefetch_bytes=int(p)) for p in a.prefetch.split(",")])
    print(f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"group {a.group}, {a.layers} layers; kernel vectorised={kernels[0].vectorised}")
    print("| model | M | int4 MB | torch ms | torch GB/s | " +
          " | ".join(f"kernel (pf {k.prefetch_bytes}) ms | GB/s | x torch" for k in kernels) + " |")
    print("|---|---|---|---|---|" + "---|---|---|" * len(kernels))
    gen = torch.Generator().manual_seed(0)
    for model in a.models.split(","):
        shapes = SHAPES[model]
        # any byte is a valid packed pair of nibbles: random bytes stand in for packed weights
        mats = [(torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen),
                 torch.stack([torch.rand(k // a.group, n, generator=gen) * 0.01,
                              torch.randn(k // a.group, n, generator=gen) * 0.01], -1).bfloat16())
                for _ in range(a.layers) for n, k in shapes]
        total = sum(q.numel() for q, _ in mats)
        for m in (int(r) for r in a.rows.split(",")):
            xs = {k: torch.randn(m, k, generator=gen) for _, k in shapes}
            xbs = {k: x.bfloat16() for k, x in xs.items()}
            outs = [torch.empty(m, q.shape[0]) for q, _ in mats]

            def torch_pass():
                for q, sz in mats:
                    torch.ops.aten._weight_int4pack_mm_for_cpu(xbs[2 * q.shape[1]], q, a.group, sz)

            def kernel_pass(kernel):
                for (q, sz), out in zip(mats, outs):
                    kernel(xs[2 * q.shape[1]], q, sz, a.group, out=out)

            t_torch = best_seconds(torch_pass, a.repeats)
            cells = [f"{t_torch * 1e3:.1f}", f"{total / t_torch / 1e9:.1f}"]
            for kernel in kernels:
                t = best_seconds(lambda: kernel_pass(kernel), a.repeats)
                cells += [f"{t * 1e3:.1f}", f"{total / t / 1e9:.1f}", f"{t_torch / t:.2f}"]
            print(f"| {model} | {m} | {total / 1e6:.0f} | " + " | ".join(cells) + " |", flush=True)
        del mats


if __name__ == "__main__":
    main()
