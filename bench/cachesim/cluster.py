"""Multi-replica prefix-cache replay: one trace routed across N simulated replicas, each the engine's own
RadixCache + SlotAllocator (replay.py's CacheReplay with its own KV pool), under a router from routing.py.

    python -m bench.cachesim --trace T.jsonl --replicas 4,8,16,32,64 --routing round_robin,cache_aware,exact \
        --capacity 16k [--policy lru] [--block-size 16] [--concurrency 64] [--format pairserve|mooncake] \
        [--limit N] [--json OUT.json]

(`--replicas` switches bench.cachesim to this mode: --capacity is then each replica's pool, one size, and
--policy each replica's eviction policy, one name.)

Per request, in timestamp order: the router picks a replica from the prompt's units and the replicas' loads;
the replica replays the request (match, allocate/evict, insert, as the engine's KV manager does); with
`exact` routing the replica's KV events (engine/kv_events/, collected from its tree exactly as the engine
publishes them) are then applied to the router's index. Load model: the last N × concurrency routed requests
are in flight, so a replica's load is how many of them it got (sglang-router's balance guard reads these).

Reported per (replicas, routing): aggregate token hit rate, per-replica requests / token hit rate / prefill
tokens computed, the load imbalance of prefill work (busiest replica / mean), and `prefill_capacity_x`:
(prompt tokens / N) / (prefill tokens the busiest replica computed), how many times the traffic a cacheless,
perfectly balanced fleet could take, when prefill bounds throughput.
"""
from __future__ import annotations

import json
import time
from collections import deque

from bench.cachesim.replay import CacheReplay
from bench.cachesim.routing import ROUTINGS, ExactRouter, make_router
from bench.cachesim.units import UnitTrace
from engine.kv_events import KVEventCollector


class ClusterReplay:
    def __init__(self, trace: UnitTrace, num_replicas: int, capacity_tokens: int, routing: str,
                 policy: str = "lru", concurrency: int = 64, seed: int = 0):
        if num_replicas < 1:
            raise ValueError(f"replicas: must be >= 1 (got {num_replicas})")
        if concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1 (got {concurrency})")
        self.trace = trace
        self.n = num_replicas
        self.routing = routing
        self.router = make_router(routing, num_replicas, trace.block_size, seed)
        self.replicas = [CacheReplay(trace, capacity_tokens, policy) for _ in range(num_replicas)]
        self.collectors = None
        if isinstance(self.router, ExactRouter):
            self.collectors = [KVEventCollector(1) for _ in range(num_replicas)]  # replays key trees by unit
            for replica, collector in zip(self.replicas, self.collectors):
                replica.tree.set_listener(collector)
        self.loads = [0] * num_replicas
        self._in_flight: deque[int] = deque()
        self._max_in_flight = num_replicas * concurrency
        self.requests = [0] * num_replicas

    def step(self, req) -> int:
        units = req.units.tolist()
        r = self.router.route(units, self.loads)
        self.router.routed(units, r)
        hit = self.replicas[r].step(req)
        if self.collectors is not None:
            self.router.on_events(r, self.collectors[r].take_events())
        self.requests[r] += 1
        self.loads[r] += 1
        self._in_flight.append(r)
        if len(self._in_flight) > self._max_in_flight:
            self.loads[self._in_flight.popleft()] -= 1
        return hit

    def run(self, progress: bool = False) -> dict:
        from tqdm import tqdm

        for req in tqdm(self.trace.requests, desc=f"{self.routing} x{self.n}", disable=not progress,
                        mininterval=2, unit="req", leave=False):
            self.step(req)
        return self.result()

    def result(self) -> dict:
        stats = [r.finish() for r in self.replicas]
        query = sum(s.query_tokens for s in stats)
        hit = sum(s.hit_tokens for s in stats)
        computed = [s.query_tokens - s.hit_tokens for s in stats]
        busiest = max(computed) if computed else 0
        mean = sum(computed) / self.n
        return {
            "replicas": self.n, "routing": self.routing, "policy": stats[0].policy,
            "capacity_tokens_per_replica": stats[0].capacity_tokens, "requests": sum(s.requests for s in stats),
            "query_tokens": query, "hit_tokens": hit, "token_hit_rate": hit / max(query, 1),
            "prefill_tokens_computed": query - hit,
            "prefill_imbalance": busiest / mean if mean else 1.0,
            "prefill_capacity_x": (query / self.n) / busiest if busiest else float("inf"),
            "per_replica": [{"requests": s.requests, "token_hit_rate": s.token_hit_rate,
                             "prefill_tokens_computed": c} for s, c in zip(stats, computed)],
        }


def simulate_cluster(trace: UnitTrace, replicas: list[int], routings: list[str], capacity_tokens: int,
                     policy: str = "lru", concurrency: int = 64, progress: bool = False) -> list[dict]:
    for name in routings:
        if name not in ROUTINGS:
            raise ValueError(f"routing: unknown {name!r} (choose from {', '.join(ROUTINGS)})")
    rows = []
    for n in replicas:
        for name in routings:
            t = time.perf_counter()
            row = ClusterReplay(trace, n, capacity_tokens, name, policy, concurrency).run(progress)
            row["seconds"] = round(time.perf_counter() - t, 2)
            rows.append(row)
            if progress:
                print(f"x{n:<3} {name:>12}: token hit {row['token_hit_rate']:.4f}, imbalance "
                      f"{row['prefill_imbalance']:.2f}, capacity x{row['prefill_capacity_x']:.2f} "
                      f"({row['seconds']} s)", flush=True)
    return rows


def markdown_table(rows: list[dict]) -> str:
    routings = list(dict.fromkeys(r["routing"] for r in rows))
    sizes = list(dict.fromkeys(r["replicas"] for r in rows))
    cell = {(r["replicas"], r["routing"]): r for r in rows}
    head = " | ".join(f"{name} hit / cap ×" for name in routings)
    lines = [f"| replicas | {head} |", "|---:|" + "---:|" * len(routings)]
    for n in sizes:
        vals = " | ".join(f"{cell[(n, k)]['token_hit_rate']:.3f} / {cell[(n, k)]['prefill_capacity_x']:.2f}"
                          if (n, k) in cell else "-" for k in routings)
        lines.append(f"| {n} | {vals} |")
    return "\n".join(lines)


def add_cluster_args(ap) -> None:
    ap.add_argument("--replicas", default=None, help="cluster mode: replica counts, e.g. 4,8,16,32,64")
    ap.add_argument("--routing", default="round_robin,cache_aware,exact", help=f"cluster mode: {', '.join(ROUTINGS)}")
    ap.add_argument("--concurrency", type=int, default=64, help="cluster mode: requests in flight per replica")


def run_cluster_cli(a, trace: UnitTrace, capacity: int) -> None:
    """bench.cachesim's cluster mode (a: its parsed arguments, trace: loaded)."""
    if "," in a.policy or "," in a.capacity:
        raise SystemExit("bench.cachesim: with --replicas give one --capacity (per replica) and one --policy")
    rows = simulate_cluster(trace, [int(x) for x in a.replicas.split(",")], a.routing.split(","), capacity,
                            a.policy, a.concurrency, progress=True)
    print(markdown_table(rows))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"trace": a.trace, "block_size": trace.block_size, "concurrency": a.concurrency,
                       "requests": len(trace.requests), "query_tokens": trace.query_tokens, "results": rows}, f,
                      indent=1)
