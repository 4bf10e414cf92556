"""Offline bounds on the prefix-cache hit rate of a UnitTrace: Belady/MIN at block granularity, and the
infinite cache.

What `belady_bound` computes, exactly. Flatten the trace into block accesses: request r touches its insert
units u_1..u_n in order (bench/cachesim/units.py); an access is *weighted* when the unit is one the request looks up
(j <= matchable), the extra last whole block the engine inserts but never matches is an unweighted access.
A cache of C blocks may load a unit only when it is accessed, may decline to load it (bypass), and scores a
hit for every weighted access to a resident unit. The bound is the maximum number of hits over all such
caches, computed by farthest-in-future with bypass: after an access, a unit is worth keeping only until its
next access if that access is weighted (key = that access's position); if the next access is unweighted or
there is none, it is dropped (it can be re-loaded for free at that unweighted access, which is itself an
access). A new unit evicts the resident unit with the largest key when its own key is smaller, otherwise it
is bypassed. For uniform-size items this greedy is optimal (it solves the equivalent maximum set of
"keep u from access a to its next weighted access" intervals with at most C overlapping); tests check it
against exhaustive search on small traces.

Why it bounds every replayed policy at the same capacity: the engine's tree is one such cache (it loads
units only when a request inserts them, and its hits are matched blocks, which were resident); it is also
prefix-closed and shares its capacity with in-flight requests, restrictions the bound relaxes. The bound is
not itself prefix-closed. With PAIR native the requests' blocks depend on the tree, so the bound is taken over
the unrefined prompts, and a refining policy can exceed it.

`infinite_bound`: hits when nothing is ever evicted (a weighted access hits iff the unit was seen before).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from bench.cachesim.units import UnitTrace

_NEVER = np.iinfo(np.int64).max
_CHUNK = 1 << 20  # accesses converted to Python ints at a time (bounds memory on long traces)


@dataclass
class BoundStats:
    policy: str
    capacity_tokens: int | None  # None: infinite
    block_size: int
    requests: int
    query_tokens: int
    hit_tokens: int
    hit_requests: int
    per_request_hits: np.ndarray  # [requests] hit tokens

    @property
    def token_hit_rate(self) -> float:
        return self.hit_tokens / max(self.query_tokens, 1)

    @property
    def request_hit_rate(self) -> float:
        return self.hit_requests / max(self.requests, 1)

    def to_json(self) -> dict:
        return {"policy": self.policy, "capacity_tokens": self.capacity_tokens, "block_size": self.block_size,
                "requests": self.requests, "query_tokens": self.query_tokens, "hit_tokens": self.hit_tokens,
                "token_hit_rate": self.token_hit_rate, "request_hit_rate": self.request_hit_rate,
                "prefill_tokens_saved": self.hit_tokens, "prefill_tokens_computed": self.query_tokens - self.hit_tokens}


@dataclass
class Accesses:
    """The flattened trace: unit, weighted flag and request index per access, and each access's key (the
    position of the unit's next access if that one is weighted, else _NEVER)."""

    units: np.ndarray  # [N] int32
    weighted: np.ndarray  # [N] bool
    request: np.ndarray  # [N] int32 (int64 past 2**31 accesses)
    key: np.ndarray  # [N] int64
    first_seen: np.ndarray  # [N] bool: no earlier access of this unit


def flatten(trace: UnitTrace) -> Accesses:
    lengths = np.fromiter((len(r.units) for r in trace.requests), np.int64, len(trace.requests))
    matchable = np.fromiter((r.matchable for r in trace.requests), np.int64, len(trace.requests))
    total = int(lengths.sum())
    units = np.empty(total, np.int32)
    pos = 0
    for r in trace.requests:  # copy each request's array("i") into place (no per-unit Python loop)
        units[pos:pos + len(r.units)] = np.frombuffer(r.units, np.int32)
        pos += len(r.units)
    index_type = np.int32 if total < np.iinfo(np.int32).max else np.int64
    request = np.repeat(np.arange(len(lengths), dtype=index_type), lengths)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(total) - np.repeat(starts, lengths)  # index within the request
    weighted = position < np.repeat(matchable, lengths)
    del position
    order = np.argsort(units, kind="stable")  # accesses of one unit, in time order, are adjacent
    same = units[order[1:]] == units[order[:-1]]
    nxt = np.full(total, -1, np.int64)
    nxt[order[:-1][same]] = order[1:][same]
    key = np.where((nxt >= 0) & weighted[np.maximum(nxt, 0)], nxt, _NEVER)
    first_seen = np.ones(len(units), bool)
    first_seen[order[1:][same]] = False
    return Accesses(units, weighted, request, key, first_seen)


def _stats(name: str, trace: UnitTrace, capacity: int | None, hit_units: np.ndarray) -> BoundStats:
    bs = trace.block_size
    per_request = hit_units.astype(np.int64) * bs
    return BoundStats(name, capacity, bs, len(trace.requests), trace.query_tokens, int(per_request.sum()),
                      int((per_request > 0).sum()), per_request)


def infinite_bound(trace: UnitTrace, acc: Accesses | None = None) -> BoundStats:
    acc = acc if acc is not None else flatten(trace)
    hits = acc.weighted & ~acc.first_seen
    return _stats("infinite", trace, None, np.bincount(acc.request[hits], minlength=len(trace.requests)))


def belady_bound(trace: UnitTrace, capacity_tokens: int, acc: Accesses | None = None) -> BoundStats:
    """Farthest-in-future with bypass over C = capacity_tokens // block_size blocks (see the module doc)."""
    acc = acc if acc is not None else flatten(trace)
    capacity = capacity_tokens // trace.block_size
    resident: dict[int, int] = {}  # unit -> key
    heap: list[tuple[int, int]] = []  # (-key, unit), lazily invalidated
    hit_flags = bytearray(len(acc.units))
    never = int(_NEVER)
    for lo in range(0, len(acc.units), _CHUNK):
        hi = min(lo + _CHUNK, len(acc.units))
        chunk = zip(acc.units[lo:hi].tolist(), acc.key[lo:hi].tolist(), acc.weighted[lo:hi].tolist())
        for i, (u, k, w) in enumerate(chunk, lo):
            if u in resident:
                hit_flags[i] = w
                if k == never:
                    del resident[u]
                else:
                    resident[u] = k
                    heapq.heappush(heap, (-k, u))
                continue
            if k == never or capacity == 0:
                continue
            if len(resident) >= capacity:
                while resident.get(heap[0][1]) != -heap[0][0]:
                    heapq.heappop(heap)  # stale entry: the unit was re-keyed or dropped
                far_key, far_unit = -heap[0][0], heap[0][1]
                if far_key < k:
                    continue  # bypass: the newcomer is needed later than everything resident
                heapq.heappop(heap)
                del resident[far_unit]
            resident[u] = k
            heapq.heappush(heap, (-k, u))
            if len(heap) > 4 * capacity + 1024:
                heap = [(-key, unit) for unit, key in resident.items()]
                heapq.heapify(heap)
    hits = np.bincount(acc.request[np.frombuffer(hit_flags, np.uint8).astype(bool)], minlength=len(trace.requests))
    return _stats("belady", trace, capacity * trace.block_size, hits)
