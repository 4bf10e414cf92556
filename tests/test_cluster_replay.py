"""Multi-replica cache replay (bench/cluster_replay.py) and its routers (bench/routing.py)."""
from __future__ import annotations

import pytest

from bench.cachesim.cluster import ClusterReplay, simulate_cluster
from bench.cachesim.replay import CacheReplay
from bench.cachesim.routing import BalanceGuard, CacheAwareRouter, RoundRobinRouter
from bench.tracegen import shared_prompt_trace
from bench.cachesim.units import to_units
from engine.kv_events import block_hash
from tests.kv_event_subscriber import tree_block_hashes


def _trace(n=600, num_prompts=12, seed=0):
    reqs = shared_prompt_trace(n, seed=seed, num_prompts=num_prompts, zipf_a=0.6, prompt_len=400, query_len=40,
                               output_len=8)
    return to_units(reqs, 16)


@pytest.mark.parametrize("routing", ["round_robin", "random", "cache_aware", "exact"])
def test_one_replica_is_the_single_replay(routing):
    trace = _trace(200)
    single = CacheReplay(trace, 4000, "lru")
    hits = [single.step(r) for r in trace.requests]
    cluster = ClusterReplay(trace, 1, 4000, routing)
    assert [cluster.step(r) for r in trace.requests] == hits


def test_exact_router_index_is_each_replica_tree():
    trace = _trace(400)
    cluster = ClusterReplay(trace, 4, 3000, "exact")  # small pools: replicas evict
    for req in trace.requests:
        cluster.step(req)
    assert sum(r.tree.evicted_tokens_total for r in cluster.replicas) > 0
    for replica, index in zip(cluster.replicas, cluster.router.indexes):
        replica.check_integrity()
        assert index.blocks == tree_block_hashes(replica.tree, block_hash)


def test_cache_aware_and_exact_beat_round_robin_when_pools_are_small():
    # 12 app prompts of 400 tokens, 4 replicas whose pools (1,600 tokens) hold ~3 prompts each: round robin
    # makes every replica cycle through all 12; routing by prefix gives each replica its own few.
    rows = {r["routing"]: r for r in simulate_cluster(_trace(), [4], ["round_robin", "cache_aware", "exact"],
                                                      1600, concurrency=4)}
    rr = rows["round_robin"]["token_hit_rate"]
    assert rows["cache_aware"]["token_hit_rate"] > 1.2 * rr
    assert rows["exact"]["token_hit_rate"] > 1.2 * rr
    assert sum(p["requests"] for p in rows["exact"]["per_replica"]) == 600


def test_balance_guard_and_router_rules():
    guard = BalanceGuard(64, 1.5)
    assert guard.imbalanced([200, 10]) and not guard.imbalanced([70, 10])  # abs threshold not met
    assert not guard.imbalanced([100, 80])  # rel threshold not met
    router = CacheAwareRouter(2, 16)
    router.routed([1, 2, 3, 4], 1)
    assert router.route([1, 2, 3, 9], [0, 0]) == 1  # 3/4 matched > 0.3
    assert router.route([7, 8, 9], [0, 0]) == 0  # no match: the smaller tree
    assert router.route([1, 2, 3, 4], [0, 100]) == 0  # imbalanced: least loaded wins over the match
    rr = RoundRobinRouter(3)
    assert [rr.route([], [0, 0, 0]) for _ in range(4)] == [0, 1, 2, 0]


def test_bad_routing_is_rejected():
    with pytest.raises(ValueError, match="routing"):
        simulate_cluster(_trace(10), [2], ["nearest"], 1000)
