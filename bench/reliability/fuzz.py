"""R1: the radix cache and slot allocator under random operations, driven through the scheduler's KVManager
exactly as the scheduler drives them (admit with a cached-prefix match and lock, reserve slots evicting when short,
cache a computed prefix mid-prefill, finish or abort, evict, flush), two tenants, prefix isolation on or off.
Every `check_every` operations the full integrity check runs (tree recount, every usable slot owned exactly once:
free list, tree or one request); at the end every request is released and the cache flushed, and every slot must
be free again: `leaked` counts those that are not."""
from __future__ import annotations

import random
import time

from engine.sampling_params import SamplingParams
from engine.scheduler.kv_manager import KVManager
from engine.scheduler.request import Req

POOL_SLOTS = 512
MAX_REQS = 8


def _random_prompt(rng: random.Random, segments: list[list[int]]) -> list[int]:
    ids: list[int] = []
    for _ in range(rng.randint(1, 4)):
        ids.extend(rng.choice(segments))
    return ids + [rng.randrange(50) for _ in range(rng.randint(1, 12))]


def run_fuzz(ops: int = 100_000, seed: int = 0, check_every: int = 1000) -> dict:
    rng = random.Random(seed)
    counts = {"admit": 0, "prefill_chunk": 0, "decode": 0, "finish": 0, "abort": 0,
              "evict": 0, "flush": 0, "checks": 0}
    violations: list[str] = []
    start = time.perf_counter()
    done = 0
    for page_size, isolate in ((1, False), (4, True), (1, True), (2, False)):
        share = ops // 4 if (page_size, isolate) != (2, False) else ops - 3 * (ops // 4)
        kv = KVManager(POOL_SLOTS, page_size, MAX_REQS, True, rng.choice(["lru", "lfu", "segment"]),
                       isolate_tenants=isolate)
        segments = [[rng.randrange(50) for _ in range(rng.randint(2, 20))] for _ in range(6)]
        live: list[Req] = []
        n_rid = 0
        for i in range(share):
            op = rng.random()
            try:
                if op < 0.15 and kv.has_free_row():
                    n_rid += 1
                    req = Req(rid=f"r{n_rid}", input_ids=_random_prompt(rng, segments),
                              sampling=SamplingParams(max_new_tokens=8), tenant=rng.choice(["a", "b"]))
                    kv.admit(req)
                    counts["admit"] += 1
                    live.append(req)
                elif op < 0.65 and live:
                    req = rng.choice(live)
                    if req.kv_len < req.seq_len:  # a prefill chunk: compute some tokens, cache them
                        take = rng.randint(1, req.seq_len - req.kv_len)
                        if kv.reserve(req, req.kv_len + take):
                            req.kv_len += take
                            kv.cache_unfinished(req)
                            counts["prefill_chunk"] += 1
                    elif kv.reserve(req, req.kv_len + 1):  # decode one token
                        req.output_ids.append(rng.randrange(50))
                        req.kv_len = req.seq_len - 1
                        counts["decode"] += 1
                elif op < 0.75 and live:
                    req = live.pop(rng.randrange(len(live)))
                    counts["finish" if req.kv_len >= req.prompt_len else "abort"] += 1  # before release zeroes it
                    kv.release(req)
                elif op < 0.82:
                    kv.evict(rng.randint(1, 64))
                    counts["evict"] += 1
                elif op < 0.83 and not live:
                    kv.tree.reset()
                    counts["flush"] += 1
                elif live and kv.allocator.num_free == 0 and kv.tree.evictable_size == 0:
                    req = live.pop(0)  # the pool is full of live requests: retract one, as the scheduler does
                    kv.release(req)
                    counts["abort"] += 1
            except AssertionError as e:
                violations.append(f"op {done + i}: {e}")
                break
            if (done + i + 1) % check_every == 0:
                counts["checks"] += 1
                try:
                    kv.check_integrity(live)
                except AssertionError as e:
                    violations.append(f"check after op {done + i + 1}: {e}")
                    break
        done += share
        for req in live:
            kv.release(req)
        kv.check_integrity([])
        counts["checks"] += 1
        kv.tree.reset()
        leaked = kv.capacity - kv.allocator.num_free
        if leaked:
            violations.append(f"page_size {page_size}, isolate {isolate}: {leaked} slots not free after flush")
    return {"ops": ops, "seed": seed, "check_every": check_every, "counts": counts, "violations": violations[:5],
            "leaked_slots": sum(int(v.split(": ")[1].split()[0]) for v in violations if "not free" in v),
            "seconds": round(time.perf_counter() - start, 2), "ok": not violations}
