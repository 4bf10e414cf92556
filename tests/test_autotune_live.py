"""Live knob updates under load, the closed-loop replay, the HTTP target, workload features and the objective."""
from __future__ import annotations

import json
import math
import os
import pathlib
import threading

import httpx
import pytest

from autotune.knobs import SearchSpace
from autotune.objective import ClosedLoop, EngineTarget, Objective, ObjectiveKind, ServerTarget
from autotune.workload import build_workload, task_features

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")


@pytest.fixture
def engine(tiny_model_dir, make_engine):
    return make_engine(tiny_model_dir, max_running_requests=8)


@pytest.fixture
def workload(engine):
    return build_workload(FIXTURES, "Apache", engine.tokenizer, n_requests=24)


def test_update_config_mid_load_every_request_completes(engine, workload):
    # Half the requests are long, so they are still decoding when the first short one returns: every admitted
    # request gains one token per step, and a short one needs far fewer steps than 200.
    reqs = [(r.icl, dict(r.sampling_params, max_new_tokens=200) if i >= 5 else r.sampling_params)
            for i, r in enumerate(workload.requests[:10])]
    results: list[dict | None] = [None] * len(reqs)
    lock = threading.Lock()
    first_done = threading.Event()

    def client(i: int) -> None:
        out = engine.generate(icl=reqs[i][0], sampling_params=reqs[i][1])
        with lock:
            results[i] = out
        first_done.set()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    assert first_done.wait(timeout=120)
    new = {"max_running_requests": 2, "schedule_policy": "fcfs", "chunked_prefill_size": 96,
           "pair_policy": "native", "radix_eviction_policy": "segment", "schedule_conservativeness": 0.5}
    engine.update_config(**new)
    with lock:
        finished_before = sum(r is not None for r in results)
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert finished_before < len(reqs)  # the change really happened under load
    for (_, sp), res in zip(reqs, results):
        assert res["meta_info"]["finish_reason"]["type"] == "length"
        assert res["meta_info"]["completion_tokens"] == sp["max_new_tokens"]
    args = engine.loop.scheduler.args
    assert {k: getattr(args, k) for k in new} == new


def test_closed_loop_measures_each_config_after_applying_it(engine, workload):
    space = SearchSpace(ranges={"max_running_requests": (1, 8)})
    loop = ClosedLoop(EngineTarget(engine), workload, concurrency=3)
    try:
        first = {**space.default_config(), "max_running_requests": 1, "schedule_policy": "fcfs"}
        m1 = loop.measure(first, warmup=2, window=5)
        assert engine.loop.scheduler.args.max_running_requests == 1
        second = {**first, "max_running_requests": 4, "pair_policy": "table", "pair_table_capacity": 16}
        m2 = loop.measure(second, warmup=1, window=4)
        assert engine.loop.scheduler.args.pair_policy == "table"
        assert engine.loop.scheduler.pair.table.capacity == 16
    finally:
        loop.stop()
    for m, window in ((m1, 5), (m2, 4)):
        assert m["finished"] == window and m["censored"] == 0
        assert 0 < m["p50_s"] <= m["p95_s"] and m["throughput_rps"] > 0
        assert 0 < m["p95_cpu_s"] and m["throughput_cpu_rps"] > 0
    assert not engine.loop.scheduler.has_work()  # stop() let every in-flight request finish


def test_closed_loop_surfaces_request_errors(engine, workload):
    class Failing(EngineTarget):
        def send(self, icl, sampling_params):
            raise ValueError("boom")

    loop = ClosedLoop(Failing(engine), workload, concurrency=2)
    with pytest.raises(RuntimeError, match="failed"):
        loop.measure(None, warmup=0, window=2)
    loop.stop()


def test_server_target_posts_knobs_and_icl_requests():
    seen = []

    seen_headers = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        seen_headers.append(dict(request.headers))
        if request.url.path == "/update_config" and "bogus" in seen[-1][1]:
            return httpx.Response(400, json={"error": {"message": "bogus: not a live knob"}})
        return httpx.Response(200, json={"text": "`x`"})

    target = ServerTarget("http://server:1234/", transport=httpx.MockTransport(handler))
    target.apply({"max_running_requests": 4})
    assert "authorization" not in seen_headers[-1]
    target.send({"instruction": "i", "examples": [{"input": "a", "output": "b"}], "query": "q"},
                {"max_new_tokens": 3, "temperature": 0.0, "ignore_eos": True})
    assert seen[0] == ("/update_config", {"max_running_requests": 4})
    assert seen[1][0] == "/generate" and set(seen[1][1]) == {"icl", "sampling_params"}
    with pytest.raises(RuntimeError, match="400"):
        target.apply({"bogus": 1})
    target.close()


