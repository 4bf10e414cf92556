"""SGLang-style batch lines: counts summed over the steps between lines, one line per kind per interval, the
pending ones printed when the scheduler goes idle."""
from __future__ import annotations

import logging
from types import SimpleNamespace

from engine.scheduler.batch import ForwardMode, ScheduledBatch
from server.batch_log import BatchLogger, KvState


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _batch(mode, reqs, prefix_lens, extend_lens, sample, num_extend=-1):
    return ScheduledBatch(mode, reqs, [0] * sum(extend_lens), prefix_lens, extend_lens, [], [], sample,
                          num_extend=num_extend)


def _logger(caplog):
    caplog.set_level(logging.INFO, logger="test.batch_log")
    return logging.getLogger("test.batch_log")


def test_prefill_lines_sum_the_steps_between_them(caplog):
    clock = Clock()
    log = BatchLogger(lambda: KvState(3, 1, 250, 1000), _logger(caplog), interval_s=1.0, clock=clock)
    a, b = SimpleNamespace(reported_cached_len=16), SimpleNamespace(reported_cached_len=0)
    log.on_step(_batch(ForwardMode.EXTEND, [a, b], [16, 0], [40, 30], [True, False]))  # printed at once
    clock.t += 0.2
    log.on_step(_batch(ForwardMode.EXTEND, [b], [30], [20], [True]))  # b's second chunk: not a new seq
    clock.t += 0.2
    c = SimpleNamespace(reported_cached_len=8)
    log.on_step(_batch(ForwardMode.EXTEND, [c], [8], [10], [True]))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["Prefill batch. #new-seq: 2, #new-token: 70, #cached-token: 16, token usage: 0.25, "
                     "#running-req: 3, #queue-req: 1"]
    log.flush()  # idle: the two rate-limited steps come out together
    assert caplog.records[-1].getMessage() == ("Prefill batch. #new-seq: 1, #new-token: 30, #cached-token: 8, "
                                               "token usage: 0.25, #running-req: 3, #queue-req: 1")


def test_decode_lines_report_throughput_over_the_interval(caplog):
    clock = Clock()
    log = BatchLogger(lambda: KvState(4, 0, 100, 1000), _logger(caplog), interval_s=1.0, clock=clock)
    reqs = [SimpleNamespace(reported_cached_len=0) for _ in range(4)]
    for _ in range(10):
        clock.t += 0.25
        log.on_step(_batch(ForwardMode.DECODE, reqs, [5] * 4, [1] * 4, [True] * 4))
    msgs = [r.getMessage() for r in caplog.records]
    # lines at t = +1.0 (16 tokens over 1 s) and +2.0 (16 tokens over 1 s); the last 8 tokens wait
    assert msgs == ["Decode batch. #running-req: 4, #token: 100, token usage: 0.10, gen throughput (token/s): "
                    "16.00, #queue-req: 0"] * 2
    clock.t += 0.1
    log.flush()
    assert "gen throughput (token/s): 13.33" in caplog.records[-1].getMessage()  # 8 tokens over 0.6 s


def test_nothing_is_computed_when_info_is_off(caplog):
    caplog.set_level(logging.WARNING, logger="test.batch_log.quiet")
    called = []
    log = BatchLogger(lambda: called.append(1) or KvState(0, 0, 0, 1), logging.getLogger("test.batch_log.quiet"))
    log.on_step(_batch(ForwardMode.EXTEND, [SimpleNamespace(reported_cached_len=0)], [0], [5], [True]))
    log.flush()
    assert not called and not caplog.records
