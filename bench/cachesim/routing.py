"""Request routers for the multi-replica cache simulator (bench/cachesim/cluster.py).

A router sees each request's prompt units (bench/cachesim/units.py: one unit per block of block_size prompt tokens,
identifying the block with its whole prefix) and the replicas' loads, and picks a replica; `routed()` then
tells it where the request went. Routers never touch a replica's tree except through what they are given.

- round_robin / random: sglang-router's policies of those names.
- cache_aware: sglang-router's policy with its defaults (cache_threshold 0.3, balance_abs_threshold 64,
  balance_rel_threshold 1.5, max_tree_size 2**26). When loads are imbalanced (max - min > abs and
  max > min * rel) it picks the least loaded replica. Otherwise it matches the prompt against its
  *approximate* tree: every prompt it has routed, per replica, whether or not that replica still caches it;
  a match rate above the threshold picks the replica with the longest match, else the replica whose tree is
  smallest. sglang-router's tree holds request text; this one holds prompt blocks (units), its size in tokens.
- exact: the same decision rule on *exact* cache state, rebuilt from each replica's KV events (the BlockStored /
  BlockRemoved stream of engine/kv_events/, as llm-d or Dynamo consume it): the longest prefix of the prompt's
  chained block hashes each replica holds, and each replica's cached size. It differs from cache_aware only in
  what it knows, so the two compare approximate against exact knowledge.
Loads are requests in flight per replica (cluster_replay.py decides what is in flight).
"""
from __future__ import annotations

import random
from collections import OrderedDict
from typing import Sequence

from engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, block_hash

ROUTINGS = ("round_robin", "random", "cache_aware", "exact")


class BalanceGuard:
    """sglang-router's imbalance test: both the absolute and the relative threshold must be exceeded."""

    def __init__(self, abs_threshold: int = 64, rel_threshold: float = 1.5):
        self.abs_threshold, self.rel_threshold = abs_threshold, rel_threshold

    def imbalanced(self, loads: Sequence[int]) -> bool:
        hi, lo = max(loads), min(loads)
        return hi - lo > self.abs_threshold and hi > lo * self.rel_threshold


def least_loaded(loads: Sequence[int]) -> int:
    return min(range(len(loads)), key=lambda i: (loads[i], i))


class RoundRobinRouter:
    name = "round_robin"

    def __init__(self, num_replicas: int):
        self.n, self.next = num_replicas, 0

    def route(self, units: Sequence[int], loads: Sequence[int]) -> int:
        i, self.next = self.next, (self.next + 1) % self.n
        return i

    def routed(self, units: Sequence[int], replica: int) -> None:
        pass


class RandomRouter(RoundRobinRouter):
    name = "random"

    def __init__(self, num_replicas: int, seed: int = 0):
        super().__init__(num_replicas)
        self.rng = random.Random(seed)

    def route(self, units: Sequence[int], loads: Sequence[int]) -> int:
        return self.rng.randrange(self.n)


class CacheAwareRouter:
    """sglang-router's cache_aware on an approximate per-replica prefix index (see the module docstring)."""

    name = "cache_aware"

    def __init__(self, num_replicas: int, block_size: int, cache_threshold: float = 0.3,
                 guard: BalanceGuard | None = None, max_tree_tokens: int = 2**26):
        self.n, self.block_size = num_replicas, block_size
        self.cache_threshold = cache_threshold
        self.guard = guard or BalanceGuard()
        self.max_tree_units = max(1, max_tree_tokens // block_size)
        # per replica: unit -> last time it was routed there (insertion order = LRU order, for the size cap)
        self.trees: list[OrderedDict[int, int]] = [OrderedDict() for _ in range(num_replicas)]
        self.clock = 0

    def route(self, units: Sequence[int], loads: Sequence[int]) -> int:
        if self.guard.imbalanced(loads):
            return least_loaded(loads)
        best, best_len, best_recent = 0, 0, -1
        for i, tree in enumerate(self.trees):
            m = 0
            while m < len(units) and units[m] in tree:
                m += 1
            recent = tree[units[m - 1]] if m else -1
            if (m, recent) > (best_len, best_recent):
                best, best_len, best_recent = i, m, recent
        if units and best_len / len(units) > self.cache_threshold:
            return best
        return min(range(self.n), key=lambda i: (len(self.trees[i]), loads[i], i))

    def routed(self, units: Sequence[int], replica: int) -> None:
        self.clock += 1
        tree = self.trees[replica]
        for u in units:
            tree[u] = self.clock
            tree.move_to_end(u)
        while len(tree) > self.max_tree_units:
            tree.popitem(last=False)


class KVEventIndex:
    """One replica's cached blocks as a subscriber rebuilds them from its KV event stream."""

    def __init__(self):
        self.blocks: set[int] = set()

    def apply(self, events) -> None:
        for ev in events:
            if isinstance(ev, BlockStored):
                self.blocks.update(ev.block_hashes)
            elif isinstance(ev, BlockRemoved):
                self.blocks.difference_update(ev.block_hashes)
            elif isinstance(ev, AllBlocksCleared):
                self.blocks.clear()


class ExactRouter:
    """The cache_aware decision rule on exact cache state from KV events (see the module docstring)."""

    name = "exact"

    def __init__(self, num_replicas: int, cache_threshold: float = 0.3, guard: BalanceGuard | None = None):
        self.n = num_replicas
        self.cache_threshold = cache_threshold
        self.guard = guard or BalanceGuard()
        self.indexes = [KVEventIndex() for _ in range(num_replicas)]

    def route(self, units: Sequence[int], loads: Sequence[int]) -> int:
        if self.guard.imbalanced(loads):
            return least_loaded(loads)
        hashes, h = [], None
        for u in units:  # a block's hash chains its parent's, as the replica's collector computed it
            h = block_hash(h, (u,))
            hashes.append(h)
        best, best_len = 0, -1
        for i in sorted(range(self.n), key=lambda i: (loads[i], i)):  # ties: least loaded
            blocks, m = self.indexes[i].blocks, 0
            while m < len(hashes) and hashes[m] in blocks:
                m += 1
            if m > best_len:
                best, best_len = i, m
        if units and best_len / len(units) > self.cache_threshold:
            return best
        return min(range(self.n), key=lambda i: (len(self.indexes[i].blocks), loads[i], i))

    def routed(self, units: Sequence[int], replica: int) -> None:
        pass

    def on_events(self, replica: int, events) -> None:
        self.indexes[replica].apply(events)


def make_router(name: str, num_replicas: int, block_size: int, seed: int = 0):
    if name == "round_robin":
        return RoundRobinRouter(num_replicas)
    if name == "random":
        return RandomRouter(num_replicas, seed)
    if name == "cache_aware":
        return CacheAwareRouter(num_replicas, block_size)
    if name == "exact":
        return ExactRouter(num_replicas)
    raise ValueError(f"routing: unknown {name!r} (choose from {', '.join(ROUTINGS)})")
