"""The scheduler and detokenizer process bodies, driven in-process through their message handlers.

The test binds the PULL sockets the process under test writes to, so every assertion is on real messages.
"""
from __future__ import annotations

import os
import time

import pytest
import zmq

from server.detokenizer import DetokenizerProcess
from server.ipc import IpcAddresses, pull_socket, recv_all
from server.messages import AbortReq, BatchTokenOut, FlushCacheReq, GenerateReq, StatsOut, StatsReq, TokenOut
from server.scheduler_process import MAX_CONSECUTIVE_STEP_FAILURES, SchedulerProcess

KV_TOKENS = 256


@pytest.fixture
def sockets():
    addrs = IpcAddresses.create(0)
    ctx = zmq.Context()
    to_detok = pull_socket(ctx, addrs.detokenizer)
    to_main = pull_socket(ctx, addrs.tokenizer)
    yield addrs, to_detok, to_main
    ctx.destroy(linger=0)
    addrs.cleanup()


@pytest.fixture
def sched(tiny_model_dir, sockets):
    from engine.config import ServerArgs

    addrs, to_detok, to_main = sockets
    args = ServerArgs(model_path=tiny_model_dir, kv_cache_tokens=KV_TOKENS, dtype="float32").validate()
    proc = SchedulerProcess(args, tiny_model_dir, addrs, os.getppid())
    yield proc, to_detok, to_main
    proc.loop.scheduler.check_integrity()
    proc.close()


def _outputs(sock) -> list[TokenOut]:
    """Everything sent so far: read until the socket stays quiet for a moment (delivery is asynchronous)."""
    outs: list[TokenOut] = []
    while msgs := recv_all(sock, 500):
        assert all(isinstance(m, BatchTokenOut) for m in msgs)
        outs.extend(o for m in msgs for o in m.outputs)
    return outs


def _run_until_idle(proc, to_detok, max_steps: int = 200) -> list[TokenOut]:
    outs: list[TokenOut] = []
    for _ in range(max_steps):
        if not proc.loop.has_work():
            return outs + _outputs(to_detok)
        proc.step()
    raise AssertionError("the scheduler did not drain")


def _req(rid: str, n: int, max_new_tokens: int = 3) -> GenerateReq:
    return GenerateReq(rid, [5 + i % 50 for i in range(n)], {"max_new_tokens": max_new_tokens, "stop": ["zz"]})


def test_request_over_the_kv_pool_is_rejected_with_400(sched):
    proc, to_detok, _ = sched
    proc.handle(_req("big", KV_TOKENS + 10))
    [out] = _outputs(to_detok)
    assert out.rid == "big" and out.finished and out.finish_reason["status_code"] == 400
    assert "KV" in out.finish_reason["message"] and out.detok["stop"] == ["zz"]
    assert not proc.loop.has_work()


def _explode(batch):
    raise RuntimeError("injected kernel failure")


@pytest.mark.parametrize("fail_at_step", [0, 1], ids=["prefill", "decode"])
def test_failed_step_fails_its_requests_and_the_loop_goes_on(sched, monkeypatch, fail_at_step):
    """A prefill failure loses the admitted batch inside the engine (state rebuilt); a decode failure leaves a
    consistent state (requests aborted). Either way: error 500 for the request, then normal service."""
    proc, to_detok, _ = sched
    proc.handle(_req("victim", 20, max_new_tokens=5))
    for _ in range(fail_at_step):
        proc.step()
    monkeypatch.setattr(proc.loop.runner, "run", _explode)
    proc.step()
    monkeypatch.undo()
    outs = _run_until_idle(proc, to_detok)
    [victim] = [o for o in outs if o.finished]
    assert victim.rid == "victim" and victim.finish_reason["status_code"] == 500
    assert "injected kernel failure" in victim.finish_reason["message"]

    proc.handle(_req("after", 20))
    outs = _run_until_idle(proc, to_detok)
    assert outs[0].detok is not None and all(o.detok is None for o in outs[1:])
    assert outs[-1].finished and outs[-1].finish_reason["type"] == "length"
    assert sum(len(o.new_token_ids) for o in outs) == 3
    kv = proc.loop.scheduler.kv
    assert kv.allocator.num_free + kv.tree.total_size() == kv.capacity


def test_repeated_step_failures_end_the_process(sched, monkeypatch):
    proc, to_detok, _ = sched

    monkeypatch.setattr(proc.loop.runner, "run", _explode)
    with pytest.raises(RuntimeError, match="in a row"):
        for i in range(MAX_CONSECUTIVE_STEP_FAILURES):
            proc.handle(_req(f"r{i}", 10))  # each failure aborted the previous request
            proc.step()
    monkeypatch.undo()
    # The real process exits here; rebuild the state so the fixture's integrity check applies to what is left.
    proc.reset_engine_state("test over")
    assert [o.rid for o in _outputs(to_detok) if o.finished] == ["r0", "r1", "r2"]


