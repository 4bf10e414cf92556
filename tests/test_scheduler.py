"""Scheduler unit tests over fake requests: no model, token ids are made up, the 'model' returns fixed ids."""
from __future__ import annotations

import itertools

import pytest

from engine.config import ServerArgs
from engine.sampling_params import SamplingParams
from engine.forward_mode import ForwardMode
from engine.scheduler import Req, Scheduler


def make_sched(**flags) -> Scheduler:
    flags.setdefault("kv_cache_tokens", 512)
    args = ServerArgs(**flags).validate()
    return Scheduler(args, args.kv_cache_tokens + args.page_size, context_len=1024, decode_fn=lambda ids: "")


def req(rid, n, max_new=4, base=10, **sp) -> Req:
    return Req(rid=str(rid), input_ids=list(range(base, base + n)),
               sampling=SamplingParams(max_new_tokens=max_new, temperature=0, ignore_eos=True, **sp))


def run(sched: Scheduler, max_steps=10_000, token=7):
    """Drive to completion with a fake model; returns the batches seen."""
    batches = []
    for _ in range(max_steps):
        if not sched.has_work():
            return batches
        b = sched.schedule()
        if b is not None:
            b.check()
            batches.append(b)
        sched.process_results(b, None if b is None else [token] * b.batch_size)
        sched.check_integrity()
    raise AssertionError("scheduler did not finish (deadlock?)")


def test_prefill_then_decode_and_finish():
    s = make_sched()
    r = req(0, 10, max_new=3)
    s.add(r)
    batches = run(s)
    assert [b.mode for b in batches] == [ForwardMode.EXTEND, ForwardMode.DECODE, ForwardMode.DECODE]
    assert r.output_ids == [7, 7, 7] and r.finish_reason.kind.value == "length"
    assert s.kv.allocator.num_free + s.kv.tree.total_size() == s.kv.capacity


def test_chunked_prefill_respects_chunk_size():
    s = make_sched(chunked_prefill_size=16, max_prefill_tokens=64)
    r = req(0, 50, max_new=1)
    s.add(r)
    batches = run(s)
    assert [b.extend_lens for b in batches] == [[16], [16], [16], [2]]
    assert [b.sample for b in batches] == [[False], [False], [False], [True]]


def test_max_running_requests_and_prefill_budget():
    s = make_sched(max_running_requests=3, max_prefill_tokens=25, chunked_prefill_size=-1, enable_mixed_chunk=False)
    for i in range(6):
        s.add(req(i, 10, base=100 * i))
    b = s.schedule()
    assert b.batch_size == 2  # 2 x 10 tokens fit the 25-token budget, a third would not
    s.process_results(b, [7] * 2)
    b = s.schedule()
    assert b.mode is ForwardMode.EXTEND and b.batch_size == 1  # cap of 3 running
    s.process_results(b, [7])
    assert s.schedule().mode is ForwardMode.DECODE


def test_retraction_instead_of_crash_when_kv_runs_out():
    # a low conservativeness admits all four; their decode then outgrows the pool
    s = make_sched(kv_cache_tokens=64, max_running_requests=8, disable_radix_cache=True,
                   schedule_conservativeness=0.1)
    reqs = [req(i, 12, max_new=20, base=50 * i) for i in range(4)]
    for r in reqs:
        s.add(r)
    run(s)
    assert all(len(r.output_ids) == 20 for r in reqs)
    assert s.stats.num_retractions_total > 0
    assert s.kv.allocator.num_free == s.kv.capacity


def test_request_too_big_for_pool_is_rejected_and_one_that_outgrows_it_aborts():
    s = make_sched(kv_cache_tokens=32, disable_radix_cache=True)
    with pytest.raises(ValueError, match="input_ids"):
        s.add(req(0, 40))
    r = req(1, 20, max_new=100)
    s.add(r)
    run(s)
    assert r.finish_reason.kind.value == "abort"
    assert s.kv.allocator.num_free == s.kv.capacity


def test_prefix_cache_hit_is_page_aligned():
    s = make_sched(page_size=4)
    a = req("a", 30, max_new=1)
    s.add(a)
    run(s)
    b = Req(rid="b", input_ids=a.input_ids[:22] + [999, 998], sampling=a.sampling)
    s.add(b)
    batches = run(s)
    assert b.reported_cached_len == 20  # 22 shared tokens, floor to pages of 4
    assert batches[0].prefix_lens == [20] and batches[0].extend_lens == [4]


def test_in_batch_dedup_defers_second_request_then_it_hits():
    s = make_sched()
    shared = list(range(500, 560))
    a = Req(rid="a", input_ids=shared + [1, 2], sampling=SamplingParams(max_new_tokens=1, temperature=0))
    b = Req(rid="b", input_ids=shared + [3, 4], sampling=SamplingParams(max_new_tokens=1, temperature=0))
    s.add(a)
    s.add(b)
    first = s.schedule()
    assert [r.rid for r in first.reqs] == ["a"]
    s.process_results(first, [7])
    run(s)
    assert b.reported_cached_len == 60


