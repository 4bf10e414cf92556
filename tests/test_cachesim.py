"""Prefix-cache simulator: agreement with the engine, the Belady bound, the learned policy, PAIR, the CLI."""
from __future__ import annotations

import functools
import json
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cachesim.belady import belady_bound, flatten, infinite_bound
from bench.cachesim.simulate import gap_closed, main as cachesim_main, parse_capacities
from bench.cachesim.learned import FEATURES, LearnedPolicy, TreeEnsemble, register_learned_policy
from bench.learned_policy import train
from bench.cachesim.replay import CacheReplay, ReplayContext
from engine.radix_cache import RadixCache, make_eviction_policy, unregister_eviction_policy
from bench.cachesim.traces import TraceRequest, read_mooncake, write_trace
from bench.tracegen import icl_trace
from bench.cachesim.units import to_units


def shared_prefix_prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    stems = [[rng.randrange(50, 1900) for _ in range(rng.randrange(20, 90))] for _ in range(4)]
    out = []
    for _ in range(n):
        stem = stems[rng.randrange(len(stems))]
        cut = rng.randrange(len(stem) // 2, len(stem) + 1)
        out.append(stem[:cut] + [rng.randrange(50, 1900) for _ in range(rng.randrange(1, 30))])
    return out


@pytest.mark.parametrize("kv_tokens, page_size, policy", [(4096, 1, "lru"), (300, 1, "lru"), (256, 4, "lfu")])
def test_replay_hits_equal_engine_cached_tokens(kv_tokens, page_size, policy, tiny_model_dir, make_engine):
    """Same requests, one at a time, max_new_tokens=1: the simulator's per-request hits are the engine's
    cached_tokens, with a generous pool and with pools small enough to evict."""
    prompts = shared_prefix_prompts(12, seed=kv_tokens + page_size)
    eng = make_engine(tiny_model_dir, kv_cache_tokens=kv_tokens, page_size=page_size, radix_eviction_policy=policy)
    greedy = {"max_new_tokens": 1, "temperature": 0}
    engine_hits = [eng.generate(input_ids=p, sampling_params=greedy)["meta_info"]["cached_tokens"] for p in prompts]
    trace = to_units([TraceRequest(float(i), len(p), 1, token_ids=p) for i, p in enumerate(prompts)], page_size)
    replay = CacheReplay(trace, kv_tokens, policy)
    stats = replay.run()
    replay.check_integrity()
    assert list(stats.per_request_hits) == engine_hits
    assert stats.hit_tokens == eng.get_stats()["prefix_cache_hits_total"] > 0
    if kv_tokens < 1000:
        assert stats.evicted_tokens > 0


def tiny_model() -> TreeEnsemble:
    """One stump: nodes that end an example are predicted to come back soon, others late."""
    stump = {"feature": [0, -2, -2], "threshold": [0.5, -2.0, -2.0], "left": [1, -1, -1], "right": [2, -1, -1],
             "value": [0.0, 8.0, 1.0]}
    return TreeEnsemble({"features": list(FEATURES), "offset": 0.0, "learning_rate": 1.0, "trees": [stump]})


POLICIES = {"lru": "lru", "lfu": "lfu", "segment": "segment", "learned": LearnedPolicy.factory(tiny_model())}


@st.composite
def small_traces(draw):
    stems = draw(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=8), min_size=1, max_size=3))
    reqs = []
    for i in range(draw(st.integers(1, 14))):
        stem = draw(st.sampled_from(stems))
        ids = stem[:draw(st.integers(0, len(stem)))] + draw(st.lists(st.integers(0, 3), min_size=1, max_size=5))
        segments = [1, len(ids)] if len(ids) > 1 and draw(st.booleans()) else None
        examples = dict(example_ids=["e"], example_templates=["t"]) if segments else {}
        reqs.append(TraceRequest(float(i), len(ids), draw(st.integers(1, 3)), token_ids=ids, segments=segments,
                                 **examples))
    return reqs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=small_traces(), block_size=st.sampled_from([1, 2]), blocks=st.integers(2, 12),
       inflight=st.integers(0, 2))
