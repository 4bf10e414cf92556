"""Radix-tree prefix cache over KV slots (pure Python; importing it must not import torch)."""
from engine.radix_cache.eviction import (EvictionPolicy, eviction_policy_names, make_eviction_policy,
                                         register_eviction_policy, unregister_eviction_policy)
from engine.radix_cache.listener import CacheListener
from engine.radix_cache.node import MatchResult, SegmentEdge, TreeNode
from engine.radix_cache.tree import RadixCache

__all__ = [
    "CacheListener",
    "EvictionPolicy",
    "MatchResult",
    "RadixCache",
    "SegmentEdge",
    "TreeNode",
    "eviction_policy_names",
    "make_eviction_policy",
    "register_eviction_policy",
    "unregister_eviction_policy",
]
