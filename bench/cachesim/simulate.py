"""Prefix-cache simulator: replay a trace through the engine's RadixCache for several eviction policies and
KV capacities, beside the offline Belady bound and the infinite cache.

    python -m bench.cachesim --trace T.jsonl --capacity 10k,50k,200k --policy lru,lfu,segment,learned,belady \
        [--pair none|table|native] [--block-size 16] [--inflight 0] [--learned-model M.json] \
        [--format pairserve|mooncake] [--limit N] --json OUT.json --plot OUT.png

Capacities are KV tokens (suffixes k / M); the pool holds capacity // block_size blocks. Reported per policy
and capacity: token hit rate (cached prompt tokens / prompt tokens, as the engine's token_hit_rate), request
hit rate (requests with any cached token), prefill tokens saved / computed, evicted tokens, and for each
policy the share of the LRU→Belady gap it closes. Replay semantics: bench/cachesim/replay.py; the bound: bench/cachesim/belady.py.
"""
from __future__ import annotations

import argparse
import json
import time

from bench.cachesim.belady import belady_bound, flatten, infinite_bound
from bench.cachesim.replay import CacheReplay
from bench.cachesim.traces import open_trace
from bench.cachesim.units import UnitTrace, to_units
from engine.radix_cache import eviction_policy_names

DEFAULT_MODEL = "bench/data/learned_policy.json"
DEFAULT_BLOCK_SIZE = 16


def parse_capacities(text: str, footprint_tokens: int | None = None) -> list[int]:
    """'10k,50k,1.5M' -> [10000, 50000, 1500000]; 'P%' is P percent of footprint_tokens (the trace's distinct
    prompt blocks, in tokens: what an infinite cache ends up holding)."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        try:
            if part.endswith("%"):
                if footprint_tokens is None:
                    raise ValueError
                value = int(float(part[:-1]) / 100 * footprint_tokens)
            else:
                scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
                value = int(float(part.rstrip("km")) * scale)
        except ValueError:
            raise ValueError(f"capacity: cannot read {part!r} (write e.g. 10k,50k,1.5M or 5%,20%)") from None
        if value <= 0:
            raise ValueError(f"capacity: must be positive (got {part!r})")
        out.append(value)
    return out


def footprint_tokens(trace: UnitTrace) -> int:
    return len(trace.interner) * trace.block_size


def load_units(path: str, fmt: str, block_size: int | None, pair: str, limit: int | None = None,
               progress: bool = False) -> UnitTrace:
    """Stream a trace file into units (see bench/cachesim/units.py).

    `block_size` None takes the trace's own (its header's; 512 for Mooncake; DEFAULT_BLOCK_SIZE for a
    header-less trace of token ids). Given, it also names the block size of a header-less trace's hash_ids (and
    of a Mooncake trace's); a header that says otherwise is a ValueError."""
    head, requests = open_trace(path, fmt, block_size, limit)
    block_size = block_size or head.block_size or DEFAULT_BLOCK_SIZE
    return to_units(_checked(requests, head.block_size, block_size), block_size, pair, progress)


def _checked(requests, hash_block_size: int | None, block_size: int):
    """hash_ids can only be replayed at the block size they were hashed with."""
    for req in requests:
        if req.hash_ids is not None and hash_block_size is None:
            raise ValueError("block_size: the trace has hash_ids but no header naming their block size; "
                             "give it with --block-size N")
        if req.hash_ids is not None and hash_block_size != block_size:
            raise ValueError(f"block_size: the trace's hash_ids cover blocks of {hash_block_size} tokens; "
                             f"replay it with --block-size {hash_block_size}")
        yield req


def simulate(trace: UnitTrace, capacities: list[int], policies: list[str], learned_model: str | None = None,
             inflight: int = 0, progress: bool = False) -> dict:
    """Every (policy, capacity) cell plus the infinite bound, as a JSON-ready dict."""
    known = set(eviction_policy_names()) | {"learned", "belady"}
    for p in policies:
        if p not in known:
            raise ValueError(f"policy: unknown {p!r} (choose from {', '.join(sorted(known))})")
    if "learned" in policies:  # through the engine's policy registry; replays pass it their ReplayContext
        from bench.cachesim.learned import TreeEnsemble, register_learned_policy

        register_learned_policy(TreeEnsemble.load(learned_model or DEFAULT_MODEL))
    footprint = footprint_tokens(trace)  # before the replays: native PAIR interns the prompts it builds
    acc = flatten(trace)
    rows = []
    for cap in capacities:
        for name in policies:
            t = time.perf_counter()
            if name == "belady":
                stats = belady_bound(trace, cap, acc)
            else:
                stats = CacheReplay(trace, cap, name, inflight).run(progress, f"{name}@{cap}")
            rows.append({**stats.to_json(), "seconds": round(time.perf_counter() - t, 3)})
            if progress:
                print(f"{name:>8} @ {cap:>9}: token hit {stats.token_hit_rate:.4f}, request hit "
                      f"{stats.request_hit_rate:.4f} ({rows[-1]['seconds']} s)", flush=True)
    inf = infinite_bound(trace, acc).to_json()
    return {"block_size": trace.block_size, "requests": len(trace.requests), "query_tokens": trace.query_tokens,
            "footprint_tokens": footprint,
            "inflight": inflight, "infinite": inf, "results": rows, "gap_closed": gap_closed(rows)}