def test_belady_bounds_every_policy(reqs, block_size, blocks, inflight):
    trace = to_units(reqs, block_size)
    acc = flatten(trace)
    best = belady_bound(trace, blocks * block_size, acc)
    inf = infinite_bound(trace, acc)
    assert best.hit_tokens <= inf.hit_tokens
    for name, spec in POLICIES.items():
        replay = CacheReplay(trace, blocks * block_size, spec, inflight)
        stats = replay.run()
        replay.check_integrity()
        assert stats.hit_tokens <= best.hit_tokens, name
        assert all(h <= b for h, b in zip(stats.per_request_hits, inf.per_request_hits))


def cached_prefixes(tree: RadixCache) -> set[tuple]:
    out, stack = set(), list(tree.root.children.values())
    while stack:
        node = stack.pop()
        out.add((tuple(tree.path_key(node)), tuple(tree.path_slots(node))))
        stack.extend(node.children.values())
    return out


class FullHeap:
    """The same priorities without the monotone promise: the tree ranks every leaf per evict() call."""

    def __init__(self, policy):
        self.name, self.priority = policy.name, policy.priority


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=small_traces(), block_size=st.sampled_from([1, 2]), blocks=st.integers(2, 10),
       inflight=st.integers(0, 2), policy=st.sampled_from(["lru", "lfu", "segment"]))
def test_incremental_evict_matches_full_heap_evict(reqs, block_size, blocks, inflight, policy):
    trace = to_units(reqs, block_size)
    fast = CacheReplay(trace, blocks * block_size, policy, inflight)
    plain = CacheReplay(trace, blocks * block_size, lambda ctx: FullHeap(make_eviction_policy(policy)), inflight)
    assert fast.tree.incremental_eviction and not plain.tree.incremental_eviction
    for req in trace.requests:
        assert fast.step(req) == plain.step(req)
        fast.check_integrity()
        # Same victims, not just the same hits: the trees hold the same prefixes in the same slots.
        assert cached_prefixes(fast.tree) == cached_prefixes(plain.tree)
    assert fast.finish().evicted_tokens == plain.finish().evicted_tokens


def exhaustive_optimum(accesses: list[tuple[int, bool]], capacity: int) -> int:
    """Most weighted hits of any cache that loads units only when they are accessed (may bypass)."""
    @functools.lru_cache(maxsize=None)
    def best(i: int, cache: frozenset) -> int:
        if i == len(accesses):
            return 0
        unit, weighted = accesses[i]
        if unit in cache:
            return int(weighted) + best(i + 1, cache)
        options = [best(i + 1, cache)]
        if len(cache) < capacity:
            options.append(best(i + 1, cache | {unit}))
        else:
            options += [best(i + 1, (cache - {v}) | {unit}) for v in cache]
        return max(options)

    return best(0, frozenset())


@settings(max_examples=40, deadline=None)
@given(reqs=small_traces(), blocks=st.integers(1, 3))
def test_belady_is_the_exact_optimum_of_its_relaxation(reqs, blocks):
    trace = to_units(reqs[:6], 1)
    acc = flatten(trace)
    accesses = list(zip(acc.units.tolist(), acc.weighted.tolist()))
    assert belady_bound(trace, blocks, acc).hit_tokens == exhaustive_optimum(accesses, blocks)


def test_learned_policy_prefers_to_evict_predicted_far_nodes():
    freed = []
    ctx = ReplayContext(lambda: 10.0, Counter(), lambda: 5, 0.0, 1, 100)
    tree = RadixCache(1, freed.extend, LearnedPolicy(tiny_model(), ctx), ctx.clock)
    tree.insert([1, 2, 3], [11, 12, 13], segment_ids={3: "example"})  # soon: kept
    tree.insert([7, 8, 9], [17, 18, 19])  # a query tail: predicted far
    assert tree.eviction_policy == "learned"
    assert tree.evict(1) == 3 and sorted(freed) == [17, 18, 19]


