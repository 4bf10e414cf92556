"""Eviction policies of the radix cache: which unlocked leaf goes first.

Contract: a policy has a `name` and `priority(node) -> tuple`; the tree evicts the evictable leaf with the
smallest priority first, ties broken by node creation order (older first). Priorities are read when `evict()`
runs, so a policy may use any node field the tree keeps current (last_access, hit_count, segment_ends) and
needs no hooks of its own.

A policy may declare `monotone = True`: a node's priority never decreases while it stays in the tree, given a
tree clock that never goes back (the engine's is time.monotonic). The tree then finds victims with a heap kept
between evict() calls (evictable.py) instead of ranking every leaf per call; the victims are the same. lru,
lfu and segment are monotone: last_access and hit_count only grow, and a node only gains segment ends.

Policies are selected by name from a registry: the built-ins below, plus register_eviction_policy().
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from engine.radix_cache.node import TreeNode


class EvictionPolicy(Protocol):
    name: str
    # optional: monotone = True (see the module docstring); absent or False means priorities may decrease

    def priority(self, node: TreeNode) -> tuple:
        """Sort key of an evictable leaf; lower is evicted first."""
        ...


class LRUPolicy:
    """Least recently matched or inserted first."""

    name = "lru"
    monotone = True

    def priority(self, node: TreeNode) -> tuple:
        return (node.last_access,)


class LFUPolicy:
    """Fewest recorded hits first, least recent among equals."""

    name = "lfu"
    monotone = True

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
    monotone = True

    def priority(self, node: TreeNode) -> tuple:
        if not node.segment_ends:
            return (0, 0, node.last_access)
        return (1, node.hit_count, node.last_access)


PolicyFactory = Callable[[Any], EvictionPolicy]

# name -> factory(policy_context). The one mutable module global: the registry users extend.
_REGISTRY: dict[str, PolicyFactory] = {}


def register_eviction_policy(name: str, factory: PolicyFactory, *, replace: bool = False) -> None:
    """Make `name` selectable wherever a policy name is accepted (RadixCache, --radix-eviction-policy, the
    radix_eviction_policy live knob). `factory(policy_context)` returns a fresh policy object per tree; the
    context is whatever the tree's owner passes to RadixCache (None inside the engine). A factory that needs a
    context it did not get raises ValueError naming radix_eviction_policy. Registration is per process: the
    server's scheduler is a spawned process, so a policy must be registered by a module that process imports.
    ValueError if `name` is taken (unless replace=True) or not a non-empty string."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"radix_eviction_policy: a policy name must be a non-empty string (got {name!r})")
    if not callable(factory):
        raise ValueError(f"radix_eviction_policy: the factory of {name!r} is not callable")
    if name in _REGISTRY and not replace:
        raise ValueError(f"radix_eviction_policy: {name!r} is already registered (pass replace=True)")
    _REGISTRY[name] = factory


def unregister_eviction_policy(name: str) -> None:
    """Remove a registered policy (trees built with it keep their policy object). ValueError if unknown."""
    if _REGISTRY.pop(name, None) is None:
        raise ValueError(f"radix_eviction_policy: {name!r} is not registered")


def eviction_policy_names() -> tuple[str, ...]:
    """Registered names, built-ins first, then in registration order."""
    return tuple(_REGISTRY)


def make_eviction_policy(policy: str | EvictionPolicy, context: Any = None) -> EvictionPolicy:
    """The policy registered under `policy`, built with `context`; a policy object is checked and returned as
    is. ValueError naming radix_eviction_policy for an unknown name or an object without name/priority."""
    if not isinstance(policy, str):
        if not isinstance(getattr(policy, "name", None), str) or not callable(getattr(policy, "priority", None)):
            raise ValueError(f"radix_eviction_policy: {policy!r} has no `name` string and `priority(node)` method")
        return policy
    factory = _REGISTRY.get(policy)
    if factory is None:
        raise ValueError(
            f"radix_eviction_policy: unknown policy {policy!r} (choose from {', '.join(_REGISTRY)})"
        )
    return make_eviction_policy(factory(context))


for _builtin in (LRUPolicy, LFUPolicy, SegmentPolicy):
    register_eviction_policy(_builtin.name, lambda context, cls=_builtin: cls())
del _builtin