def gap_closed(rows: list[dict], min_gap: float = 0.005) -> dict:
    """{capacity: {policy: (hit - lru) / (belady - lru)}} where both LRU and Belady were run and Belady beats
    LRU by at least min_gap (a ratio of two near-equal rates says nothing)."""
    by = {(r["policy"], r["capacity_tokens"]): r["token_hit_rate"] for r in rows}
    out: dict = {}
    for (policy, cap), hit in by.items():
        lru, best = by.get(("lru", cap)), by.get(("belady", cap))
        if policy in ("lru", "belady") or lru is None or best is None or best - lru < min_gap:
            continue
        out.setdefault(str(cap), {})[policy] = (hit - lru) / (best - lru)
    return out


def markdown_table(result: dict, key: str = "token_hit_rate") -> str:
    policies = list(dict.fromkeys(r["policy"] for r in result["results"]))
    caps = list(dict.fromkeys(r["capacity_tokens"] for r in result["results"]))
    cell = {(r["policy"], r["capacity_tokens"]): r[key] for r in result["results"]}
    lines = ["| capacity (tokens) | " + " | ".join(policies) + " | infinite |",
             "|---:|" + "---:|" * (len(policies) + 1)]
    for cap in caps:
        vals = " | ".join(f"{cell[(p, cap)]:.3f}" if (p, cap) in cell else "-" for p in policies)
        lines.append(f"| {cap:,} | {vals} | {result['infinite'][key]:.3f} |")
    return "\n".join(lines)


def plot(result: dict, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    policies = list(dict.fromkeys(r["policy"] for r in result["results"]))
    for p in policies:
        pts = sorted((r["capacity_tokens"], r["token_hit_rate"]) for r in result["results"] if r["policy"] == p)
        style = {"linestyle": "--", "color": "black"} if p == "belady" else {}
        ax.plot([c for c, _ in pts], [h for _, h in pts], marker="o", label=p, **style)
    ax.axhline(result["infinite"]["token_hit_rate"], color="gray", linestyle=":", label="infinite")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on short ranges
    ax.set_xlabel("KV capacity (tokens)")
    ax.set_ylabel("token hit rate")
    ax.set_title(title or f"block {result['block_size']}, {result['requests']:,} requests")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--format", default="pairserve", choices=["pairserve", "mooncake"])
    ap.add_argument("--capacity", default="10k,50k,200k", help="KV tokens (10k, 1.5M) or %% of the footprint")
    ap.add_argument("--policy", default="lru,lfu,segment,belady")
    ap.add_argument("--pair", default="none", choices=["none", "table", "native"])
    ap.add_argument("--block-size", type=int, default=None,
                    help="tokens per block (default: the trace's header; 512 for Mooncake; "
                         f"{DEFAULT_BLOCK_SIZE} for a header-less trace of token ids)")
    ap.add_argument("--inflight", type=int, default=0, help="requests kept running (locked) meanwhile")
    ap.add_argument("--learned-model", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N requests only")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--title", default="")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    trace = load_units(a.trace, a.format, a.block_size, a.pair, a.limit, progress=True)
    print(f"{len(trace.requests):,} requests, {len(trace.interner):,} distinct blocks "
          f"({time.perf_counter() - t:.1f} s to load)", flush=True)
    capacities = parse_capacities(a.capacity, footprint_tokens(trace))
    result = simulate(trace, capacities, a.policy.split(","), a.learned_model, a.inflight, progress=True)
    result.update(trace=a.trace, pair=a.pair, format=a.format)
    if a.pair == "native":
        result["bounds_note"] = ("belady and infinite are over the unrefined prompts; native PAIR changes the "
                                 "prompts it replays, so its policies can exceed them")
    print(markdown_table(result))
    if result["gap_closed"]:
        print("share of the LRU→Belady gap closed:", json.dumps(result["gap_closed"]))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    if a.plot:
        plot(result, a.plot, a.title)