def test_learned_policy_is_selected_by_name_through_the_registry(tmp_path):
    trace = to_units(icl_trace(120, seed=4), 16)
    register_learned_policy(tiny_model())
    try:
        by_name = CacheReplay(trace, 1500, "learned").run()
        by_factory = CacheReplay(trace, 1500, LearnedPolicy.factory(tiny_model())).run()
        assert by_name.policy == "learned" and by_name.evicted_tokens > 0
        assert list(by_name.per_request_hits) == list(by_factory.per_request_hits)
        with pytest.raises(ValueError, match="radix_eviction_policy: 'learned' needs"):
            RadixCache(1, lambda slots: None, "learned")  # the engine has no replay context
    finally:
        unregister_eviction_policy("learned")


def test_learned_policy_trains_loads_and_keeps_the_tree_sound(tmp_path):
    rng = random.Random(0)
    xs = [[rng.random() for _ in FEATURES] for _ in range(400)]
    ys = [3 * x[0] + x[4] ** 2 + 0.1 * rng.random() for x in xs]
    model = train(xs, ys, n_estimators=10, max_depth=3)  # asserts its JSON trees reproduce sklearn's predict
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    trace = to_units(icl_trace(300, seed=2), 16)
    replay = CacheReplay(trace, 2000, LearnedPolicy.factory(TreeEnsemble.load(str(path))), inflight=2)
    for i, req in enumerate(trace.requests):
        replay.step(req)
        if i % 50 == 0:
            replay.check_integrity()
    stats = replay.finish()
    replay.check_integrity()
    assert stats.policy == "learned" and stats.evicted_tokens > 0 and stats.hit_tokens > 0


def icl_pair(order_b):
    head, tail_a, tail_b = [1, 2, 3, 4], [50, 51], [60, 61, 62]
    examples = {"x": [10, 11, 12], "y": [20, 21], "z": [30, 31, 32, 33]}

    def req(t, order, tail):
        ids, segments = list(head), [len(head)]
        for e in order:
            ids += examples[e]
            segments.append(len(ids))
        ids += tail
        return TraceRequest(t, len(ids), 2, token_ids=ids, segments=segments, example_ids=list(order),
                            example_templates=[f"T{e}" for e in order])

    return [req(0.0, ["x", "y", "z"], tail_a), req(1.0, order_b, tail_b)], len(head) + 9


@pytest.mark.parametrize("pair", ["table", "native"])
def test_pair_reorders_examples_onto_the_cached_path(pair):
    reqs, shared = icl_pair(["z", "x", "y"])
    plain = CacheReplay(to_units(reqs, 1, "none"), 1000).run()
    refined = CacheReplay(to_units(reqs, 1, pair), 1000).run()
    assert list(plain.per_request_hits) == [0, 4]  # only the instruction
    assert list(refined.per_request_hits) == [0, shared]  # instruction + all three examples


