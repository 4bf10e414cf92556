"""Log-parsing serving benchmark: Loghub streams through the in-process Engine, PAIR off / table / native.

    python -m bench.logparse --data DIR [--systems HDFS,Spark|all] [--limit 200]
        [--pair native | none,table,native,native@40p,none@nocache] [--concurrency 16] [--output-len oracle|model|N]
        [--model bench|demo|PATH] [--load-format auto|dummy] [--quantization int8|int4] [--kv-cache-tokens T]
        [--disable-radix-cache] [--eviction lru|lfu|segment] [--keep-last] [--json OUT] [--trace-out TRACE.jsonl]

Per system: the InferLog stream (logparse.build_stream over ALL the system's lines: DPP pool + kNN examples,
non-candidates then candidates); `--limit N` keeps its first N requests, so a short run is a prefix of the
full one. Then, for each `--pair` variant in turn (back to back, so their throughputs compare on a shared CPU),
a fresh Engine serves the requests in a CLOSED LOOP: `--concurrency` worker threads each keep one request in
flight (`Engine.generate(icl=...)`); the engine batches them.

A variant is POLICY[@POOL]: POLICY none|table|native; POOL `ample` (no eviction expected: the whole stream's
prompts and outputs, capped at --ample-kv-gb), `nocache` (radix cache off), `Np` (N mean prompts' worth of
tokens), or a token count. Without @, the pool is --kv-cache-tokens or ample, and `nocache` with
--disable-radix-cache.

Output length (`--output-len`): `oracle` = the tokens of the ground-truth template in backticks (the answer a
perfect model gives), ignore_eos, greedy; `model` = up to 64 tokens, stop at EOS; N = exactly N tokens.
Latency is submit → result; TTFT is submit → the end of the step that produced the first token (meta_info's
first_token_latency). Not streaming keeps the 64-odd client threads asleep until their request ends: woken every
step, they compete with the engine thread for the GIL and for the two cores.
`--keep-last` sets the engine's `pair_keep_last`; `--load-format dummy` (seeded random weights from a dir of
config.json + tokenizer, e.g. `python -m engine.models.tiny DIR --preset qwen2.5-0.5b`) and `--quantization` are
the engine's flags of the same names, for real-size shapes.
Metric definitions: bench/logparse/report.py. One variant of `--systems HDFS --limit 200` (the longest prompts,
~1750 tokens with the bench tokenizer) takes about a minute on 2 idle cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass

from tqdm import tqdm

from bench.common.model_paths import resolve_model
from bench.logparse.report import (RefineAudit, RequestRecord, add_ratios, format_pivot, format_table, prompt_shape,
                                   summarize, write_json)
from engine.config import DTYPES, EVICTION_POLICIES, LOAD_FORMATS, QUANTIZATIONS
from logparse import LOGHUB_SYSTEMS, build_stream, list_systems, load_system, to_icl

PAIR_POLICIES = ("none", "table", "native")
MODEL_OUTPUT_TOKENS = 64


@dataclass(frozen=True)
class Variant:
    pair: str
    pool: str  # "ample" | "nocache" | "<N>p" | "<tokens>"

    @property
    def name(self) -> str:
        return self.pair if self.pool == "ample" else f"{self.pair}@{self.pool}"


def parse_variants(spec: str, default_pool: str) -> list[Variant]:
    out = []
    for item in spec.split(","):
        pair, at, pool = item.strip().partition("@")
        if at and not pool:
            raise ValueError(f"--pair: {item!r} names no pool after '@'")
        pool = pool or default_pool
        if pair not in PAIR_POLICIES:
            raise ValueError(f"--pair: {pair!r} is not one of {PAIR_POLICIES}")
        number = pool[:-1] if pool.endswith("p") else pool
        if pool not in ("ample", "nocache") and not (number.isdigit() and int(number) > 0):
            raise ValueError(f"--pair: pool {pool!r} must be ample, nocache, Np or a token count")
        out.append(Variant(pair, pool))
    return out


def kv_bytes_per_token(path: str, dtype: str) -> int:
    from engine.config import ModelConfig

    from engine.models.loader import resolve_dtype

    cfg = ModelConfig.from_hf(path)
    elem = 4 if resolve_dtype(dtype) == "float32" else 2
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * elem


def pool_tokens(variant: Variant, records: list[RequestRecord], max_new: list[int], concurrency: int,
                ample_cap: int) -> int | None:
    """KV pool tokens for a variant; never below one request's prompt + output (`nocache` is sized like ample)."""
    prompts = [r.prompt_tokens for r in records]  # unrefined prompt lengths, set at request build time
    need_one = max(p + n for p, n in zip(prompts, max_new)) + 1
    ample = min(sum(prompts) + sum(max_new) + concurrency * need_one, ample_cap)
    if variant.pool in ("ample", "nocache"):
        return max(ample, need_one)
    if variant.pool.endswith("p"):
        return max(int(sum(prompts) / len(prompts) * int(variant.pool[:-1])), need_one)
    return max(int(variant.pool), need_one)


