"""The radix tree's eviction candidates: the evictable-leaf set, and how evict() finds victims in policy order.

An evictable leaf is a non-root node with no children and lock_ref == 0. The tree calls add()/discard() as
nodes enter and leave that state (O(1) each), so eviction never scans the tree. `evict(num_tokens, remove)`
repeatedly takes the member with the smallest (policy.priority(node), node_id) and calls `remove(node)`
(which frees it and may make its parent a member), until num_tokens are gone or no member is left.

Two ways to find that minimum, with the same result:
- full (any policy): each evict() call heapifies every member with its priority now: O(L + k log L) for L
  members and k victims. Priorities may change arbitrarily between calls.
- incremental (policy.monotone is True): a heap persists between calls. Every member that enters the set is
  journaled and, at the next evict(), pushed with its priority then. Priorities never decrease, so each live
  entry is <= its node's current priority. evict() looks at the smallest entry: a node no longer in the set is
  dropped; a stale priority is replaced by the current one; an entry whose priority is current is then the
  minimum over all members, exactly the full path's choice. O(log L) per victim, amortised.
Stale entries (locked, evicted or re-added nodes) are dropped lazily; once heap + journal outgrow twice the set,
both are rebuilt from the set, so memory stays O(L) even when evictions are rare (every unlock re-journals).
"""
from __future__ import annotations

import heapq
import itertools
from typing import Callable

from engine.radix_cache.node import TreeNode

SLACK_ENTRIES = 1024  # heap + journal may exceed 2 * members by this much before a rebuild


class EvictableLeaves:
    def __init__(self, policy) -> None:
        self._members: set[TreeNode] = set()
        self.set_policy(policy)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, node: TreeNode) -> bool:
        return node in self._members

    @property
    def incremental(self) -> bool:
        return self._incremental

    def set_policy(self, policy) -> None:
        """Order by `policy` from now on; drops every stored priority (they were another policy's)."""
        self._policy = policy
        self._incremental = bool(getattr(policy, "monotone", False))
        self._heap: list[tuple] = []  # (priority, node_id, seq, node); seq keeps nodes out of comparisons
        self._seq = itertools.count()
        # Members added since the heap last saw them. The full path only needs it during an evict() call.
        self._journal: list[TreeNode] = list(self._members) if self._incremental else []
        self._journaling = self._incremental

    def add(self, node: TreeNode) -> None:
        self._members.add(node)
        if self._journaling:
            self._journal.append(node)
            if len(self._journal) + len(self._heap) > 2 * len(self._members) + SLACK_ENTRIES:
                self._rebuild()

    def discard(self, node: TreeNode) -> None:
        self._members.discard(node)  # its heap entries go stale and are dropped when they surface

    def evict(self, num_tokens: int, remove: Callable[[TreeNode], int]) -> int:
        """Removes members in policy order through `remove(node) -> tokens freed` until >= num_tokens are
        freed or the set is empty; returns the tokens freed."""
        priority = self._policy.priority
        if not self._incremental:
            self._heap = [(priority(n), n.node_id, next(self._seq), n) for n in self._members]
            heapq.heapify(self._heap)
            self._journaling = True  # parents that become leaves while we evict must join the heap
        try:
            freed = self._evict(num_tokens, remove, priority)
        finally:
            if not self._incremental:
                self._heap.clear()
                self._journal.clear()
                self._journaling = False
        if self._incremental and len(self._heap) > 2 * len(self._members) + SLACK_ENTRIES:
            self._rebuild()
        return freed

    def _evict(self, num_tokens: int, remove: Callable[[TreeNode], int], priority) -> int:
        heap, members, check_current = self._heap, self._members, self._incremental
        freed = 0
        while freed < num_tokens:
            self._drain(priority)
            if not heap:
                break
            stored, node_id, _, node = heap[0]
            if node not in members:
                heapq.heappop(heap)  # evicted, locked or grown a child since it was pushed
                continue
            if check_current:
                current = priority(node)
                if current != stored:
                    heapq.heapreplace(heap, (current, node_id, next(self._seq), node))
                    continue
            heapq.heappop(heap)
            freed += remove(node)
        return freed

    def _drain(self, priority) -> None:
        for node in self._journal:
            heapq.heappush(self._heap, (priority(node), node.node_id, next(self._seq), node))
        self._journal.clear()

    def _rebuild(self) -> None:
        """Forget every entry; the next drain pushes each member once, with its priority then. In place: an
        evict() in progress (add() runs inside its `remove`) keeps working on the same lists."""
        self._heap.clear()
        self._journal.clear()
        self._journal.extend(self._members)

    def check(self, expected: set[TreeNode]) -> None:
        """Asserts the set is exactly `expected` (a from-scratch recount) and, for the incremental path, that
        every member has a heap entry no greater than its priority or is journaled: what evict() relies on."""
        assert self._members == expected, (
            f"evictable-leaf set is stale: {len(self._members - expected)} extra, {len(expected - self._members)} missing")
        if not self._incremental:
            assert not self._heap and not self._journal, "full-heap eviction left candidates behind"
            return
        lowest: dict[TreeNode, tuple] = {}
        for stored, _, _, node in self._heap:
            if node not in lowest or stored < lowest[node]:
                lowest[node] = stored
        journaled = set(self._journal)
        priority = self._policy.priority
        for node in self._members:
            assert node in journaled or (node in lowest and lowest[node] <= priority(node)), (
                f"evictable leaf has no valid heap entry (did a monotone priority decrease?): {node}")
