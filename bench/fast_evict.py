"""RadixCache whose evict() keeps its candidate heap between calls: same evictions, O(log L) per call.

The engine's RadixCache.evict heapifies every evictable leaf on every call, O(L). A replay evicts on almost
every request once the pool is full, so with tens of thousands of cached leaves (large pools, 1M-request
traces) that rebuild is nearly all of the replay's time. This subclass changes nothing but how the next
victim is found: match_prefix, insert, split, lock/unlock and the removal itself are the engine's code.

Why the order is the engine's. Every node that enters the evictable-leaf set is journaled (the set is
replaced by a subclass that records `add`) and pushed on a persistent heap with its priority at that time.
For lru, lfu and segment a node's priority never decreases (last_access and hit_count only grow, a node
only gains segment ends, and replay time never goes back), so each live entry is <= its node's current
priority. evict() pops the smallest entry; an entry whose node has left the set is dropped, one whose
priority has grown is pushed again with the current value; an entry whose priority is current is then the
minimum of (priority, node_id) over all evictable leaves — exactly the engine's choice. tests/test_cachesim.py
checks the replayed hits and evictions against the engine's RadixCache on random traces.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Callable

from engine.radix_cache import RadixCache

MONOTONE_POLICIES = ("lru", "lfu", "segment")  # priorities that never decrease while time moves forward


class _JournaledSet(set):
    """A set that remembers what was added since the journal was last drained."""

    def __init__(self):
        super().__init__()
        self.added: list = []

    def add(self, item) -> None:
        super().add(item)
        self.added.append(item)


class IncrementalEvictRadixCache(RadixCache):
    def __init__(self, page_size: int, free_slots: Callable[[list[int]], None], eviction_policy: str,
                 clock: Callable[[], float]):
        if eviction_policy not in MONOTONE_POLICIES:
            raise ValueError(f"radix_eviction_policy: incremental eviction needs one of {MONOTONE_POLICIES}")
        super().__init__(page_size, free_slots, eviction_policy, clock)

    def set_eviction_policy(self, name: str) -> None:
        raise ValueError("radix_eviction_policy: fixed for a replay (the candidate heap is ordered by it)")

    def _clear(self) -> None:
        super()._clear()
        self._evictable_leaves = _JournaledSet()  # the engine's own bookkeeping keeps filling it
        self._heap: list[tuple] = []
        self._seq = itertools.count()  # keeps heap tuples from ever comparing two nodes

    def _drain_journal(self, priority) -> None:
        journal = self._evictable_leaves.added
        for node in journal:
            heapq.heappush(self._heap, (priority(node), node.node_id, next(self._seq), node))
        journal.clear()

    def evict(self, num_tokens: int) -> int:
        """Same contract and order as RadixCache.evict."""
        if num_tokens <= 0:
            return 0
        priority = self._policy.priority
        leaves, heap = self._evictable_leaves, self._heap
        self._drain_journal(priority)
        evicted = 0
        while evicted < num_tokens and heap:
            stored, node_id, _, node = heap[0]
            if node not in leaves:
                heapq.heappop(heap)  # evicted, locked or grown a child since it was pushed
                continue
            current = priority(node)
            if current != stored:
                heapq.heapreplace(heap, (current, node_id, next(self._seq), node))
                continue
            heapq.heappop(heap)
            evicted += self._remove_leaf(node)
            self._drain_journal(priority)  # the parent, if it just became an evictable leaf
        if len(heap) > 2 * len(leaves) + 1024:  # stale entries pile up: rebuild from the live set
            self._heap = [(priority(n), n.node_id, next(self._seq), n) for n in leaves]
            heapq.heapify(self._heap)
        self.evicted_tokens_total += evicted
        return evicted