def _recv_n(sock, n: int, timeout_s: float = 5.0) -> list:
    """The next `n` messages: recv_all drains only what has arrived, and the second of two replies sent back to
    back may still be in zmq's I/O thread when the first is read."""
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += recv_all(sock, 100)
    return out


def test_stats_and_flush_cache_replies(sched):
    proc, to_detok, to_main = sched
    proc.handle(_req("busy", 10, max_new_tokens=2))
    proc.handle(StatsReq(7))
    proc.handle(FlushCacheReq(8))
    stats, flush = _recv_n(to_main, 2)
    assert isinstance(stats, StatsOut) and stats.seq == 7 and stats.stats["num_waiting"] == 1
    assert stats.stats["kv_capacity_tokens"] == KV_TOKENS
    assert flush.seq == 8 and not flush.success
    _run_until_idle(proc, to_detok)
    assert proc.loop.scheduler.kv.tree.total_size() > 0
    proc.handle(FlushCacheReq(9))
    [flush] = _recv_n(to_main, 1)
    assert flush.success and proc.loop.scheduler.kv.tree.total_size() == 0


def test_trace_file_records_what_the_scheduler_process_finishes(tiny_model_dir, sockets, tmp_path):
    """`--trace-file` reaches the server's engine loop: finished requests are recorded, aborted ones are not,
    and close() (the process's exit path) closes the file."""
    from bench.cachesim.traces import block_hashes, read_trace
    from engine.config import ServerArgs

    addrs, to_detok, _ = sockets
    path = str(tmp_path / "server.jsonl")
    args = ServerArgs(model_path=tiny_model_dir, kv_cache_tokens=KV_TOKENS, dtype="float32", trace_file=path,
                      trace_block_size=8).validate()
    proc = SchedulerProcess(args, tiny_model_dir, addrs, os.getppid())
    try:
        proc.handle(_req("done", 20, max_new_tokens=2))
        proc.handle(_req("gone", 12))
        proc.handle(AbortReq("gone"))
        _run_until_idle(proc, to_detok)
    finally:
        proc.close()
    assert proc.recorder.closed and (proc.recorder.recorded, proc.recorder.skipped) == (1, 1)
    trace = read_trace(path)
    [rec] = trace.requests
    assert trace.block_size == 8 and rec.output_length == 2
    assert rec.hash_ids == block_hashes(_req("done", 20).input_ids, 8)


class _ExplodingTokenizer:
    """The real tokenizer, except that decoding token 999 fails."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def decode(self, ids, **kw):
        if 999 in ids:
            raise RuntimeError("cannot decode 999")
        return self.tokenizer.decode(ids, **kw)


@pytest.fixture
def detok(tiny_model_dir, sockets):
    from engine.models.loader import load_tokenizer

    addrs, _, _ = sockets
    tokenizer = load_tokenizer(tiny_model_dir)
    proc = DetokenizerProcess(_ExplodingTokenizer(tokenizer), addrs, os.getppid())
    yield proc, tokenizer
    proc.close()


def _tok(rid, ids, finished=False, detok=None):
    reason = {"type": "length", "matched": None, "message": None} if finished else None
    return TokenOut(rid, ids, finished, reason, 4, len(ids), 0, None, detok)


def test_detokenizer_cuts_at_a_stop_string_across_steps(detok):
    proc, tokenizer = detok
    ids = tokenizer.encode("hello world, goodbye world", add_special_tokens=False)
    stop = "goodbye"
    texts = [proc.convert(_tok("r", ids[:2], detok={"stop": [stop], "skip_special_tokens": True,
                                                     "no_stop_trim": False}))]
    texts += [proc.convert(_tok("r", [t])) for t in ids[2:]]
    texts.append(proc.convert(_tok("r", [], finished=True)))
    assert "".join(t.text for t in texts) == "hello world, "
    assert texts[-1].finished and "r" not in proc.states


def test_detokenizer_failure_ends_only_that_request(detok):
    proc, tokenizer = detok
    ok_ids = tokenizer.encode("fine text", add_special_tokens=False)
    proc.convert(_tok("ok", ok_ids[:1], detok={}))
    bad = proc.convert(_tok("bad", [999], detok={}))
    assert bad.finished and bad.finish_reason["status_code"] == 500
    assert proc.convert(_tok("bad", [5])) is None  # later steps of the failed request are dropped
    assert proc.convert(_tok("bad", [], finished=True)) is None and "bad" not in proc.failed
    rest = proc.convert(_tok("ok", ok_ids[1:], finished=True))
    assert rest.finish_reason["type"] == "length"
    assert tokenizer.decode(ok_ids[:1]) + rest.text == "fine text"
