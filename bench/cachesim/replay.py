"""Replay a UnitTrace through the engine's own RadixCache + SlotAllocator, with simulated time.

Per request, in timestamp order, as engine/scheduler/kv_manager.py does it (units: see bench/cachesim/units.py):
  1. PAIR native (optional): refine the ICL request against this replay's tree (engine/pair/refiner.py);
  2. match_prefix(units[:matchable], record_hit=True) and lock the matched node;
  3. allocate the blocks the request still needs: ceil((input_length + output_length - 1) / block_size) minus
     the matched ones; when the allocator is short, evict (need - free) from the tree and retry; if locks held
     by in-flight requests still block it, finish those (oldest first), as the engine would wait for them;
  4. insert(units, slots, boundaries, segment ids), freeing our duplicates of blocks someone cached meanwhile;
  5. finish: unlock and free the blocks the tree did not take (the partial last block, the output).
With inflight=N the last N requests stay unfinished (locked, holding their output blocks) while later ones
run, a simple model of concurrency. Generated tokens are not inserted: traces do not carry them (the engine
caches them at finish; multi-turn traces re-send them inside the next prompt anyway).
The tree's clock is the trace timestamp of the request being replayed (it never goes back: requests are
replayed in timestamp order), so the engine's RadixCache finds victims of monotone policies (lru, lfu, segment)
incrementally, as in the engine (engine/radix_cache/evictable.py).

Policies: a registered name (engine.radix_cache.register_eviction_policy) is built with this replay's
ReplayContext as its policy_context, which is how `learned` (bench/learned_policy.py) gets its context; a
callable spec gets the context directly and returns a policy object.
"""
from __future__ import annotations

from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Union

from bench.cachesim.units import UnitInterner, UnitRequest, UnitTrace, unit_request
from engine.pair.refiner import PairRefiner
from engine.radix_cache import EvictionPolicy, MatchResult, RadixCache
from engine.slot_allocator import SlotAllocator


@dataclass
class ReplayContext:
    """What a policy factory may read about its replay (all live views, read at eviction time)."""

    clock: Callable[[], float]  # the simulated time
    example_popularity: Counter  # example id -> requests so far that carried it
    requests_seen: Callable[[], int]
    start_time: float  # timestamp of the trace's first request
    block_size: int
    capacity_blocks: int


PolicySpec = Union[str, Callable[[ReplayContext], EvictionPolicy]]


@dataclass
class ReplayStats:
    policy: str
    capacity_tokens: int
    block_size: int
    requests: int = 0
    oversized_requests: int = 0  # larger than the whole pool: counted as misses, not replayed
    query_tokens: int = 0
    hit_tokens: int = 0
    hit_requests: int = 0
    evicted_tokens: int = 0
    substituted_examples: int = 0
    per_request_hits: array = field(default_factory=lambda: array("q"), repr=False)  # hit tokens per request

    @property
    def token_hit_rate(self) -> float:
        return self.hit_tokens / max(self.query_tokens, 1)

    @property
    def request_hit_rate(self) -> float:
        return self.hit_requests / max(self.requests, 1)

    def to_json(self) -> dict:
        return {"policy": self.policy, "capacity_tokens": self.capacity_tokens, "block_size": self.block_size,
                "requests": self.requests, "oversized_requests": self.oversized_requests,
                "query_tokens": self.query_tokens, "hit_tokens": self.hit_tokens,
                "token_hit_rate": self.token_hit_rate, "request_hit_rate": self.request_hit_rate,
                "prefill_tokens_saved": self.hit_tokens, "prefill_tokens_computed": self.query_tokens - self.hit_tokens,
                "evicted_tokens": self.evicted_tokens, "substituted_examples": self.substituted_examples}


