"""SGLang-style batch lines from the scheduler process, rate-limited.

  Prefill batch. #new-seq: 3, #new-token: 412, #cached-token: 1650, token usage: 0.12, #running-req: 5, #queue-req: 0
  Decode batch. #running-req: 8, #token: 5120, token usage: 0.15, gen throughput (token/s): 143.20, #queue-req: 2

Names and meanings as SGLang prints them. Counts are summed over the steps since the last line of the same kind
(a prefill line covers every prefill step since the previous one, so nothing is lost to the rate limit);
token usage, #token (KV slots held by requests), #running-req and #queue-req are the state when the line is
printed. At most one line of each kind per `interval_s`; `flush()` (called when the scheduler goes idle) prints
what is pending, so the last burst before a pause is not left out.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

LOG_INTERVAL_S = 1.0


@dataclass(frozen=True)
class KvState:
    """The scheduler's state when a line is printed."""

    running: int
    queued: int
    used_tokens: int  # KV slots held by requests (cached-but-evictable slots count as free, as in SGLang)
    capacity: int

    @property
    def usage(self) -> float:
        return self.used_tokens / self.capacity if self.capacity else 0.0


class BatchLogger:
    def __init__(self, state: Callable[[], KvState], logger: logging.Logger, interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.state = state
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self.new_seqs = self.new_tokens = self.cached_tokens = 0
        self.prefill_pending = False
        self.last_prefill = -float("inf")
        self.gen_tokens = 0
        self.decode_pending = False
        self.last_decode = clock()

    def on_step(self, batch) -> None:
        """Account one step's batch (engine.scheduler.batch.ScheduledBatch; None: nothing ran)."""
        if batch is None or not self.logger.isEnabledFor(logging.INFO):
            return
        k = batch.num_extend
        if k:
            for req, prefix_len, extend_len in zip(batch.reqs[:k], batch.prefix_lens[:k], batch.extend_lens[:k]):
                # the first chunk starts where the cache match at admission ended (cached_len moves on with
                # each chunk; reported_cached_len keeps the admission value)
                first_chunk = prefix_len == (req.reported_cached_len or 0)
                self.new_seqs += first_chunk
                self.cached_tokens += prefix_len if first_chunk else 0
                self.new_tokens += extend_len
            self.prefill_pending = True
        self.gen_tokens += sum(batch.sample)
        if batch.batch_size > k:
            self.decode_pending = True
        self.maybe_log()

    def maybe_log(self, force: bool = False) -> None:
        now = self.clock()
        if self.prefill_pending and (force or now - self.last_prefill >= self.interval_s):
            s = self.state()
            self.logger.info("Prefill batch. #new-seq: %d, #new-token: %d, #cached-token: %d, token usage: %.2f, "
                             "#running-req: %d, #queue-req: %d", self.new_seqs, self.new_tokens, self.cached_tokens,
                             s.usage, s.running, s.queued)
            self.new_seqs = self.new_tokens = self.cached_tokens = 0
            self.prefill_pending, self.last_prefill = False, now
        if self.decode_pending and (force or now - self.last_decode >= self.interval_s):
            s = self.state()
            throughput = self.gen_tokens / max(now - self.last_decode, 1e-9)
            self.logger.info("Decode batch. #running-req: %d, #token: %d, token usage: %.2f, "
                             "gen throughput (token/s): %.2f, #queue-req: %d", s.running, s.used_tokens, s.usage,
                             throughput, s.queued)
            self.gen_tokens, self.decode_pending, self.last_decode = 0, False, now

    def flush(self) -> None:
        """Print what is pending (the scheduler went idle)."""
        if self.prefill_pending or self.decode_pending:
            self.maybe_log(force=True)
        else:
            self.gen_tokens, self.last_decode = 0, self.clock()  # idle time does not count towards throughput
