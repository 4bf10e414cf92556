"""pairserve replicas behind the real sglang-router, on the log-parsing stream.

    python -m bench.scaleout --replicas 4 --policy cache_aware,round_robin --data DIR [--systems all] \
        [--limit 200] [--num-requests N] [--pair native] [--concurrency 16] [--output-len oracle|model|N] \
        [--model bench|demo|PATH] [--kv-cache-tokens T] [--eviction lru] [--keep-last] [--dtype auto] \
        [--num-threads T] [--seed 0] --output-file OUT.json

Starts N `python -m server` replicas (each its own KV pool of --kv-cache-tokens, --pair-policy from --pair) and,
for each routing policy in turn, a fresh `sglang_router.launch_router --policy P` over them, on 127.0.0.1. Each
policy starts from flushed caches and serves the same stream (stream.py: all --systems interleaved, the first
--num-requests) in a closed loop of --concurrency clients through the router's /v1/chat/completions.

Output (--output-file): for one policy, one object with token_hit_rate (cached / prompt tokens over the
completed responses, from their usage), request_throughput (completed / wall s), p50_latency / p95_latency (s,
submit → response), completed, failed, icl_refined (responses that came back through the router carrying
PAIR's meta_info), and replicas: [{url, requests, token_hit_rate}] (from each replica's /get_server_info, over
the run). For several policies: {"runs": [one object per policy], "ratios": {policy: {token_hit_rate,
request_throughput} / round_robin's}} (the policies run back to back on the same replicas, so their ratios
compare on one machine).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common.model_paths import resolve_model
from bench.scaleout.fleet import start_replicas, start_router
from bench.scaleout.stream import StreamRequest, build_stream
from engine.config import DTYPES, EVICTION_POLICIES
from logparse import LOGHUB_SYSTEMS, list_systems

ROUTER_POLICIES = ("cache_aware", "round_robin", "random")


def replica_stats(url: str) -> dict:
    r = httpx.get(f"{url}/get_server_info", timeout=10.0)
    r.raise_for_status()
    return r.json()


def run_policy(router_url: str, model_name: str, stream: list[StreamRequest], concurrency: int) -> dict:
    """Closed loop through the router; per-request outcomes aggregated."""
    lock = threading.Lock()
    pending = iter(range(len(stream)))
    results: list[dict | None] = [None] * len(stream)
    start = time.perf_counter()

    def worker() -> None:
        with httpx.Client(timeout=600.0) as client:
            while True:
                with lock:
                    i = next(pending, None)
                if i is None:
                    return
                t = time.perf_counter()
                try:
                    r = client.post(f"{router_url}/v1/chat/completions", json={"model": model_name, **stream[i].body})
                    status, body = r.status_code, (r.json() if r.headers.get("content-type", "").startswith(
                        "application/json") else {})
                except httpx.TransportError as e:
                    status, body = 0, {"error": str(e)}
                results[i] = {"status": status, "latency": time.perf_counter() - t, "body": body}

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, len(stream)))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if r is not None and r["status"] == 200]
    prompt = sum(r["body"]["usage"]["prompt_tokens"] for r in ok)
    cached = sum(r["body"]["usage"]["prompt_tokens_details"]["cached_tokens"] for r in ok)
    lat = np.array([r["latency"] for r in ok]) if ok else np.array([float("nan")])
    refined = sum(1 for r in ok if "icl_order" in (r["body"]["choices"][0].get("meta_info") or {}))
    errors = sorted({f"{r['status']}: {str(r['body'])[:200]}" for r in results if r is not None and r["status"] != 200})
    return {"token_hit_rate": cached / max(prompt, 1), "request_throughput": len(ok) / wall,
            "p50_latency": float(np.percentile(lat, 50)), "p95_latency": float(np.percentile(lat, 95)),
            "completed": len(ok), "failed": len(stream) - len(ok), "icl_refined": refined, "wall_s": wall,
            "prompt_tokens": prompt, "cached_tokens": cached, "errors": errors[:5]}


def per_replica(urls: list[str], before: list[dict], after: list[dict]) -> list[dict]:
    out = []
    for url, b, a in zip(urls, before, after):
        queries = a["prefix_cache_queries_total"] - b["prefix_cache_queries_total"]
        hits = a["prefix_cache_hits_total"] - b["prefix_cache_hits_total"]
        out.append({"url": url, "requests": a["finished_total"] - b["finished_total"],
                    "token_hit_rate": hits / max(queries, 1), "evicted_tokens": a["evicted_tokens_total"]
                    - b["evicted_tokens_total"]})
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--policy", default="cache_aware", help=f"router policies, comma-separated, run in turn: "
                    f"{', '.join(ROUTER_POLICIES)}")
    ap.add_argument("--data", required=True, help="Loghub-2k dir (one sub-dir per system)")
    ap.add_argument("--systems", default="all", help="comma-separated names, or all")
    ap.add_argument("--limit", type=int, default=200, help="first N requests of each system's stream (0: all)")
    ap.add_argument("--num-requests", type=int, default=0, help="first N of the interleaved stream (0: all)")
    ap.add_argument("--pair", default="native", choices=["none", "table", "native"], help="replicas' --pair-policy")
    ap.add_argument("--concurrency", type=int, default=16, help="clients in the closed loop")
    ap.add_argument("--output-len", default="oracle", help="oracle | model | N")
    ap.add_argument("--model", default="bench", help="bench (random 31M Qwen2) | demo | checkpoint dir")
    ap.add_argument("--dtype", default="auto", choices=DTYPES)
    ap.add_argument("--kv-cache-tokens", type=int, default=8192, help="KV pool of EACH replica, in tokens")
    ap.add_argument("--eviction", default="lru", choices=EVICTION_POLICIES, help="radix cache eviction policy")
    ap.add_argument("--keep-last", action="store_true", help="native PAIR keeps the most similar example last")
    ap.add_argument("--num-threads", type=int, default=0, help="torch threads per replica (0: cores / replicas)")
    ap.add_argument("--seed", type=int, default=0, help="interleaving of the systems' streams")
    ap.add_argument("--log-dir", default=None, help="replica and router logs (default: a temp dir)")
    ap.add_argument("--output-file", required=True)
    a = ap.parse_args(argv)
    a.policies = a.policy.split(",")
    for p in a.policies:
        if p not in ROUTER_POLICIES:
            ap.error(f"--policy: {p!r} is not one of {ROUTER_POLICIES}")
    if a.replicas < 1 or a.concurrency < 1 or a.limit < 0 or a.num_requests < 0 or a.kv_cache_tokens < 1:
        ap.error("--replicas, --concurrency, --kv-cache-tokens must be >= 1; --limit, --num-requests >= 0")
    if a.output_len not in ("oracle", "model") and not (a.output_len.isdigit() and int(a.output_len) > 0):
        ap.error("--output-len: must be oracle, model or a positive integer")
    available = list_systems(a.data)
    a.system_list = [s for s in LOGHUB_SYSTEMS if s in available] if a.systems == "all" else a.systems.split(",")
    missing = [s for s in a.system_list if s not in available]
    if missing:
        ap.error(f"--systems: {missing} not found under {a.data}")
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    from engine.models.loader import load_tokenizer

    path = resolve_model(args.model)
    stream = build_stream(load_tokenizer(path), args.data, args.system_list, args.limit or None, args.output_len,
                          args.num_requests or None, args.seed)
    threads = args.num_threads or max(1, (os.cpu_count() or 1) // args.replicas)
    flags = ["--kv-cache-tokens", str(args.kv_cache_tokens), "--pair-policy", args.pair, "--dtype", args.dtype,
             "--radix-eviction-policy", args.eviction, "--max-running-requests", str(args.concurrency),
             "--num-threads", str(threads), *(["--pair-keep-last"] if args.keep_last else [])]
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pairserve-scaleout-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"{len(stream)} requests from {len(args.system_list)} systems; {args.replicas} replicas x "
          f"{args.kv_cache_tokens} KV tokens; logs in {log_dir}", file=sys.stderr, flush=True)
    replicas = start_replicas(args.replicas, path, flags, log_dir)
    urls = [r.url for r in replicas]
    model_name = os.path.basename(path.rstrip("/"))
    runs = []
    try:
        for policy in args.policies:
            for url in urls:  # every policy starts cold
                httpx.post(f"{url}/flush_cache", timeout=30.0).raise_for_status()
            router = start_router(urls, policy, log_dir)
            try:
                before = [replica_stats(u) for u in urls]
                run = run_policy(router.url, model_name, stream, args.concurrency)
                after = [replica_stats(u) for u in urls]
            finally:
                router.stop()
            run = {"policy": policy, **run, "replicas": per_replica(urls, before, after)}
            runs.append(run)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.items()
                              if k != "replicas"}), file=sys.stderr, flush=True)
    finally:
        for r in replicas:
            r.stop()
    setup = {"num_replicas": args.replicas, "kv_cache_tokens_per_replica": args.kv_cache_tokens, "model": args.model,
             "pair": args.pair, "concurrency": args.concurrency, "systems": args.system_list,
             "num_requests": len(stream), "output_len": args.output_len, "num_threads_per_replica": threads}
    runs = [{**run, **setup} for run in runs]
    if len(runs) == 1:
        result = runs[0]
    else:
        base = next((r for r in runs if r["policy"] == "round_robin"), None)
        ratios = {} if base is None else {
            r["policy"]: {"token_hit_rate": r["token_hit_rate"] / max(base["token_hit_rate"], 1e-9),
                          "request_throughput": r["request_throughput"] / max(base["request_throughput"], 1e-9)}
            for r in runs if r is not base}
        result = {"runs": runs, "ratios": ratios}
    with open(args.output_file, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result.get("ratios", {}), indent=1))
    return result


if __name__ == "__main__":
    main()
