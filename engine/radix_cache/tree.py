"""Radix-tree prefix cache over KV slots (SGLang-style RadixCache; pure Python, no torch).

Contract:
- Keys are token ids; values are the KV slots of those tokens (same length). Only whole pages count: match and
  insert look at the first floor(len / page_size) * page_size tokens, every node key is a whole number of pages,
  and children are keyed by their first page (a tuple of page_size ids).
- Ownership: the tree owns its nodes' slots and hands them back through `free_slots` on evict() and reset(),
  one node's slot list (whole allocator pages) per call. insert() takes ownership of the slots of
  key[present_len:aligned_len] only; the caller keeps (and frees) the rest of what it passed.
- lock(node) pins every node from `node` up to the root against eviction; each lock needs one unlock of the same
  node. Splits keep locks valid: the locked node keeps its end, the new parent inherits its lock_ref.
- evictable_size / protected_size (tokens in unlocked / locked nodes) are kept exact in O(path) per operation;
  check_integrity() recomputes everything from scratch. Not thread-safe: the scheduler owns the tree.
- eviction_policy: a registered name (built with `policy_context`, see eviction.py) or a policy object. A
  policy with monotone = True is evicted incrementally (evictable.py), which assumes `clock` never goes back.
- listener (optional, set while the tree is empty): told of every change to the set of cached pages, see
  listener.py. KV events (engine/kv_events/) are built on it; the tree itself knows nothing of them.
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from engine.radix_cache.evictable import EvictableLeaves
from engine.radix_cache.eviction import EvictionPolicy, make_eviction_policy
from engine.radix_cache.listener import CacheListener
from engine.radix_cache.node import MatchResult, SegmentEdge, TreeNode, check_slot_partition, check_tree
from engine.radix_cache.node import path_key, path_slots, segment_edges_below


class RadixCache:
    def __init__(
        self,
        page_size: int,
        free_slots: Callable[[list[int]], None],
        eviction_policy: str | EvictionPolicy = "lru",
        clock: Callable[[], float] = time.monotonic,
        policy_context: Any = None,
    ):
        if page_size < 1:
            raise ValueError(f"page_size: must be >= 1 (got {page_size})")
        self.page_size = page_size
        self._free_slots = free_slots
        self._policy_context = policy_context
        self._policy = make_eviction_policy(eviction_policy, policy_context)
        self._clock = clock
        self._node_ids = itertools.count()
        self.evicted_tokens_total = 0
        self.hit_tokens_total = 0  # matched tokens of record_hit=True matches
        self.query_tokens_total = 0  # key tokens of record_hit=True matches
        self._listener: CacheListener | None = None
        self._clear()

    def _clear(self) -> None:
        self._root = TreeNode(next(self._node_ids), [], [], None, self._clock())
        self._evictable_size = 0
        self._protected_size = 0
        # Unlocked non-root childless nodes, and how evict() finds the next victim among them.
        self._evictable_leaves = EvictableLeaves(self._policy)

    @property
    def root(self) -> TreeNode:
        return self._root

    @property
    def evictable_size(self) -> int:
        return self._evictable_size

    @property
    def protected_size(self) -> int:
        return self._protected_size

    def total_size(self) -> int:
        return self._evictable_size + self._protected_size

    @property
    def listener(self) -> CacheListener | None:
        return self._listener

    def set_listener(self, listener: CacheListener | None) -> None:
        """Attach (or detach with None) the one listener; only while the tree is empty, so the listener has
        seen every cached page from the start. ValueError otherwise."""
        if self._root.children:
            raise ValueError("listener: attach it while the radix cache is empty (reset() first)")
        self._listener = listener

    @property
    def eviction_policy(self) -> str:
        return self._policy.name

    @property
    def incremental_eviction(self) -> bool:
        """Whether evict() keeps its candidate heap between calls (the policy is monotone; evictable.py)."""
        return self._evictable_leaves.incremental

    def set_eviction_policy(self, policy: str | EvictionPolicy) -> None:
        """Switch policy at run time; the incremental heap, if any, is rebuilt at the next evict(). O(1) now."""
        self._policy = make_eviction_policy(policy, self._policy_context)
        self._evictable_leaves.set_policy(self._policy)

    def match_prefix(self, key: Sequence[int], record_hit: bool = False) -> MatchResult:
        """Longest cached page-aligned prefix of `key`; splits the node the match ends inside.

        Always refreshes last_access on the matched path (a probe means the prefix is wanted soon). Only with
        record_hit=True (a request being admitted) does it bump hit_count on the path and the hit counters
        hit_tokens_total / query_tokens_total, so scheduling probes do not inflate LFU counts or hit rates.
        """
        aligned_len = self._aligned(len(key))
        now = self._clock()
        node, matched_len = self._root, 0
        slots: list[int] = []
        while matched_len < aligned_len:
            child = node.children.get(tuple(key[matched_len : matched_len + self.page_size]))
            if child is None:
                break
            common_len = self._common_len(child.key, key, matched_len, aligned_len)
            if common_len < len(child.key):
                child = self._split(child, common_len)
            child.last_access = now
            if record_hit:
                child.hit_count += 1
            slots.extend(child.value)
            matched_len += common_len
            node = child
        if record_hit:
            self.hit_tokens_total += matched_len
            self.query_tokens_total += len(key)
        return MatchResult(slots=slots, last_node=node, matched_len=matched_len)

    def insert(
        self,
        key: Sequence[int],
        slots: Sequence[int],
        boundaries: Sequence[int] = (),
        segment_ids: Mapping[int, str] | None = None,
    ) -> int:
        """Caches key[:aligned_len] -> slots; returns present_len, the leading tokens already cached.

        The tree keeps its own slots for key[:present_len] (the caller frees its duplicates there) and takes
        ownership of slots[present_len:aligned_len]. After the call a node ends at every offset in `boundaries`
        and in `segment_ids` (rounded down to a page; 0 and offsets past aligned_len are ignored), and the node
        ending at a segment_ids offset has that id in segment_ends. With page_size > 1 and an unaligned offset
        the id lands on the page before the true segment end.
        """
        if len(slots) != len(key):
            raise ValueError(f"slots: need one slot per key token (got {len(slots)} for {len(key)} tokens)")
        aligned_len = self._aligned(len(key))
        ends_at: dict[int, list[str]] = {}
        for offset, segment_id in (segment_ids or {}).items():
            ends_at.setdefault(self._aligned(offset), []).append(segment_id)
        cuts = {self._aligned(b) for b in itertools.chain(boundaries, ends_at)} | {aligned_len}
        now = self._clock()
        node, pos = self._root, 0
        present_len: int | None = None
        for cut in sorted(c for c in cuts if 0 < c <= aligned_len):
            while pos < cut:
                child = node.children.get(tuple(key[pos : pos + self.page_size]))
                if child is None:
                    if present_len is None:
                        present_len = pos
                    child = self._add_leaf(node, list(key[pos:cut]), list(slots[pos:cut]), now)
                    pos = cut
                else:
                    common_len = self._common_len(child.key, key, pos, cut)
                    if common_len < len(child.key):
                        child = self._split(child, common_len)
                    child.last_access = now
                    pos += common_len
                node = child
            for segment_id in ends_at.get(cut, ()):
                self._add_segment_end(node, segment_id)
        return aligned_len if present_len is None else present_len

    def lock(self, node: TreeNode) -> None:
        """Pins node..root (root excluded) against eviction. O(path)."""
        if node is self._root:
            return
        node.direct_locks += 1
        while node is not self._root:
            if node.lock_ref == 0:
                self._evictable_size -= len(node.key)
                self._protected_size += len(node.key)
                self._evictable_leaves.discard(node)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        """Undoes one lock(node). O(path)."""
        if node is self._root:
            return
        assert node.direct_locks > 0, f"unlock of a node that holds no lock: {node}"
        node.direct_locks -= 1
        while node is not self._root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable_size += len(node.key)
                self._protected_size -= len(node.key)
                if not node.children:
                    self._evictable_leaves.add(node)
            node = node.parent

    def evict(self, num_tokens: int) -> int:
        """Evicts unlocked leaves in policy order until >= num_tokens are gone or none is left; returns tokens
        evicted. A parent joins the candidates once its last child goes. No tree scan: O(L + k log L) for L
        candidate leaves and k evictions, or amortised O(k log L) for a monotone policy (evictable.py)."""
        if num_tokens <= 0:
            return 0
        evicted = self._evictable_leaves.evict(num_tokens, self._remove_leaf)
        self.evicted_tokens_total += evicted
        return evicted

    def reset(self) -> int:
        """Frees every node (the /flush_cache path); nothing may be locked. Returns tokens freed."""
        assert self._protected_size == 0, "reset() while requests hold locks on the radix cache"
        freed = 0
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            self._free_slots(node.value)
            freed += len(node.value)
        self._clear()
        if self._listener is not None:
            self._listener.on_clear()
        return freed

    def segment_successors(self, node: TreeNode) -> list[SegmentEdge]:
        """Segments continuing directly below `node` (see node.segment_edges_below for cost and order)."""
        return segment_edges_below(node)

    def path_key(self, node: TreeNode) -> list[int]:
        return path_key(node)

    def path_slots(self, node: TreeNode) -> list[int]:
        return path_slots(node)

    def node_depth_tokens(self, node: TreeNode) -> int:
        return node.depth_tokens

    def check_integrity(self, free_slots: set[int] | None = None, num_slots: int | None = None) -> set[int]:
        """Recomputes the tree from scratch and asserts it matches every kept counter (see node.check_tree);
        asserts no tree slot is in `free_slots` and, given num_slots, every slot is in [page_size, num_slots)
        (page 0 is the pool's padding page). Returns the set of tree slots."""
        facts = check_tree(self._root, self.page_size, num_slots)
        assert facts.evictable_size == self._evictable_size, (facts.evictable_size, self._evictable_size)
        assert facts.protected_size == self._protected_size, (facts.protected_size, self._protected_size)
        self._evictable_leaves.check(facts.evictable_leaves)
        if free_slots is not None:
            assert facts.slots.isdisjoint(free_slots), "a tree slot is on the free list"
        return facts.slots

    def check_slot_conservation(
        self, free_slots: set[int], held_slots: Iterable[int], usable_slots: Iterable[int]
    ) -> None:
        """Asserts tree slots, free slots and `held_slots` (slots requests own outright, not the tree slots
        they matched) are disjoint and together are exactly `usable_slots`."""
        tree_slots = check_tree(self._root, self.page_size, None).slots
        check_slot_partition(tree_slots, free_slots, held_slots, usable_slots)

    def _aligned(self, length: int) -> int:
        return length - length % self.page_size

    def _common_len(self, node_key: list[int], key: Sequence[int], start: int, end: int) -> int:
        """Page-aligned length of the common prefix of node_key and key[start:end]."""
        limit = min(len(node_key), end - start)
        i = 0
        while i < limit and node_key[i] == key[start + i]:
            i += 1
        return self._aligned(i)

    def _split(self, node: TreeNode, split_len: int) -> TreeNode:
        """Cuts node's first split_len tokens into a new parent; returns that parent. Sizes are unchanged."""
        ps = self.page_size
        parent = node.parent
        head = TreeNode(next(self._node_ids), node.key[:split_len], node.value[:split_len], parent, node.last_access)
        head.lock_ref = node.lock_ref
        head.hit_count = node.hit_count
        head.segment_nodes_below = node.segment_nodes_below + (1 if node.segment_ends else 0)
        node.key = node.key[split_len:]
        node.value = node.value[split_len:]
        node.parent = head
        head.children[tuple(node.key[:ps])] = node
        parent.children[tuple(head.key[:ps])] = head
        if self._listener is not None:
            self._listener.on_split(head, node)
        return head

    def _add_leaf(self, parent: TreeNode, key: list[int], value: list[int], now: float) -> TreeNode:
        leaf = TreeNode(next(self._node_ids), key, value, parent, now)
        parent.children[tuple(key[: self.page_size])] = leaf
        self._evictable_leaves.discard(parent)
        self._evictable_leaves.add(leaf)
        self._evictable_size += len(key)
        if self._listener is not None:
            self._listener.on_insert(leaf)
        return leaf

    def _remove_leaf(self, node: TreeNode) -> int:
        assert not node.children and node.lock_ref == 0 and node is not self._root
        parent = node.parent
        del parent.children[tuple(node.key[: self.page_size])]
        self._evictable_leaves.discard(node)
        self._evictable_size -= len(node.key)
        if node.segment_ends:
            for ancestor in node.ancestors():
                ancestor.segment_nodes_below -= 1
        if parent is not self._root and not parent.children and parent.lock_ref == 0:
            self._evictable_leaves.add(parent)
        if self._listener is not None:
            self._listener.on_remove(node)
        self._free_slots(node.value)
        return len(node.key)

    def _add_segment_end(self, node: TreeNode, segment_id: str) -> None:
        if not node.segment_ends:
            for ancestor in node.ancestors():
                ancestor.segment_nodes_below += 1
        node.segment_ends.add(segment_id)
