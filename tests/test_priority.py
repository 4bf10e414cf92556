"""Request priorities (enable_priority_scheduling): higher priority admitted first, aging lets low priority
through under a steady stream of higher ones. Fake requests and a fake clock, no model (engine/scheduler)."""
from __future__ import annotations

import pytest

from engine.config import ServerArgs
from engine.sampling_params import SamplingParams
from engine.scheduler import Req, Scheduler
from engine.scheduler.policy import effective_priority, order_waiting


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_req(rid: str, priority: int, arrival: float, base: int = 10, n: int = 8) -> Req:
    return Req(rid=rid, input_ids=list(range(base, base + n)), priority=priority, arrival_time=arrival,
               sampling=SamplingParams(max_new_tokens=2, temperature=0, ignore_eos=True))


def no_match(r: Req):
    return 0, None


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "dfs-weight"])
def test_higher_priority_first_then_the_policy_order(policy):
    reqs = [fake_req("a", 0, 1.0), fake_req("b", 5, 2.0), fake_req("c", 0, 0.5), fake_req("d", 5, 1.5),
            fake_req("e", -3, 0.1)]
    order = [r.rid for r in order_waiting(policy, reqs, no_match, now=2.0, aging_s=1e9, priority_aging_s=100.0)]
    assert order[:2] in (["d", "b"], ["b", "d"]) and set(order[2:4]) == {"a", "c"} and order[4] == "e"
    if policy == "fcfs":
        assert order == ["d", "b", "c", "a", "e"]
    # without priority scheduling the field is ignored by the policy (fcfs: arrival order)
    plain = [r.rid for r in order_waiting("fcfs", reqs, no_match, now=2.0, aging_s=1e9)]
    assert plain == ["e", "c", "a", "d", "b"]


def test_lpm_order_is_kept_within_a_priority_level():
    reqs = [fake_req("cold", 1, 0.0), fake_req("hot", 1, 0.5), fake_req("low-hot", 0, 0.0)]
    hits = {"cold": 0, "hot": 8, "low-hot": 8}
    order = order_waiting("lpm", reqs, lambda r: (hits[r.rid], None), now=1.0, aging_s=1e9, priority_aging_s=60.0)
    assert [r.rid for r in order] == ["hot", "cold", "low-hot"]


def test_aging_adds_one_level_per_interval():
    r = fake_req("x", 2, arrival=10.0)
    assert [effective_priority(r, now, 5.0) for now in (10.0, 14.9, 15.0, 24.9, 25.0)] == [2, 2, 3, 4, 5]


def _sched(clock: Clock, **flags) -> Scheduler:
    args = ServerArgs(kv_cache_tokens=512, max_running_requests=1, enable_priority_scheduling=True,
                      schedule_policy="fcfs", **flags).validate()
    return Scheduler(args, 513, context_len=1024, decode_fn=lambda ids: "", clock=clock)


def _drive(sched: Scheduler, clock: Clock, arrivals: dict[int, list[Req]], steps: int) -> list[str]:
    """Run `steps` steps (each 1 s of fake time), adding arrivals[step] first; returns rids in admission order."""
    admitted: list[str] = []
    for step in range(steps):
        for r in arrivals.get(step, []):
            sched.add(r)
        batch = sched.schedule()
        if batch is not None:
            admitted.extend(r.rid for r in batch.reqs[:batch.num_extend] if r.rid not in admitted)
            sched.process_results(batch, [7] * batch.batch_size)
        sched.check_integrity()
        clock.now += 1.0
    return admitted


def test_scheduler_admits_higher_priority_first():
    clock = Clock()
    sched = _sched(clock, priority_aging_seconds=1000.0)
    first = fake_req("running", 0, 0.0)
    waiting = [fake_req("low", 0, 0.0, base=100), fake_req("high", 9, 0.0, base=200),
               fake_req("mid", 3, 0.0, base=300)]
    admitted = _drive(sched, clock, {0: [first], 1: waiting}, steps=12)
    assert admitted == ["running", "high", "mid", "low"]


def test_aging_keeps_low_priority_from_starving():
    """One slot, a new priority-5 request every step: without aging the priority-0 request never runs; with
    1 s per level it is admitted once it has waited about 5 levels' worth."""
    def arrivals() -> dict[int, list[Req]]:
        out = {0: [fake_req("low", 0, 0.0, base=50)]}
        for s in range(40):
            out.setdefault(s, []).append(fake_req(f"high{s}", 5, float(s), base=100 + 10 * s))
        return out

    clock = Clock()
    starved = _drive(_sched(clock, priority_aging_seconds=1000.0), clock, arrivals(), steps=45)
    assert "low" not in starved[:15]
    clock = Clock()
    aged = _drive(_sched(clock, priority_aging_seconds=1.0), clock, arrivals(), steps=45)
    assert "low" in aged and aged.index("low") < 12


def test_priority_needs_priority_scheduling(make_engine, tiny_model_dir):
    eng = make_engine(tiny_model_dir)
    with pytest.raises(ValueError, match="^priority: priority scheduling is off"):
        eng.generate("hi", {"max_new_tokens": 2}, priority=1)
    on = make_engine(tiny_model_dir, enable_priority_scheduling=True)
    assert on.generate("hi", {"max_new_tokens": 2}, priority=3)["meta_info"]["completion_tokens"] == 2
    with pytest.raises(ValueError, match="^priority: must be an integer"):
        on.generate("hi", {"max_new_tokens": 2}, priority="high")