class UnitTreeView:
    """The tree as PAIR sees it in token terms: keys are tokens, page_size is block_size."""

    def __init__(self, tree: RadixCache, interner: UnitInterner):
        self.tree, self.interner = tree, interner
        self.page_size = interner.block_size

    def match_prefix(self, key, record_hit: bool = False) -> MatchResult:
        units = self.interner.of_tokens(key, len(key) // self.page_size)
        m = self.tree.match_prefix(units, record_hit)
        return MatchResult(m.slots, m.last_node, m.matched_len * self.page_size)

    def segment_successors(self, node):
        bs = self.page_size
        return [type(e)(e.segment_id, e.end_node, [], e.num_tokens * bs, e.hit_count, e.last_access)
                for e in self.tree.segment_successors(node)]


class CacheReplay:
    def __init__(self, trace: UnitTrace, capacity_tokens: int, policy: PolicySpec = "lru", inflight: int = 0):
        """policy: a registered name or a factory ReplayContext -> policy object (see the module docstring)."""
        bs = trace.block_size
        if capacity_tokens < bs:
            raise ValueError(f"capacity: {capacity_tokens} tokens is less than one block of {bs}")
        if inflight < 0:
            raise ValueError(f"inflight: must be >= 0 (got {inflight})")
        self.trace = trace
        self.capacity_blocks = capacity_tokens // bs
        self.inflight = inflight
        self.now = 0.0
        self.popularity: Counter = Counter()
        self.allocator = SlotAllocator(self.capacity_blocks + 1, 1)  # + the allocator's padding page
        clock = self._clock
        self.stats = ReplayStats("", self.capacity_blocks * bs, bs)
        start = trace.requests[0].timestamp if trace.requests else 0.0
        ctx = ReplayContext(clock, self.popularity, lambda: self.stats.requests, start, bs, self.capacity_blocks)
        spec = policy if isinstance(policy, str) else policy(ctx)
        self.tree = RadixCache(1, self.allocator.free, spec, clock, policy_context=ctx)
        self.stats.policy = self.tree.eviction_policy
        self._running: deque = deque()  # (locked node, slots the request owns outright)
        self._refiner = PairRefiner()
        self._view = UnitTreeView(self.tree, trace.interner)

    def _clock(self) -> float:
        return self.now

    def run(self, progress: bool = False, desc: str = "") -> ReplayStats:
        from tqdm import tqdm

        for req in tqdm(self.trace.requests, desc=desc or self.stats.policy, disable=not progress,
                        mininterval=2, unit="req", leave=False):
            self.step(req)
        return self.finish()

    def finish(self) -> ReplayStats:
        """Finish the requests still in flight; the stats are final afterwards."""
        while self._running:
            self._finish_oldest()
        self.stats.evicted_tokens = self.tree.evicted_tokens_total * self.trace.block_size
        return self.stats

    def step(self, req: UnitRequest) -> int:
        """Replay one request; returns its hit tokens."""
        self.now = req.timestamp
        if req.icl is not None:
            req = self._refine(req)
        for eid in req.example_ids:
            self.popularity[eid] += 1
        bs, stats = self.trace.block_size, self.stats
        stats.requests += 1
        stats.query_tokens += req.input_length
        need_blocks = -(-(req.input_length + max(req.output_length - 1, 0)) // bs)
        if need_blocks > self.capacity_blocks:
            stats.oversized_requests += 1
            stats.per_request_hits.append(0)
            return 0
        units = req.units.tolist()
        m = self.tree.match_prefix(units[:req.matchable], record_hit=True)
        self.tree.lock(m.last_node)
        own = self._alloc(need_blocks - m.matched_len)
        slots = m.slots + own
        present = self.tree.insert(units, slots[:len(units)], req.boundaries, req.seg_units)
        if present > m.matched_len:
            self.allocator.free(slots[m.matched_len:present])  # the tree kept its own copy of these
        extra = slots[len(units):]
        if self.inflight:
            node = self.tree.match_prefix(units).last_node
            self.tree.lock(node)
            self.tree.unlock(m.last_node)
            self._running.append((node, extra))
            if len(self._running) > self.inflight:
                self._finish_oldest()
        else:
            self.tree.unlock(m.last_node)
            self.allocator.free(extra)
        hit = m.matched_len * bs
        stats.hit_tokens += hit
        stats.hit_requests += hit > 0
        stats.per_request_hits.append(hit)
        return hit

    def _alloc(self, n: int) -> list[int]:
        slots = self.allocator.alloc(n)
        while slots is None:
            self.tree.evict(n - self.allocator.num_free)
            slots = self.allocator.alloc(n)
            if slots is None:
                assert self._running, "a request that fits the pool could not be allocated"
                self._finish_oldest()
        return slots

    def _finish_oldest(self) -> None:
        node, extra = self._running.popleft()
        self.tree.unlock(node)
        self.allocator.free(extra)

    def _refine(self, req: UnitRequest) -> UnitRequest:
        res = self._refiner.refine(self._view, req.icl)
        ids, boundaries, seg_ids = req.icl.assemble(res.examples)
        self.stats.substituted_examples += res.substituted
        return unit_request(self.trace.interner, req.timestamp, req.output_length, token_ids=ids,
                            boundaries=boundaries, seg_ids=seg_ids)

    def check_integrity(self) -> None:
        """The tree's and the allocator's own checks, and that every slot is accounted for."""
        self.allocator.check_integrity()
        free = self.allocator.free_slot_set()
        held = [s for _, extra in self._running for s in extra]
        self.tree.check_integrity(free_slots=free, num_slots=self.capacity_blocks + 1)
        self.tree.check_slot_conservation(free, held, range(1, self.capacity_blocks + 1))