def test_mooncake_trace_replays_at_its_block_size(tmp_path):
    lines = [{"timestamp": 0, "input_length": 1100, "output_length": 12, "hash_ids": [0, 1, 2]},
             {"timestamp": 250, "input_length": 600, "output_length": 3, "hash_ids": [0, 3]},
             {"timestamp": 1500, "input_length": 1030, "output_length": 40, "hash_ids": [0, 1, 4]}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    trace = to_units(read_mooncake(str(path)).requests, 512)
    assert list(CacheReplay(trace, 8 * 512).run().per_request_hits) == [0, 512, 1024]
    unchained = [TraceRequest(0.0, 1024, 1, hash_ids=[5, 6]), TraceRequest(1.0, 1024, 1, hash_ids=[7, 6])]
    with pytest.raises(ValueError, match="hash_ids"):
        to_units(unchained, 512)


def test_parse_capacities_and_gap_closed():
    assert parse_capacities("10k, 50k,1.5M,300") == [10_000, 50_000, 1_500_000, 300]
    assert parse_capacities("5%,50%", footprint_tokens=2000) == [100, 1000]
    for bad in ("lots", "5%", "0"):  # a percentage needs the trace's footprint
        with pytest.raises(ValueError, match="capacity"):
            parse_capacities(bad)
    rows = [{"policy": p, "capacity_tokens": 100, "token_hit_rate": h}
            for p, h in (("lru", 0.2), ("segment", 0.3), ("belady", 0.6))]
    assert gap_closed(rows) == {"100": {"segment": pytest.approx(0.25)}}
    assert gap_closed(rows, min_gap=0.5) == {}  # Belady only 0.4 above LRU


def test_cli_writes_json_and_plot(tmp_path):
    trace_path = str(tmp_path / "icl.jsonl")
    write_trace(trace_path, icl_trace(400, seed=5))
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    cachesim_main(["--trace", trace_path, "--capacity", "1k,4k", "--policy", "lru,segment,belady",
                   "--json", str(out), "--plot", str(png)])
    result = json.loads(out.read_text())
    assert result["requests"] == 400 and len(result["results"]) == 6
    for cap in (992, 4000):
        cells = {r["policy"]: r["token_hit_rate"] for r in result["results"] if r["capacity_tokens"] == cap}
        assert cells["lru"] <= cells["belady"] and cells["segment"] <= cells["belady"]
        assert cells["belady"] <= result["infinite"]["token_hit_rate"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shipped_sweep_configs_parse_and_bad_keys_are_named(tmp_path):
    import glob
    import os

    from bench.sweep import cells, load_config

    root = os.path.join(os.path.dirname(__file__), "..", "sweeps")
    paths = sorted(glob.glob(os.path.join(root, "*.yaml")))
    assert len(paths) >= 2
    for path in paths:
        cfg = load_config(path)
        grid = cfg["grid"]
        combos = cells(grid)
        assert len(combos) == functools.reduce(lambda n, v: n * len(v), grid.values(), 1)
        assert all(set(c) == set(grid) for c in combos) and "kv_cache_tokens" in grid
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {kv_cache_tokens: [1]}\nworkloads: [{kind: chat, speed: 3}]\n")
    with pytest.raises(ValueError, match=r"workloads\[0\]\.speed"):
        load_config(str(bad))


def _write_lines(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return str(path)


def test_block_size_flag_reaches_the_loader(tmp_path):
    """--block-size names the hash block of header-less and Mooncake traces; None takes the trace's own."""
    from bench.cachesim.simulate import load_units

    reqs = [{"timestamp": 0.0, "input_length": 64, "output_length": 2, "hash_ids": [1, 2, 3, 4]},
            {"timestamp": 1.0, "input_length": 64, "output_length": 2, "hash_ids": [1, 2, 3, 5]}]
    bare = _write_lines(tmp_path / "bare.jsonl", reqs)
    assert load_units(bare, "pairserve", 16, "none").block_size == 16
    with pytest.raises(ValueError, match="no header naming their block size; give it with --block-size N"):
        load_units(bare, "pairserve", None, "none")
    moon = _write_lines(tmp_path / "moon.jsonl", [{**r, "timestamp": 1000 * r["timestamp"]} for r in reqs])
    assert load_units(moon, "mooncake", None, "none").block_size == 512
    assert load_units(moon, "mooncake", 16, "none").block_size == 16
    headed = _write_lines(tmp_path / "headed.jsonl", [{"trace": "pairserve", "version": 1, "block_size": 16}, *reqs])
    assert load_units(headed, "pairserve", None, "none").block_size == 16
    with pytest.raises(ValueError, match="replay it with --block-size 16"):
        load_units(headed, "pairserve", 32, "none")
    out = tmp_path / "r.json"
    cachesim_main(["--trace", bare, "--block-size", "16", "--capacity", "64", "--policy", "lru", "--json", str(out)])
    assert json.loads(out.read_text())["block_size"] == 16
