"""The in-process Engine API: shapes of results, streaming, async, stop handling, seeds, bad input."""
from __future__ import annotations

import asyncio

import pytest

GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}


@pytest.fixture
def eng(tiny_model_dir, make_engine):
    return make_engine(tiny_model_dir, max_running_requests=8)


def test_generate_single_and_batch_shapes(eng):
    one = eng.generate("hello world", GREEDY)
    assert set(one) == {"text", "output_ids", "meta_info"}
    meta = one["meta_info"]
    assert meta["completion_tokens"] == 12 == len(one["output_ids"])
    assert meta["prompt_tokens"] == len(eng.tokenizer.encode("hello world"))
    assert meta["finish_reason"]["type"] == "length" and 0 < meta["first_token_latency"] <= meta["e2e_latency"]
    assert one["text"] == eng.tokenizer.decode(one["output_ids"], skip_special_tokens=True)
    many = eng.generate(["hello world", "another prompt here"], GREEDY)
    assert isinstance(many, list) and len(many) == 2
    assert many[0]["output_ids"] == one["output_ids"]  # batching does not change greedy output


def test_stream_concatenates_to_full_text(eng):
    full = eng.generate("stream me", GREEDY)
    chunks = list(eng.generate("stream me", GREEDY, stream=True))
    assert "".join(c["delta"] for c in chunks) == full["text"]
    assert chunks[-1]["text"] == full["text"] and chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


def test_abandoned_stream_is_aborted(eng):
    it = eng.generate("stream me", {**GREEDY, "max_new_tokens": 100}, stream=True)
    next(it)
    it.close()  # generator finalisation aborts the request
    eng.generate("x", GREEDY)  # drives the loop so the abort is applied
    assert eng.get_stats()["num_running"] == 0


def test_async_generate_runs_concurrently(eng):
    async def main():
        return await asyncio.gather(*(eng.async_generate(f"prompt {i}", GREEDY) for i in range(4)))

    outs = asyncio.run(main())
    assert [o["meta_info"]["completion_tokens"] for o in outs] == [12] * 4


def test_stop_token_ids_and_stop_strings(eng):
    base = eng.generate("abc", {**GREEDY, "max_new_tokens": 16})
    ids = base["output_ids"]
    stopped = eng.generate("abc", {**GREEDY, "max_new_tokens": 16, "stop_token_ids": [ids[3]]})
    k = ids.index(ids[3])
    assert stopped["output_ids"] == ids[:k + 1]
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": ids[3], "message": None}
    text = base["text"]
    if len(text.strip()) >= 4:
        stop = text.strip()[1:3]
        out = eng.generate("abc", {**GREEDY, "max_new_tokens": 16, "stop": [stop]})
        assert out["text"] == text[:text.index(stop)]
        assert out["meta_info"]["finish_reason"]["matched"] == stop


def test_seeded_sampling_is_reproducible_and_batch_independent(eng):
    sp = {"max_new_tokens": 10, "temperature": 1.0, "top_p": 0.9, "seed": 1234, "ignore_eos": True}
    a = eng.generate("sample this", sp)["output_ids"]
    b = eng.generate(["other", "sample this", "more"], [dict(sp, seed=1), sp, dict(sp, seed=2)])[1]["output_ids"]
    assert a == b


def test_eos_finishes_with_stop(eng):
    eos = eng.tokenizer.eos_token_id
    out = eng.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 4, "temperature": 0,
                                                             "stop_token_ids": []})
    if out["output_ids"] and out["output_ids"][-1] == eos:
        assert out["meta_info"]["finish_reason"]["type"] == "stop"
    else:
        assert out["meta_info"]["finish_reason"]["type"] == "length"


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt=""), "prompt"),
    (dict(prompt="x" * 5000), "prompt"),
    (dict(prompt="hi", sampling_params={"max_new_tokens": 0}), "max_new_tokens"),
    (dict(prompt="hi", sampling_params={"temperature": -1}), "temperature"),
    (dict(prompt="hi", sampling_params={"top_p": 0}), "top_p"),
    (dict(prompt="hi", sampling_params={"top_p": 1.5}), "top_p"),
    (dict(prompt="hi", sampling_params={"bogus": 1}), "bogus"),
    (dict(input_ids=[]), "input_ids"),
    (dict(input_ids=[1, 10 ** 9]), "input_ids"),
    (dict(prompt=["ok", ""]), "prompt"),
])
def test_bad_input_raises_value_error_naming_field(eng, kwargs, field):
    with pytest.raises(ValueError, match=field):
        eng.generate(**kwargs)
    assert eng.get_stats()["num_waiting"] == 0  # nothing was queued
    assert eng.generate("still fine", GREEDY)["meta_info"]["completion_tokens"] == 12


