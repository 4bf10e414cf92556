"""The compiled int8 GEMV (engine/kernels/cpu/int8_gemv.py) against torch's `_weight_int8pack_mm`, with the weights
streaming from memory as in a decode step.

    python -m bench.model_speed.int8_gemv_speed [--layers 24] [--rows 1,2,4,8,16] [--output-file OUT.json]

One pass multiplies the activation rows by every projection (q/k/v fused, o, gate/up fused, down) of `--layers`
decoder layers of the Qwen2.5-0.5B and -1.5B shapes, each layer its own matrices, so the pass reads 358 MB / 1.12 GB
of int8 (well past the last-level cache, as a model's step does). torch's kernel gets bf16 activations and scales
(its fp32 path is scalar), the compiled one fp32. Best of `--repeats` passes; GB/s counts int8 weight bytes.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from engine.kernels.cpu.int8_gemv import CpuInt8Gemv

SHAPES = {  # (N, K) of one decoder layer's projections: fused qkv, o, fused gate_up, down (Qwen2.5 configs)
    "0.5B": [(1152, 896), (896, 896), (9728, 896), (896, 4864)],
    "1.5B": [(2048, 1536), (1536, 1536), (17920, 1536), (1536, 8960)],
}


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: pages touched, library loaded
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output-file")
    a = ap.parse_args(argv)
    kernel = CpuInt8Gemv()
    gen = torch.Generator().manual_seed(0)
    results = []
    print(f"threads {torch.get_num_threads()}; compiled path vectorised: {kernel.vectorised}")
    for name, shapes in SHAPES.items():
        mats = [(torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8), torch.rand(n, generator=gen))
                for _ in range(a.layers) for n, k in shapes]
        scales_bf16 = [s.bfloat16() for _, s in mats]
        weight_bytes = sum(w.numel() for w, _ in mats)
        for m in (int(r) for r in a.rows.split(",")):
            xs = {k: torch.randn(m, k, generator=gen) for _, k in shapes}
            xs_bf16 = {k: x.bfloat16() for k, x in xs.items()}
            outs = [torch.empty(m, w.shape[0]) for w, _ in mats]

            def torch_pass():
                for (w, _), s in zip(mats, scales_bf16):
                    torch.ops.aten._weight_int8pack_mm(xs_bf16[w.shape[1]], w, s)

            def compiled_pass():
                for (w, s), out in zip(mats, outs):
                    kernel(xs[w.shape[1]], w, s, out=out)

            t_torch, t_ours = best_seconds(torch_pass, a.repeats), best_seconds(compiled_pass, a.repeats)
            row = {"shape": name, "rows": m, "weight_bytes": weight_bytes, "torch_ms": 1e3 * t_torch,
                   "compiled_ms": 1e3 * t_ours, "torch_gb_s": weight_bytes / t_torch / 1e9,
                   "compiled_gb_s": weight_bytes / t_ours / 1e9, "speedup": t_torch / t_ours}
            results.append(row)
            print(f"{name} M={m}: torch {row['torch_ms']:.1f} ms ({row['torch_gb_s']:.1f} GB/s), compiled "
                  f"{row['compiled_ms']:.1f} ms ({row['compiled_gb_s']:.1f} GB/s): {row['speedup']:.2f}x", flush=True)
        del mats
    if a.output_file:
        with open(a.output_file, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "layers": a.layers, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