def build_requests(tokenizer, data: str, system: str, limit: int | None, output_len: str):
    """(icl dicts without `refine`, sampling params, records) for the first `limit` requests of the stream."""
    stream = build_stream(load_system(data, system))[:limit]
    icls, sps, records = [], [], []
    for i, q in enumerate(stream):
        icl = to_icl(q)
        prompt_len, fixed, tail = prompt_shape(tokenizer, icl)
        rec = RequestRecord(i, q.line, q.query, q.template, len(q.examples), fixed, tail, prompt_tokens=prompt_len)
        if output_len == "oracle":
            n = len(tokenizer.encode(f"`{q.template}`", add_special_tokens=False))
            sp = {"max_new_tokens": max(n, 1), "ignore_eos": True, "temperature": 0}
        elif output_len == "model":
            sp = {"max_new_tokens": MODEL_OUTPUT_TOKENS, "temperature": 0}
        else:
            sp = {"max_new_tokens": int(output_len), "ignore_eos": True, "temperature": 0}
        icls.append(icl)
        sps.append(sp)
        records.append(rec)
    return icls, sps, records


def run_closed_loop(engine, icls: list[dict], sps: list[dict], records: list[RequestRecord], concurrency: int,
                    desc: str) -> float:
    """Serve every request with `concurrency` in flight; fill the records in place; return the wall time. A request
    the engine refuses with ValueError (a prompt longer than the model's context, say) is recorded as rejected."""
    lock = threading.Lock()
    pending = iter(range(len(icls)))
    errors: list[BaseException] = []
    bar = tqdm(total=len(icls), desc=desc, file=sys.stderr, mininterval=1.0, leave=False)
    start = time.perf_counter()

    def serve(i: int) -> None:
        rec = records[i]
        rec.submit_s = time.perf_counter() - start
        try:
            last = engine.generate(icl=icls[i], sampling_params=sps[i])
        except ValueError as e:  # refused at submission (e.g. longer than the context): count it, serve the rest
            rec.rejected = str(e)
        rec.end_s = time.perf_counter() - start
        if rec.rejected:
            return
        meta = last["meta_info"]
        if meta["finish_reason"]["type"] == "abort":
            raise RuntimeError(f"request {i} aborted: {meta['finish_reason']}")
        if meta["first_token_latency"] is not None:
            rec.first_token_s = rec.submit_s + meta["first_token_latency"]
        rec.text = last["text"]
        rec.prompt_tokens, rec.cached_tokens = meta["prompt_tokens"], meta["cached_tokens"]
        rec.completion_tokens = meta["completion_tokens"]
        rec.icl_order, rec.icl_substituted = list(meta["icl_order"]), meta["icl_substituted"]

    def worker() -> None:
        while not errors:
            with lock:
                i = next(pending, None)
            if i is None:
                return
            try:
                serve(i)
            except BaseException as e:  # stop the others; re-raised below
                errors.append(e)
                return
            with lock:
                bar.update(1)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, len(icls)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    bar.close()
    if errors:
        raise errors[0]
    return wall


