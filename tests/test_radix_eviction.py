"""Eviction policy registry (register_eviction_policy, selection by name in the tree, config and live knob) and
the evictable-leaf set's incremental heap (rebuilds, integrity checks)."""
from __future__ import annotations

import random

import pytest

from engine.config import EVICTION_POLICIES, ServerArgs
from engine.knobs import LIVE_KNOBS
from engine.radix_cache import (RadixCache, eviction_policy_names, make_eviction_policy, register_eviction_policy,
                                unregister_eviction_policy)
from engine.radix_cache import evictable
from engine.slot_allocator import SlotAllocator


class LongestFirst:
    """Evicts the longest leaf first (not monotone: nothing promises priorities only grow)."""

    name = "longest"

    def priority(self, node) -> tuple:
        return (-len(node.key),)


@pytest.fixture
def longest():
    register_eviction_policy("longest", lambda context: LongestFirst())
    yield "longest"
    unregister_eviction_policy("longest")


def test_builtins_are_registered_and_monotone():
    assert eviction_policy_names()[:3] == EVICTION_POLICIES
    for name in EVICTION_POLICIES:
        policy = make_eviction_policy(name)
        assert policy.name == name and policy.monotone is True
        assert make_eviction_policy(name) is not policy  # a fresh object per tree


def test_a_registered_policy_is_selectable_everywhere_by_name(longest):
    freed: list[list[int]] = []
    tree = RadixCache(1, freed.append, eviction_policy=longest)
    tree.insert([1, 2], [10, 11])
    tree.insert([5, 6, 7, 8], [12, 13, 14, 15])
    tree.insert([9], [16])
    assert tree.eviction_policy == "longest" and not tree.incremental_eviction
    assert tree.evict(1) == 4 and freed == [[12, 13, 14, 15]]
    tree.set_eviction_policy("lru")
    assert tree.incremental_eviction and tree.evict(1) == 2 and freed[-1] == [10, 11]
    tree.check_integrity()
    assert ServerArgs(radix_eviction_policy=longest).validate().radix_eviction_policy == longest
    assert LIVE_KNOBS["radix_eviction_policy"].check(longest) == longest
    assert longest not in LIVE_KNOBS["radix_eviction_policy"].choices  # searches keep to the built-ins


def test_registry_rejects_bad_and_duplicate_names(longest):
    with pytest.raises(ValueError, match="radix_eviction_policy: 'longest' is already registered"):
        register_eviction_policy(longest, lambda context: LongestFirst())
    register_eviction_policy(longest, lambda context: LongestFirst(), replace=True)
    for bad in ("", None):
        with pytest.raises(ValueError, match="radix_eviction_policy"):
            register_eviction_policy(bad, lambda context: LongestFirst())
    with pytest.raises(ValueError, match="radix_eviction_policy"):
        unregister_eviction_policy("never-registered")
    with pytest.raises(ValueError, match="radix_eviction_policy"):
        ServerArgs(radix_eviction_policy="mru").validate()
    with pytest.raises(ValueError, match="radix_eviction_policy"):
        RadixCache(1, lambda slots: None, eviction_policy=object())  # no name / priority


def test_the_factory_gets_the_trees_policy_context():
    seen = []
    register_eviction_policy("ctx", lambda context: seen.append(context) or LongestFirst())
    try:
        RadixCache(1, lambda slots: None, "ctx", policy_context={"replay": 1})
        RadixCache(1, lambda slots: None, "ctx")
    finally:
        unregister_eviction_policy("ctx")
    assert seen == [{"replay": 1}, None]


@pytest.mark.parametrize("slack", [-10**6, evictable.SLACK_ENTRIES], ids=["rebuild-always", "default"])
def test_incremental_eviction_with_rebuilds_matches_full_heap(monkeypatch, slack):
    """Random lock / unlock / match / insert / evict traffic on two trees, one incremental (with a negative
    slack, heap and journal are rebuilt at every add and evict, also mid-eviction), one full-heap: identical
    evictions."""
    monkeypatch.setattr(evictable, "SLACK_ENTRIES", slack)
    rng = random.Random(slack)

    class FullHeapLRU:
        name = "lru"
        priority = staticmethod(make_eviction_policy("lru").priority)

    trees, allocs, now = [], [], [0.0]
    for spec in ("lru", FullHeapLRU()):
        alloc = SlotAllocator(200, 1)
        allocs.append(alloc)
        trees.append(RadixCache(1, alloc.free, spec, clock=lambda: now[0]))
    assert trees[0].incremental_eviction and not trees[1].incremental_eviction
    locked: list[list] = [[], []]
    for step in range(1500):
        now[0] += rng.choice([0.0, 1.0])
        key = [rng.randrange(4) for _ in range(rng.randrange(1, 8))]
        action, pick, n_evict = rng.random(), rng.random(), rng.randrange(1, 12)  # same for both trees
        for tree, alloc, held in zip(trees, allocs, locked):
            if action < 0.5:
                if alloc.num_free < len(key):
                    tree.evict(len(key) - alloc.num_free)
                slots = alloc.alloc(len(key))
                if slots is not None:
                    present = tree.insert(key, slots)
                    alloc.free(slots[:present])
            elif action < 0.7:
                node = tree.match_prefix(key, record_hit=True).last_node
                tree.lock(node)
                held.append(node)
            elif action < 0.85 and held:
                tree.unlock(held.pop(int(pick * len(held))))
            else:
                tree.evict(n_evict)
        assert allocs[0].free_slot_set() == allocs[1].free_slot_set(), f"diverged at step {step}"
        assert trees[0].evicted_tokens_total == trees[1].evicted_tokens_total
        if step % 100 == 0:
            for tree, alloc in zip(trees, allocs):
                tree.check_integrity(alloc.free_slot_set(), alloc.num_slots)


def test_check_integrity_catches_a_stale_set_and_a_decreasing_monotone_priority():
    tree = RadixCache(1, lambda slots: None, "lru", clock=lambda: 5.0)
    tree.insert([1, 2], [10, 11])
    tree.insert([3], [12])
    tree.evict(0)
    tree.check_integrity()
    leaf = tree.match_prefix([3]).last_node
    tree._evictable_leaves.discard(leaf)  # bookkeeping bug: a leaf the tree forgot
    with pytest.raises(AssertionError, match="evictable-leaf set is stale"):
        tree.check_integrity()
    tree._evictable_leaves.add(leaf)
    tree.check_integrity()
    tree.evict(1)  # drains the journal into the heap (and evicts one leaf)
    survivor = next(iter(tree.root.children.values()))
    survivor.last_access = -1.0  # a "monotone" priority that went down: the heap entry is no longer a bound
    with pytest.raises(AssertionError, match="no valid heap entry"):
        tree.check_integrity()
