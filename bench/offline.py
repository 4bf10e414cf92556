"""Offline throughput: prefill and decode tokens/s at several batch sizes, against the machine and HF.

    python -m bench.offline [--model bench|demo|PATH] [--batches 1,8,32] [--prompt-len 256] [--new-tokens 64]

For each batch size B (same random prompts for every system):
- pairserve prefill tok/s (max_new_tokens=1) and decode tok/s (B * (N-1) tokens over the wall time of the N-token
  run after its last prefill step);
- the same run's measured bf16 / fp32 matmul FLOP/s and the fraction of it that prefill achieves
  (model FLOPs = 2 * non-embedding params per token + attention);
- decode against a memory-bandwidth floor: a decode step must at least read every weight once plus the batch's
  KV cache; at the same run's measured copy bandwidth that bounds decode tok/s from above (`decode_floor_frac`);
- engine overhead: wall time per step outside the model forward (scheduling, batch building, sampling,
  detokenization), from timing the model runner's forward calls during the decode run;
- HF transformers padded batched `generate` (left padding, its fastest CPU mode) on the same prompts, and the ratio
  of end-to-end times (HF's decode tok/s is the difference of an N-token and a 1-token run, so noisier);
- with `--repeats R`, R prefill runs of each system, alternating (both models loaded), so drift meets both alike:
  prefill figures are medians, `prefill_speedup` the median of the R paired HF / pairserve ratios.
The radix cache is disabled so every prompt is computed.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from bench.forward_split import ForwardSplit
from bench.common.machine import matmul_flops, memory_bandwidth
from bench.common.model_paths import resolve_model


def flops_per_token(cfg, context: int) -> float:
    """Forward FLOPs of one token at a given context length (matmuls only)."""
    h, L = cfg.hidden_size, cfg.num_layers
    qkv = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    per_layer = qkv + cfg.num_heads * cfg.head_dim * h + 3 * h * cfg.intermediate_size
    attn = 2 * cfg.num_heads * cfg.head_dim * context  # QK^T and PV
    return 2.0 * (L * (per_layer + attn) + h * cfg.vocab_size / max(context, 1))


def decode_step_bytes(cfg, batch: int, context: int, dtype_bytes: int) -> float:
    """Bytes one decode step must read at least: every weight but the input embedding table (only `batch` rows
    of it are read, unless it is tied to the LM head) plus K and V of `context` tokens per request."""
    h, L, d = cfg.hidden_size, cfg.num_layers, cfg.head_dim
    attn = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * d + cfg.num_heads * d * h
    weights = L * (attn + 3 * h * cfg.intermediate_size) + h * cfg.vocab_size
    kv = batch * context * L * 2 * cfg.num_kv_heads * d
    return float(weights + kv) * dtype_bytes


def run_pairserve(path: str, prompts: list[list[int]], new_tokens: int, dtype: str,
                  hf_prefill=None, repeats: int = 1) -> tuple[list[float], float, float, float, list[float]]:
    """(prefill-only wall s of each repeat, prefill + decode wall s, decode wall s within the latter (from the end of
    its last prefill step), engine overhead s per step in the latter, HF's prefill wall s of each repeat).

    `hf_prefill` (a callable timing HF's prefill of the same prompts, or None) runs right after each of pairserve's
    `repeats` prefill runs, so the machine's drift (large on a shared VM) meets both systems alike."""
    from engine import Engine

    budget = sum(len(p) for p in prompts)
    with Engine(model_path=path, dtype=dtype, disable_radix_cache=True, max_running_requests=len(prompts),
                max_prefill_tokens=max(budget, 256), chunked_prefill_size=-1,
                kv_cache_tokens=budget + len(prompts) * (new_tokens + 8)) as eng:
        warm = {"max_new_tokens": 2, "temperature": 0, "ignore_eos": True}
        eng.generate(input_ids=prompts[:1], sampling_params=warm)
        prefill_s, hf_s = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            eng.generate(input_ids=prompts, sampling_params={**warm, "max_new_tokens": 1})
            prefill_s.append(time.perf_counter() - t)
            if hf_prefill is not None:
                hf_s.append(hf_prefill())
        with ForwardSplit() as split:
            t = time.perf_counter()
            eng.generate(input_ids=prompts, sampling_params={**warm, "max_new_tokens": new_tokens})
            end = time.perf_counter()
        tn = end - t
    return prefill_s, tn, end - split.last_extend_end, (tn - split.seconds) / max(split.steps, 1), hf_s


def hf_generator(path: str, prompts: list[list[int]], dtype: str):
    """HF transformers' model for the prompts, warmed up: returns gen(k) -> wall s of a padded batched greedy
    `generate` of k new tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    n = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), n), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding
        ids[i, n - len(p):] = torch.tensor(p)
        mask[i, n - len(p):] = 1

    def gen(k: int) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=k, min_new_tokens=k,
                           do_sample=False, pad_token_id=0)
        return time.perf_counter() - t

    gen(2)
    return gen


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bench")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 where the CPU computes it natively, else float32")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--repeats", type=int, default=1,
                    help="prefill runs per batch, pairserve and HF alternating; medians are reported")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error(f"--repeats must be >= 1 (got {a.repeats})")
    from engine.config import ModelConfig
    from engine.models.loader import resolve_dtype

    a.dtype = resolve_dtype(a.dtype)

    path = resolve_model(a.model)
    cfg = ModelConfig.from_hf(path)
    # a CPU without a native bf16 path runs bf16 matmuls ~500x slower than fp32: time only the dtypes served here
    peak = {dt: matmul_flops(getattr(torch, dt)) for dt in dict.fromkeys((a.dtype, "float32"))}
    bandwidth = memory_bandwidth()
    dtype_bytes = torch.empty((), dtype=getattr(torch, a.dtype)).element_size()
    print(f"model {a.model} ({cfg.architecture}, {cfg.num_layers} layers, hidden {cfg.hidden_size}); threads "
          f"{torch.get_num_threads()}; matmul peak "
          + ", ".join(f"{dt} {flops / 1e9:.0f} GFLOP/s" for dt, flops in peak.items())
          + f"; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    from engine.models.loader import load_tokenizer

    vocab = min(cfg.vocab_size, len(load_tokenizer(path)))  # ids past the tokenizer are refused as input
    g = torch.Generator().manual_seed(0)
    rows = []
    for B in [int(x) for x in a.batches.split(",")]:
        prompts = [torch.randint(10, vocab - 10, (a.prompt_len,), generator=g).tolist() for _ in range(B)]
        hf_gen = None if a.no_hf else hf_generator(path, prompts, a.dtype)
        prefill_s, tn, t_decode, overhead, hf_prefill_s = run_pairserve(
            path, prompts, a.new_tokens, a.dtype, None if hf_gen is None else (lambda: hf_gen(1)), a.repeats)
        t1 = median(prefill_s)
        prefill_tps = B * a.prompt_len / t1
        decode_tps = B * (a.new_tokens - 1) / max(t_decode, 1e-9)
        frac = prefill_tps * flops_per_token(cfg, a.prompt_len // 2) / peak[a.dtype]
        mid_context = a.prompt_len + a.new_tokens // 2
        floor_tps = B * bandwidth / decode_step_bytes(cfg, B, mid_context, dtype_bytes)
        row = {"batch": B, "prefill_tok_s": prefill_tps, "decode_tok_s": decode_tps, "prefill_peak_frac": frac,
               "decode_floor_tok_s": floor_tps, "decode_floor_frac": decode_tps / floor_tps,
               "overhead_ms_per_step": 1e3 * overhead, "prefill_s": prefill_s}
        if hf_gen is not None:
            h1, hn = median(hf_prefill_s), hf_gen(a.new_tokens)
            # each repeat's ratio pairs runs made back to back; their median is the figure drift moves least
            ratios = [h / p for h, p in zip(hf_prefill_s, prefill_s)]
            row.update(hf_prefill_tok_s=B * a.prompt_len / h1, hf_decode_tok_s=B * (a.new_tokens - 1) / (hn - h1),
                       hf_prefill_s=hf_prefill_s, prefill_speedup=median(ratios),
                       hf_total_s=hn, total_s=tn, speedup_total=hn / tn)
            del hf_gen  # the next batch loads its own copy; free this one first
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    print()
    print(f"| batch | prefill tok/s | % of {a.dtype} matmul peak | decode tok/s | % of bandwidth floor | "
          "overhead ms/step | HF prefill tok/s | prefill speedup vs HF | HF decode tok/s | end-to-end speedup vs HF |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        hf = (f"{r['hf_prefill_tok_s']:.0f} | {r['prefill_speedup']:.2f}× | {r['hf_decode_tok_s']:.0f} | "
              f"{r['speedup_total']:.2f}×" if "hf_total_s" in r else "- | - | - | -")
        print(f"| {r['batch']} | {r['prefill_tok_s']:.0f} | {100 * r['prefill_peak_frac']:.0f}% | "
              f"{r['decode_tok_s']:.0f} | {100 * r['decode_floor_frac']:.0f}% | {r['overhead_ms_per_step']:.2f} | "
              f"{hf} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "dtype": a.dtype, "peak_flops": peak, "copy_bandwidth": bandwidth,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