def run_variant(path: str, args, variant: Variant, icls, sps, records, ample_cap: int) -> dict:
    from engine import Engine

    kv = pool_tokens(variant, records, [sp["max_new_tokens"] for sp in sps], args.concurrency, ample_cap)
    cache_on = variant.pool != "nocache"
    flags = dict(model_path=path, dtype=args.dtype, load_format=args.load_format, quantization=args.quantization,
                 kv_cache_tokens=kv, disable_radix_cache=not cache_on,
                 radix_eviction_policy=args.eviction, pair_policy=variant.pair, pair_keep_last=args.keep_last,
                 max_running_requests=max(args.concurrency, 1), enable_mixed_chunk=args.enable_mixed_chunk)
    with Engine(**flags) as eng:
        audit = RefineAudit(eng.loop.scheduler.pair)
        eng.generate(prompt="warm up", sampling_params={"max_new_tokens": 2, "ignore_eos": True})
        eng.flush_cache()
        before = eng.get_stats()
        requests = [{**icl, "refine": variant.pair} for icl in icls]
        wall = run_closed_loop(eng, requests, sps, records, args.concurrency, variant.name)
        after = eng.get_stats()
        eng.check_integrity()
    row = {"pair": variant.pair, "variant": variant.name, "radix_cache": cache_on, "kv_cache_tokens": kv}
    row.update(summarize(records, wall,
                         after["prefill_tokens_computed_total"] - before["prefill_tokens_computed_total"],
                         after["evicted_tokens_total"] - before["evicted_tokens_total"], audit.violations))
    row["refinements_audited"] = audit.calls
    return row


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="Loghub-2k dir (one sub-dir per system)")
    ap.add_argument("--systems", default="all", help="comma-separated names, or all")
    ap.add_argument("--limit", type=int, default=200, help="first N requests of each system's stream (0: all)")
    ap.add_argument("--pair", default="native", help="variants POLICY[@POOL], comma-separated, run in turn")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--output-len", default="oracle", help="oracle | model | N")
    ap.add_argument("--model", default="bench", help="bench (random 31M Qwen2) | demo | checkpoint dir")
    ap.add_argument("--dtype", default="auto", choices=DTYPES)
    ap.add_argument("--load-format", default="auto", choices=LOAD_FORMATS,
                    help="dummy: seeded random weights of the config's shapes (no weight files needed)")
    ap.add_argument("--quantization", default=None, choices=QUANTIZATIONS, help="weight-only, as the engine's flag")
    ap.add_argument("--kv-cache-tokens", type=int, default=None)
    ap.add_argument("--ample-kv-gb", type=float, default=1.5, help="cap on an 'ample' pool's KV memory")
    ap.add_argument("--disable-radix-cache", action="store_true")
    ap.add_argument("--enable-mixed-chunk", action=argparse.BooleanOptionalAction, default=True,
                    help="decode running requests in prefill steps (the engine's default)")
    ap.add_argument("--eviction", default="lru", choices=EVICTION_POLICIES, help="radix cache eviction policy")
    ap.add_argument("--keep-last", action="store_true", help="native PAIR keeps the most similar example last")
    ap.add_argument("--json", default=None, help="write {'args', 'results'} here (rewritten after each run)")
    ap.add_argument("--trace-out", default=None, help="JSON lines, one per request")
    a = ap.parse_args(argv)
    if a.concurrency < 1:
        ap.error("--concurrency: must be >= 1")
    if a.limit < 0:
        ap.error("--limit: must be >= 0")
    if a.output_len not in ("oracle", "model") and not (a.output_len.isdigit() and int(a.output_len) > 0):
        ap.error("--output-len: must be oracle, model or a positive integer")
    default_pool = "nocache" if a.disable_radix_cache else (str(a.kv_cache_tokens) if a.kv_cache_tokens else "ample")
    try:
        a.variants = parse_variants(a.pair, default_pool)
    except ValueError as e:
        ap.error(str(e))
    available = list_systems(a.data)
    a.system_list = [s for s in LOGHUB_SYSTEMS if s in available] if a.systems == "all" else a.systems.split(",")
    missing = [s for s in a.system_list if s not in available]
    if missing:
        ap.error(f"--systems: {missing} not found under {a.data}")
    return a


def main(argv=None) -> list[dict]:
    """Run the benchmark; returns the result rows (also printed, and written to --json)."""
    args = parse_args(argv)
    from engine.models.loader import load_tokenizer

    path = resolve_model(args.model)
    tokenizer = load_tokenizer(path)
    ample_cap = int(args.ample_kv_gb * 2**30) // kv_bytes_per_token(path, args.dtype)
    rows: list[dict] = []
    trace = open(args.trace_out, "w") if args.trace_out else None
    try:
        for system in args.system_list:
            icls, sps, base = build_requests(tokenizer, args.data, system, args.limit or None, args.output_len)
            for variant in args.variants:
                records = [RequestRecord(r.index, r.line, r.query, r.template, r.num_examples, r.tail_fixed_tokens,
                                         r.tail_tokens, prompt_tokens=r.prompt_tokens) for r in base]
                row = {"system": system, **run_variant(path, args, variant, icls, sps, records, ample_cap)}
                rows.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                      flush=True)
                if trace:
                    for r in records:
                        trace.write(json.dumps({"system": system, "variant": variant.name, **r.trace()}) + "\n")
                    trace.flush()
                add_ratios(rows)
                if args.json:
                    meta = {k: v for k, v in vars(args).items() if k not in ("variants", "system_list")}
                    write_json(args.json, {**meta, "variants": [v.name for v in args.variants],
                                           "systems": args.system_list}, rows)
    finally:
        if trace:
            trace.close()
    print()
    print(format_table(rows))
    print()
    print(format_pivot(rows))
    return rows