def test_bad_request_does_not_disturb_running_ones(eng):
    it = eng.generate("long running", {**GREEDY, "max_new_tokens": 20}, stream=True)
    next(it)
    with pytest.raises(ValueError):
        eng.generate("hi", {"max_new_tokens": -3})
    rest = list(it)
    assert rest[-1]["meta_info"]["completion_tokens"] == 20


def test_context_manager_and_unknown_flag(tiny_model_dir):
    from engine import Engine

    with pytest.raises(TypeError):
        Engine(model_path=tiny_model_dir, not_a_flag=1)
    with pytest.raises(ValueError, match="schedule_policy"):
        Engine(model_path=tiny_model_dir, schedule_policy="random")
    with Engine(model_path=tiny_model_dir, kv_cache_tokens=512) as e:
        assert e.generate("hi", GREEDY)["meta_info"]["completion_tokens"] == 12
    with pytest.raises(RuntimeError):
        e.generate("hi", GREEDY)


def test_update_config_live(eng):
    it = eng.generate("keeps running", {**GREEDY, "max_new_tokens": 20}, stream=True)
    next(it)
    new = eng.update_config(max_running_requests=2, schedule_policy="fcfs", chunked_prefill_size=128,
                            radix_eviction_policy="lfu", pair_table_capacity=10)
    assert new["max_running_requests"] == 2 and new["schedule_policy"] == "fcfs"
    assert eng.loop.scheduler.args.chunked_prefill_size == 128
    assert eng.loop.scheduler.kv.tree.eviction_policy == "lfu"
    for bad in ({"max_running_requests": 0}, {"schedule_policy": "x"}, {"page_size": 4},
                {"max_running_requests": 10_000}, {"schedule_conservativeness": "high"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            eng.update_config(**bad)
    assert eng.args.max_running_requests == 2  # failed updates changed nothing
    outs = eng.generate([f"p{i}" for i in range(5)], GREEDY)
    assert all(o["meta_info"]["completion_tokens"] == 12 for o in outs)
    assert list(it)[-1]["meta_info"]["completion_tokens"] == 20


def test_failed_forward_aborts_its_batch_and_frees_kv(eng, monkeypatch):
    real = eng.loop.runner.run
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(batch)

    monkeypatch.setattr(eng.loop.runner, "run", flaky)
    outs = eng.generate(["a b c", "d e f"], GREEDY)
    assert all(o["meta_info"]["finish_reason"]["type"] == "abort" for o in outs)
    assert "boom" in outs[0]["meta_info"]["finish_reason"]["message"]
    eng.check_integrity()
    assert eng.generate("after", GREEDY)["meta_info"]["completion_tokens"] == 12


def test_submitting_does_not_wait_for_a_running_step(eng, monkeypatch):
    """While a forward is running, another caller's generate still submits (the request joins a later step) and
    bad input still fails at once; nothing waits for the step to end."""
    import threading

    real = eng.loop.runner.run
    in_forward, release = threading.Event(), threading.Event()

    def slow(batch):
        in_forward.set()
        assert release.wait(timeout=60)
        return real(batch)

    monkeypatch.setattr(eng.loop.runner, "run", slow)
    first = {}
    t = threading.Thread(target=lambda: first.update(out=eng.generate("held step", GREEDY)))
    t.start()
    assert in_forward.wait(timeout=30)
    states, _ = eng._submit("joins later", {"max_new_tokens": 3, "ignore_eos": True}, None)  # returns mid-step
    with pytest.raises(ValueError, match="max_new_tokens"):
        eng._submit("bad", {"max_new_tokens": 0}, None)
    release.set()
    t.join(timeout=60)
    assert first["out"]["meta_info"]["completion_tokens"] == 12
    assert eng._wait_all(states)[0]["meta_info"]["completion_tokens"] == 3


def test_model_work_runs_on_one_engine_thread(tiny_model_dir, make_engine, monkeypatch):
    """Loading and every forward run on the engine's own thread, whichever threads call generate: torch's CPU
    kernels use an OpenMP team per calling thread, and extra teams on few cores throttle every op."""
    import threading

    from engine.model_runner import ModelRunner

    seen = []
    real_init, real_run = ModelRunner.__init__, ModelRunner.run

    def init(self, *a, **k):
        seen.append(("init", threading.get_ident()))
        real_init(self, *a, **k)

    def run(self, batch):
        seen.append(("run", threading.get_ident()))
        return real_run(self, batch)

    monkeypatch.setattr(ModelRunner, "__init__", init)
    monkeypatch.setattr(ModelRunner, "run", run)
    eng = make_engine(tiny_model_dir, max_running_requests=4)
    callers = [threading.Thread(target=eng.generate, args=(f"caller {i}", GREEDY)) for i in range(3)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    list(eng.generate("streamed", GREEDY, stream=True))
    threads = {tid for _, tid in seen}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert threads <= {eng._thread.ident} and sum(kind == "run" for kind, _ in seen) >= 12


def test_streaming_batch_is_refused_before_queueing(eng):
    with pytest.raises(ValueError, match="stream"):
        eng.generate(["a", "b"], GREEDY, stream=True)
    assert eng.get_stats()["num_running"] == 0 and eng.get_stats()["num_waiting"] == 0


def test_shutdown_finishes_waiting_callers_as_aborted(tiny_model_dir, make_engine):
    import threading

    from engine import Engine

    eng = Engine(model_path=tiny_model_dir, kv_cache_tokens=4096, dtype="float32")
    it = eng.generate("long", {**GREEDY, "max_new_tokens": 5000}, stream=True)
    next(it)
    box = {}
    t = threading.Thread(target=lambda: box.update(out=list(it)))
    t.start()
    eng.shutdown()
    t.join(timeout=60)
    assert box["out"][-1]["meta_info"]["finish_reason"]["type"] == "abort"
    with pytest.raises(RuntimeError, match="shut down"):
        eng.generate("after", GREEDY)
    eng.shutdown()  # idempotent


def test_request_state_wakes_streaming_callers_per_token_and_others_at_the_end():
    """A step notifies only the callers it concerns: each token for a stream, only the end otherwise (waking
    every waiting thread each step made them fight the engine thread for the GIL)."""
    from engine.request_input import RequestInput
    from engine.request_state import ReqState
    from engine.sampling_params import SamplingParams
    from engine.scheduler import StepOutput

    class CountingCv:
        def __init__(self):
            self.wakes = 0

        def notify_all(self):
            self.wakes += 1

    for stream, wakes in ((True, 3), (False, 1)):
        cv = CountingCv()
        st = ReqState(RequestInput("r", [1, 2], SamplingParams()), None, 0.0, cv, stream)
        for finished in (False, False, True):
            st.add(StepOutput("r", [7], finished, None, 2, 1, 0))
        assert cv.wakes == wakes and st.output_ids == [7, 7, 7] and st.finished
        assert st.first_token_at is not None and st.result(st.output_ids, st.last, "")["meta_info"][
            "first_token_latency"] == st.first_token_at


def test_engine_thread_failure_wakes_waiting_callers(tiny_model_dir):
    """A bug outside the forward kills the engine thread; a caller already waiting gets EngineDeadError, and so
    does every later call."""
    import threading

    from engine import Engine
    from engine.engine import EngineDeadError

    eng = Engine(model_path=tiny_model_dir, kv_cache_tokens=4096, dtype="float32")

    def broken_step():
        raise RuntimeError("scheduler bug")

    eng.loop.step = broken_step
    box = {}

    def call():
        try:
            eng.generate("waits", GREEDY)
        except EngineDeadError as e:
            box["error"] = e

    t = threading.Thread(target=call)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive() and "scheduler bug" in str(box["error"])
    with pytest.raises(EngineDeadError):
        eng.generate("after", GREEDY)
    eng.shutdown()
