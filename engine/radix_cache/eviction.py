"""Eviction policies of the radix cache: which unlocked leaf goes first.

Contract: a policy has a `name` and `priority(node) -> tuple`; the tree evicts the evictable leaf with the
smallest priority first, ties broken by node creation order (older first). Priorities are read when `evict()`
runs, so a policy may use any node field the tree keeps current (last_access, hit_count, segment_ends) and
needs no hooks of its own.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Protocol

from engine.radix_cache.node import TreeNode


class EvictionPolicy(Protocol):
    name: str

    def priority(self, node: TreeNode) -> tuple:
        """Sort key of an evictable leaf; lower is evicted first."""
        ...


class LRUPolicy:
    """Least recently matched or inserted first."""

    name = "lru"

    def priority(self, node: TreeNode) -> tuple:
        return (node.last_access,)


class LFUPolicy:
    """Fewest recorded hits first, least recent among equals."""

    name = "lfu"

    def priority(self, node: TreeNode) -> tuple:
        return (node.hit_count, node.last_access)


class SegmentPolicy:
    """Keep hot ICL example paths, drop query tails first.

    Leaves that end no segment (a request's query block and output, or a partial example left by a split) go
    first, least recent first: they are rarely shared. Leaves ending a segment (an example) then go by
    (hit_count, last_access), so cold examples leave before hot ones. A hot example's prefix is never a leaf
    while its continuations are cached, so it outlives them.
    """

    name = "segment"

    def priority(self, node: TreeNode) -> tuple:
        if not node.segment_ends:
            return (0, 0, node.last_access)
        return (1, node.hit_count, node.last_access)


_POLICY_TYPES: Mapping[str, type] = MappingProxyType(
    {cls.name: cls for cls in (LRUPolicy, LFUPolicy, SegmentPolicy)}
)


def eviction_policy_names() -> tuple[str, ...]:
    return tuple(_POLICY_TYPES)


def make_eviction_policy(name: str) -> EvictionPolicy:
    """The policy registered under `name`; ValueError naming radix_eviction_policy if there is none."""
    try:
        return _POLICY_TYPES[name]()
    except KeyError:
        raise ValueError(
            f"radix_eviction_policy: unknown policy {name!r} (choose from {', '.join(_POLICY_TYPES)})"
        ) from None
