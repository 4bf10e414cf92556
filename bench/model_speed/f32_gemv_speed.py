"""The compiled fp32 GEMV (engine/kernels/cpu/f32_gemv.py) against oneDNN's packed linear and F.linear (MKL) on
fp32 LM-head shapes, with the weight streaming from memory as in a decode step.

    python -m bench.model_speed.f32_gemv_speed [--shapes 0.5B,1.5B,7B] [--rows 1,2,4,8,16] [--repeats 15]
                                                [--output-file OUT.json]

Per shape (--shapes: names from SHAPES or NxK, e.g. 4096x64) one random weight [N, K] fp32, far past the
last-level cache, and per row count M four calls timed in interleaved rounds (ours, packed, mkl, copy, ours, ...)
so the VM's drift hits all alike; medians over --repeats rounds. "packed" is what the engine runs for an fp32 CPU
layer (engine/models/layers.py BucketedLinear: `_reorder_linear_weight(w, 64)` once, then `_linear_pointwise`),
"mkl" is F.linear on the plain weight, "copy" copies the weight into a preallocated buffer on torch's threads:
the bandwidth reference (it reads and writes every byte, so the memory moves twice its weight GB/s).
GB/s counts weight bytes (N K 4) per call. Each row also records ours' largest difference from F.linear,
relative to F.linear's largest magnitude (fp32 rounding, another summation order).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time

import torch
import torch.nn.functional as F

from engine.kernels.cpu.f32_gemv import CpuF32Gemv

SHAPES = {  # (N, K) of the LM head: vocab x hidden (Qwen2.5 configs; 0.5B ties it to the embedding table)
    "0.5B": (151936, 896),
    "1.5B": (151936, 1536),
    "7B": (152064, 3584),
}
CALLS = ("ours", "packed", "mkl", "copy")


def parse_shapes(spec: str) -> list[tuple[str, int, int]]:
    """"0.5B,512x64" -> [("0.5B", 151936, 896), ("512x64", 512, 64)]; ValueError on anything else."""
    shapes = []
    for name in spec.split(","):
        if name in SHAPES:
            shapes.append((name, *SHAPES[name]))
            continue
        n, sep, k = name.partition("x")
        if not (sep and n.isdigit() and k.isdigit() and int(k) > 0):
            raise ValueError(f"--shapes: {name!r} is neither one of {list(SHAPES)} nor NxK")
        shapes.append((name, int(n), int(k)))
    return shapes


def interleaved_ms(calls: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds of each call, timed round-robin over `repeats` rounds after one warm-up each."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def measure_shape(kernel: CpuF32Gemv, name: str, n: int, k: int, rows: list[int], repeats: int,
                  gen: torch.Generator) -> list[dict]:
    w = torch.randn(n, k, generator=gen) * 0.02
    packed = torch.ops.mkldnn._reorder_linear_weight(w, 64)
    copy_buf = torch.empty_like(w)
    weight_bytes = w.numel() * w.element_size()
    results = []
    for m in rows:
        x = torch.randn(m, k, generator=gen)
        out = torch.empty(m, n)
        want = F.linear(x, w)
        err = (kernel(x, w, out=out) - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
        ms = interleaved_ms({
            "ours": lambda: kernel(x, w, out=out),
            "packed": lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""),
            "mkl": lambda: F.linear(x, w),
            "copy": lambda: copy_buf.copy_(w),
        }, repeats)
        row = {"shape": name, "n": n, "k": k, "rows": m, "weight_bytes": weight_bytes, "max_rel_err": err}
        for c in CALLS:
            row[f"{c}_ms"] = ms[c]
            row[f"{c}_gb_s"] = weight_bytes / ms[c] / 1e6
        row["vs_packed"], row["vs_mkl"] = ms["packed"] / ms["ours"], ms["mkl"] / ms["ours"]
        results.append(row)
        print(f"| {name} | {m} | " + " | ".join(f"{ms[c]:.1f} ({row[f'{c}_gb_s']:.1f})" for c in CALLS)
              + f" | {row['vs_packed']:.2f}x | {row['vs_mkl']:.2f}x |", flush=True)
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--output-file")
    a = ap.parse_args(argv)
    shapes, rows = parse_shapes(a.shapes), [int(r) for r in a.rows.split(",")]
    kernel = CpuF32Gemv()
    gen = torch.Generator().manual_seed(0)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"{started}; threads {torch.get_num_threads()}; compiled path vectorised: {kernel.vectorised}; "
          f"median of {a.repeats} interleaved rounds; ms (GB/s of weight bytes)")
    print("| shape | M | ours | oneDNN packed | F.linear (MKL) | copy of w | ours vs packed | ours vs MKL |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for name, n, k in shapes:
        results += measure_shape(kernel, name, n, k, rows, a.repeats, gen)
    if a.output_file:
        with open(a.output_file, "w") as f:
            json.dump({"started": started, "threads": torch.get_num_threads(), "vectorised": kernel.vectorised,
                       "repeats": a.repeats, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