def test_abort_frees_everything_in_any_state():
    s = make_sched(chunked_prefill_size=8)
    reqs = [req(i, 30, max_new=50, base=40 * i) for i in range(3)]
    for r in reqs:
        s.add(r)
    s.process_results(b := s.schedule(), [7] * b.batch_size)  # one chunked, others waiting
    for r in reqs:
        s.abort(r.rid)
    outs = run(s)
    assert all(r.finish_reason.kind.value == "abort" for r in reqs)
    assert not outs
    s.check_integrity()
    assert s.kv.allocator.num_free + s.kv.tree.evictable_size == s.kv.capacity


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "dfs-weight"])
def test_policies_finish_everything(policy):
    s = make_sched(schedule_policy=policy, kv_cache_tokens=256, max_running_requests=4)
    counter = itertools.count()
    reqs = []
    for g in range(3):
        prefix = list(range(1000 * (g + 1), 1000 * (g + 1) + 40))
        for _ in range(4):
            reqs.append(Req(rid=str(next(counter)), input_ids=prefix + [next(counter) + 5000],
                            sampling=SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True)))
    for r in reqs:
        s.add(r)
    run(s)
    assert all(len(r.output_ids) == 5 for r in reqs)
    assert s.stats.prefix_cache_hits_total > 0


def test_lpm_aging_prefers_old_cold_request():
    now = [100.0]
    args = ServerArgs(kv_cache_tokens=512, schedule_policy="lpm", lpm_aging_seconds=1.0).validate()
    s = Scheduler(args, 513, 1024, lambda ids: "", clock=lambda: now[0])
    hot = list(range(10, 60))
    warm = Req(rid="warm", input_ids=hot + [1], sampling=SamplingParams(max_new_tokens=1, temperature=0))
    s.add(warm)
    run(s)
    cold = Req(rid="cold", input_ids=list(range(300, 350)), sampling=warm.sampling, arrival_time=90.0)
    hot2 = Req(rid="hot", input_ids=hot + [2], sampling=warm.sampling, arrival_time=100.0)
    s.add(hot2)
    s.add(cold)
    args2 = args.replace(max_running_requests=1)
    s.update_args(args2)
    b = s.schedule()
    assert [r.rid for r in b.reqs] == ["cold"]  # waited 10 s: outranks a full hit


def test_mixed_chunk_decodes_running_requests_inside_prefill_steps():
    s = make_sched(chunked_prefill_size=16, max_prefill_tokens=16)  # mixing is the default
    first, second = req(0, 10, max_new=6), req(1, 40, max_new=2, base=500)
    s.add(first)
    s.add(second)
    batches = run(s)
    modes = [b.mode for b in batches]
    # step 1 prefills `first` and a 6-token chunk of `second`; steps 2-4 prefill `second`'s 16, 16, 2 tokens
    # while `first` decodes in the same steps; then plain decode
    assert modes[:5] == [ForwardMode.EXTEND] + [ForwardMode.MIXED] * 3 + [ForwardMode.DECODE]
    assert [b.extend_lens for b in batches[:4]] == [[10, 6], [16, 1], [16, 1], [2, 1]]
    for b in batches[1:4]:
        assert b.num_extend == 1 and b.reqs[:1] == [second] and b.reqs[1:] == [first]
        assert b.extend_lens[1:] == [1] and b.sample[1] is True
    assert first.output_ids == [7] * 6 and second.output_ids == [7] * 2
    st = s.stats
    assert st.mixed_steps_total == 3
    assert st.prefill_tokens_computed_total == 50  # decode tokens in mixed steps are not prefill
    assert st.decode_tokens_total == (6 - 1) + (2 - 1)
    assert s.kv.allocator.num_free + s.kv.tree.total_size() == s.kv.capacity


def test_mixed_chunk_off_keeps_prefill_and_decode_apart():
    s = make_sched(chunked_prefill_size=16, max_prefill_tokens=16, enable_mixed_chunk=False)
    s.add(req(0, 10, max_new=6))
    s.add(req(1, 40, max_new=2, base=500))
    batches = run(s)
    assert s.stats.mixed_steps_total == 0
    # prefill-first: `first` waits out the chunks of `second`
    assert [b.mode for b in batches[:5]] == [ForwardMode.EXTEND] * 4 + [ForwardMode.DECODE]


def test_dfs_weight_order_on_a_known_tree():
    """dfs-weight walks the tree of the requests' cached prefixes depth first, heavier subtrees first, and keeps
    arrival order inside one node; cache-cold requests (no node) come first, as in SGLang."""
    from types import SimpleNamespace

    from engine.scheduler.policy import order_waiting

    class Node:  # hashed by identity, like the radix tree's nodes
        def __init__(self, parent):
            self.parent = parent

    root = Node(None)
    a = Node(root)
    a1, a2 = Node(a), Node(a)
    b = Node(root)
    placed = {"n": (None, 9.0), "b": (b, 0.0), "b2": (b, 3.0), "b3": (b, 4.0), "b4": (b, 6.0),
              "a1": (a1, 5.0), "a1b": (a1, 1.0), "a2": (a2, 2.0)}
    reqs = [SimpleNamespace(rid=rid, arrival_time=t) for rid, (_, t) in placed.items()]
    # weights: b 4 > a 3 (a1 2 > a2 1)
    got = order_waiting("dfs-weight", reqs, lambda r: (1, placed[r.rid][0]), now=10.0, aging_s=2.0)
    assert [r.rid for r in got] == ["n", "b", "b2", "b3", "b4", "a1b", "a1", "a2"]
    fcfs = order_waiting("fcfs", reqs, lambda r: (1, placed[r.rid][0]), now=10.0, aging_s=2.0)
    assert [r.rid for r in fcfs] == ["b", "a1b", "a2", "b2", "b3", "a1", "b4", "n"]