def test_workload_requests_use_oracle_lengths_and_leave_refine_to_the_engine(engine, workload):
    assert len(workload.requests) == 24
    for req in workload.requests:
        assert "refine" not in req.icl
        sp = req.sampling_params
        assert sp["temperature"] == 0.0 and sp["ignore_eos"] is True and sp["max_new_tokens"] >= 1
        assert sp["max_new_tokens"] == len(engine.tokenizer.encode(f"`{req.template}`", add_special_tokens=False))
    assert len({r.template for r in workload.requests}) > 1
    again = build_workload(FIXTURES, "Apache", engine.tokenizer, n_requests=24)
    assert [r.icl for r in again.requests] == [r.icl for r in workload.requests]  # fixed shuffle


def test_task_features_on_a_hand_made_stream():
    f = task_features(["A", "A", "B", "C"], [(("x", "A"), ("y", "B")), (("x", "A"), ("y", "B")),
                                             (("y", "B"), ("x", "A")), (("z", "C"), ("x", "A"))],
                      [100, 200, 300, 400], [10, 20, 30, 40])
    assert math.isclose(f["log_templates"], math.log(4))
    assert math.isclose(f["template_entropy"], -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert f["mean_prompt_tokens"] == 2.5 and f["mean_output_tokens"] == 2.5
    assert math.isclose(f["demo_reuse_rate"], 1 - 3 / 8)
    assert math.isclose(f["demo_set_reuse_rate"], 1 - 2 / 4)


def test_objective_losses_and_tolerance():
    m = {"p95_s": 2.0, "throughput_rps": 10.0, "p95_cpu_s": 1.0, "throughput_cpu_rps": 20.0}
    p95 = Objective()
    assert math.isclose(p95.value(m), 2.0) and math.isclose(p95.value_of_loss(p95.loss(m)), 2.0)
    assert p95.within(math.log(2.09), math.log(2.0)) and not p95.within(math.log(2.2), math.log(2.0))
    thr = Objective(ObjectiveKind.THROUGHPUT, slo_s=1.0)
    assert math.isclose(thr.value(m), 5.0)  # 10 req/s at twice the SLO
    assert math.isclose(Objective(ObjectiveKind.THROUGHPUT, slo_s=1.0, clock="cpu").value(m), 20.0)
    assert thr.within(-math.log(4.8), -math.log(5.0)) and not thr.within(-math.log(4.5), -math.log(5.0))
    with pytest.raises(ValueError, match="slo_s"):
        Objective(ObjectiveKind.THROUGHPUT)
    with pytest.raises(ValueError, match="clock"):
        Objective(clock="gpu")


def test_server_target_sends_the_api_key():
    headers = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"text": "`x`"})

    target = ServerTarget("http://server:1234", transport=httpx.MockTransport(handler), api_key="sk-team")
    target.apply({"max_running_requests": 4})
    target.send({"instruction": "i", "examples": [], "query": "q"}, {"max_new_tokens": 1})
    target.close()
    assert headers == ["Bearer sk-team", "Bearer sk-team"]


def test_autotune_holds_the_target_out_by_default(tmp_path, capsys):
    from autotune.__main__ import build_parser, meta_records

    assert build_parser().parse_args(["--task", "HDFS", "--budget", "2"]).holdout is True
    assert build_parser().parse_args(["--task", "HDFS", "--budget", "2", "--no-holdout"]).holdout is False
    meta = str(pathlib.Path(__file__).resolve().parent.parent / "data" / "autotune_meta.jsonl")
    kept = meta_records(meta, "HDFS")
    assert kept and all(r.system != "HDFS" for r in kept)
    assert "target HDFS held out" in capsys.readouterr().out
    assert any(r.system == "HDFS" for r in meta_records(meta, None))
