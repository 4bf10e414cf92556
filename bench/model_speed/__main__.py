"""Model speed at real sizes, against this machine's own floors measured in the same run.

    python -m bench.model_speed --model DIR [--load-format dummy] [--quantization int8|int4]
        [--quant-group-size 128] [--quantize-lm-head] [--dtype auto] [--chunk 512] [--decode-batches 1,16,64]
        [--context 1024] [--decode-steps 8] --output-file OUT.json

1. The machine: matmul FLOP/s in the serving dtype (bf16 where the CPU computes it natively, else fp32: the dtype
   the dense parts run in) and memory copy bandwidth (bench.common.machine).
2. Load (tqdm bar over the checkpoint's tensors): seconds, and the model's resident bytes.
3. Prefill: one 512-token chunk per step (radix cache off), best of a few; tokens/s and the fraction of the matmul
   peak it reaches (model FLOPs per token at the chunk's mean context / peak).
4. Decode at each batch with `context` tokens of context per request: one `context`-token prompt is prefilled
   once, and every request of the batch shares it through the radix cache (its own last token differs), so a
   64 x 1k context costs one 1k prefill. The median decode step gives tokens/s; the floor is the bytes a step
   must read (every linear's stored weight, quantized or dense, plus batch x context tokens of K and V) over
   the copy bandwidth. Requests share their prefix's KV pages, so the K/V part may come from cache: the floor
   counts it as read from memory, as separate prompts would.
5. Peak RSS of this process (ru_maxrss) covers all of it.

The JSON keys: matmul_flops, matmul_dtype, copy_bandwidth, prefill_tokens_per_s, prefill_peak_fraction,
decode [{batch, tokens_per_s, bandwidth_fraction}], peak_rss_bytes, load_seconds, plus the run's settings.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from bench.common.machine import matmul_flops, memory_bandwidth
from bench.model_speed.measure import cached_prefix, decode_step_seconds, model_weight_bytes, prefill_step_seconds
from bench.offline import flops_per_token
from engine.config import LOAD_FORMATS, QUANTIZATIONS, ServerArgs
from engine.model_runner import ModelRunner
from engine.models.loader import DTYPES, resolve_dtype


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint dir (config.json only with --load-format dummy)")
    ap.add_argument("--load-format", default="auto", choices=LOAD_FORMATS)
    ap.add_argument("--quantization", default=None, choices=QUANTIZATIONS)
    ap.add_argument("--quant-group-size", type=int, default=128)
    ap.add_argument("--quantize-lm-head", action="store_true")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--chunk", type=int, default=512, help="prefill tokens per step")
    ap.add_argument("--prefill-repeats", type=int, default=2)
    ap.add_argument("--decode-batches", default="1,16,64")
    ap.add_argument("--context", type=int, default=1024, help="context tokens per request while decoding")
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--output-file", required=True)
    a = ap.parse_args(argv)
    batches = [int(b) for b in a.decode_batches.split(",")]
    dtype = resolve_dtype(a.dtype)
    peak = matmul_flops(getattr(torch, dtype))
    bandwidth = memory_bandwidth()
    print(f"threads {torch.get_num_threads()}; {dtype} matmul {peak / 1e9:.0f} GFLOP/s; copy bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s", flush=True)

    kv_tokens = a.context + max(batches) * (a.decode_steps + 4) + 2 * a.chunk
    args = ServerArgs(model_path=a.model, dtype=dtype, load_format=a.load_format, quantization=a.quantization,
                      quant_group_size=a.quant_group_size, quantize_lm_head=a.quantize_lm_head,
                      kv_cache_tokens=kv_tokens, max_running_requests=max(batches),
                      max_prefill_tokens=max(a.chunk, a.context), chunked_prefill_size=max(a.chunk, a.context),
                      context_length=a.context + a.decode_steps + 8).validate()
    t = time.perf_counter()
    runner = ModelRunner(args, a.model, progress=True)
    load_seconds = time.perf_counter() - t
    cfg = runner.model_config
    weight_bytes = model_weight_bytes(runner.model)
    print(f"\nloaded in {load_seconds:.1f} s; linear weights {weight_bytes / 1e9:.2f} GB", flush=True)

    prefill_s = prefill_step_seconds(runner, args, a.chunk, a.prefill_repeats)
    prefill_tps = a.chunk / prefill_s
    prefill_frac = prefill_tps * flops_per_token(cfg, a.chunk // 2) / peak
    print(f"prefill {a.chunk} tokens: {prefill_tps:.1f} tok/s, {100 * prefill_frac:.1f}% of the matmul peak",
          flush=True)

    kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * DTYPES[dtype].itemsize
    decode = []
    sch, prefix = cached_prefix(runner, args, a.context)  # prefilled once, shared by every batch
    for batch in batches:
        steps = decode_step_seconds(runner, sch, prefix, batch, a.decode_steps)
        step = statistics.median(steps)
        floor_s = (weight_bytes + batch * a.context * kv_bytes_per_token) / bandwidth
        row = {"batch": batch, "tokens_per_s": batch / step, "bandwidth_fraction": floor_s / step,
               "step_seconds": step}
        decode.append(row)
        print(f"decode batch {batch} at {a.context} context: {row['tokens_per_s']:.1f} tok/s, "
              f"{100 * row['bandwidth_fraction']:.1f}% of the bandwidth floor", flush=True)

    out = {
        "model": a.model, "load_format": a.load_format, "quantization": a.quantization,
        "quant_group_size": a.quant_group_size, "quantize_lm_head": a.quantize_lm_head, "dtype": dtype,
        "threads": torch.get_num_threads(), "matmul_flops": peak, "matmul_dtype": dtype,
        "copy_bandwidth": bandwidth, "linear_weight_bytes": weight_bytes, "prefill_chunk": a.chunk,
        "prefill_tokens_per_s": prefill_tps, "prefill_peak_fraction": prefill_frac, "context": a.context,
        "decode": decode,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "load_seconds": load_seconds,
    }
    with open(a.output_file, "w") as f:
        json.dump(out, f, indent=2)
    print(f"peak RSS {out['peak_rss_bytes'] / 2**30:.2f} GiB; wrote {a.output_file}")


if __name__ == "__main__":
    main()
