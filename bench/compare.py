"""pairserve beside its peers on the same model and the same request stream, rounds alternated (ABC, BCA, ...).

    python -m bench.compare --model bench --dataset random|gsp|loghub [dataset / arrival flags of bench.serving]
        --backends pairserve,hf[,openai=URL] [--variants radix | none,radix,nomix,table,native] --rounds 3
        [--output compare.json]

Entries: one `pairserve:VARIANT` per --variants item (a launched server each, with bench.serving.backends'
VARIANT_FLAGS: none = radix cache off, radix = cache on and refine none, table / native = that --pair-policy;
table and native need ICL requests, i.e. --dataset loghub), then the peers: `hf` (in-process padded generate)
and `openai` (the server at URL). Every entry is started and warmed up (--warmup-requests, default 8) before
round 1. Each round runs every entry once on the identical request stream and arrival times, with the prefix
cache flushed before each run, so slow drift of a shared machine hits every entry alike; the order rotates by one
entry per round (A B C, B C A, ...): with a fixed order, the entry listed first measured lower in both of two
5-round runs on a 2-core VM, by up to ~14% against the same server listed second. Ratios are pairserve / peer
per round, then the median over rounds, for request and output throughput (higher is better for pairserve) and
median / p95 E2E latency and TTFT (lower is better).
Writes the JSON (args, entries, per-run records with per-request latencies, summary, ratios) and the plots of
bench/common/plots.py next to it (same stem). Ctrl-C / SIGTERM stops after what was measured and still writes and prints
it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from bench.common.plots import write_plots
from bench.serving.loadgen import add_workload_args, check_workload_args, load_workload, make_record, open_backend, \
    run_once, sigterm_as_interrupt
from bench.serving.backends import VARIANT_FLAGS

PEERS = ("hf", "openai")
SUMMARY_METRICS = ("request_throughput", "output_throughput", "median_e2e_latency_ms", "p95_e2e_latency_ms",
                   "median_ttft_ms", "p95_ttft_ms", "token_hit_rate")
RATIO_METRICS = SUMMARY_METRICS[:-1]


def parse_backends(spec: str) -> list[tuple[str, str | None]]:
    """'pairserve,hf,openai=URL' → [(name, url or None)]; pairserve must be there; ValueError names the flag."""
    out = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, url = item.partition("=")
        if name not in ("pairserve", *PEERS):
            raise ValueError(f"--backends: unknown backend {name!r} (pairserve, hf, openai=URL)")
        if name == "openai" and not url:
            raise ValueError("--backends: openai needs its server, as openai=URL")
        if name != "openai" and url:
            raise ValueError(f"--backends: {name} takes no URL")
        out.append((name, url or None))
    if "pairserve" not in [n for n, _ in out]:
        raise ValueError("--backends: must include pairserve (ratios are pairserve / peer)")
    if len({n for n, _ in out}) != len(out):
        raise ValueError("--backends: a backend is listed twice")
    return out


def parse_variants(spec: str, dataset: str) -> list[str]:
    variants = [v.strip() for v in spec.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANT_FLAGS]
    if bad or not variants:
        raise ValueError(f"--variants: {bad or spec!r} not in {tuple(VARIANT_FLAGS)}")
    if dataset != "loghub" and {"table", "native"} & set(variants):
        raise ValueError("--variants: table and native refine ICL requests; they need --dataset loghub")
    if len(set(variants)) != len(variants):
        raise ValueError("--variants: a variant is listed twice")
    return variants


def summarize(runs: list[dict], entries: list[str]) -> dict[str, dict[str, float | None]]:
    """{entry: {metric: median over that entry's rounds}} (None where no round reported the metric)."""
    out = {}
    for e in entries:
        mine = [r for r in runs if r["entry"] == e and r["completed"] > 0]
        out[e] = {"rounds": len(mine)}
        for m in SUMMARY_METRICS:
            vals = [r[m] for r in mine if r.get(m) is not None]
            out[e][m] = float(np.median(vals)) if vals else None
    return out


def ratios(runs: list[dict], entries: list[str]) -> dict[str, dict[str, float | None]]:
    """{"P / Q": {metric: median over rounds of P's value / Q's value}} for each pairserve entry P and peer Q,
    over the rounds both completed."""
    by = {(r["entry"], r["round"]): r for r in runs if r["completed"] > 0}
    mine = [e for e in entries if e.startswith("pairserve:")]
    peers = [e for e in entries if not e.startswith("pairserve:")]
    out = {}
    for p in mine:
        for q in peers:
            rounds = sorted({rd for (e, rd) in by if e == p} & {rd for (e, rd) in by if e == q})
            row = {"rounds": len(rounds)}
            for m in RATIO_METRICS:
                vals = [by[p, rd][m] / by[q, rd][m] for rd in rounds if by[q, rd][m]]
                row[m] = float(np.median(vals)) if vals else None
            out[f"{p} / {q}"] = row
    return out


def format_tables(summary: dict, ratio_rows: dict) -> str:
    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    head = "| entry | rounds | req/s | out tok/s | p50 E2E ms | p95 E2E ms | p50 TTFT ms | p95 TTFT ms | hit rate |"
    lines = [head, "|" + "---|" * 9]
    for e, s in summary.items():
        lines.append(f"| {e} | {s['rounds']} | " + " | ".join(
            cell(s[m], f) for m, f in zip(SUMMARY_METRICS, (".2f", ".1f", ".1f", ".1f", ".1f", ".1f", ".3f"))) + " |")
    if ratio_rows:
        lines += ["", "| pairserve / peer (median over rounds) | rounds | req/s | out tok/s | p50 E2E | p95 E2E | "
                      "p50 TTFT | p95 TTFT |", "|" + "---|" * 8]
        for name, r in ratio_rows.items():
            lines.append(f"| {name} | {r['rounds']} | " + " | ".join(
                cell(r[m], ".2f") + ("x" if r[m] is not None else "") for m in RATIO_METRICS) + " |")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="pairserve,hf", help="pairserve,hf[,openai=URL]")
    ap.add_argument("--variants", default="radix", help="pairserve policies: none,radix,nomix,table,native")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output", default=None, help="JSON path (default compare-DATASET.json); plots beside it")
    add_workload_args(ap)
    ap.set_defaults(warmup_requests=8)
    a = ap.parse_args(argv)
    check_workload_args(ap, a)
    if a.rounds < 1:
        ap.error("--rounds: must be >= 1")
    try:
        a.backend_list = parse_backends(a.backends)
        a.variant_list = parse_variants(a.variants, a.dataset)
    except ValueError as e:
        ap.error(str(e))
    a.output = a.output or f"compare-{a.dataset}.json"
    return a


def write_result(path: str, result: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    """Run the comparison; returns the JSON object it writes to --output (plots beside it)."""
    args = parse_args(argv)
    with sigterm_as_interrupt():
        return _main(args)


def _main(args) -> dict:
    path, requests, arrivals = load_workload(args)
    plan = [(f"pairserve:{v}", "pairserve", None, v) for v in args.variant_list]
    plan += [(name, name, url, "radix") for name, url in args.backend_list if name != "pairserve"]
    entries = [p[0] for p in plan]
    servers, runners, runs = [], {}, []
    interrupted = False
    try:
        for entry, backend, url, variant in plan:
            print(f"starting {entry} ...", file=sys.stderr, flush=True)
            runners[entry] = open_backend(backend, args, path, requests, url, variant, servers.append)
            runners[entry].prepare(requests, args.warmup_requests, args.max_concurrency)
        for rnd in range(args.rounds):
            for entry, backend, _, variant in plan[rnd % len(plan):] + plan[:rnd % len(plan)]:
                runners[entry].reset()
                results, duration, interrupted = run_once(runners[entry], requests, arrivals, args.max_concurrency,
                                                          f"round {rnd + 1}/{args.rounds} {entry}")
                meta = {"entry": entry, "backend": backend, "variant": variant if backend == "pairserve" else None,
                        "round": rnd, "notes": list(runners[entry].notes)}
                runs.append(make_record(results, duration, interrupted, meta))
                r = runs[-1]
                hit = "n/a" if r["token_hit_rate"] is None else f"{r['token_hit_rate']:.3f}"
                print(f"round {rnd + 1} {entry}: {r['completed']} done, {r['request_throughput']:.2f} req/s, "
                      f"p95 E2E {r['p95_e2e_latency_ms']:.1f} ms, p50 TTFT {r['median_ttft_ms']:.1f} ms, "
                      f"hit rate {hit}", flush=True)
                if interrupted:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted (Ctrl-C): reporting the runs measured so far", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()
    summary, ratio_rows = summarize(runs, entries), ratios(runs, entries)
    meta_args = {k: v for k, v in vars(args).items() if k not in ("backend_list", "variant_list")}
    meta_args["request_rate"] = "inf" if math.isinf(args.request_rate) else args.request_rate
    meta_args["api_key"] = "<set>" if args.api_key else None  # never write a secret into the results
    result = {"args": meta_args, "entries": entries, "interrupted": interrupted, "timestamp": time.time(),
              "summary": summary, "ratios": ratio_rows, "runs": runs}
    notes = sorted({n for r in runs for n in r["notes"]})
    print()
    print(format_tables(summary, ratio_rows))
    for n in notes:
        print(f"Note: {n}")
    write_result(args.output, result)
    plots = write_plots(result, os.path.splitext(args.output)[0]) if runs else []
    print(f"wrote {args.output}" + (f" and {', '.join(plots)}" if plots else ""))
    return result


if __name__ == "__main__":
    main()
