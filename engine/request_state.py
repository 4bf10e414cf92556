"""A caller's view of one in-flight request of the in-process `Engine`, and how the engine thread wakes it.

Every request has its own condition, over the engine's one lock: after a step the engine thread notifies only
the requests that step changed (each token for a streaming caller, the end for the others). With one shared
condition, every step woke every waiting caller thread to re-check its predicate; with 64 requests in flight
those 64 threads then fought the engine thread for the GIL while it built the next step, and the step's many
small torch calls (each releases and retakes the GIL) ran several times slower.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from engine.detokenize import IncrementalDetokenizer
from engine.logprob_options import LogprobAccumulator
from engine.request_input import RequestInput
from engine.scheduler import StepOutput


@dataclasses.dataclass
class ReqState:
    """One request's progress. The engine thread appends tokens and sets `last`/`finished` holding the engine's
    lock and then calls `wake`; the consumer reads them under that lock (waiting on `cv`) and detokenizes outside
    it (`text` and `seen` are consumer-only)."""
    inp: RequestInput
    detok: IncrementalDetokenizer
    start: float
    cv: threading.Condition  # over the engine's lock
    stream: bool = False  # the consumer wants every token as it comes, not just the end
    output_ids: list[int] = dataclasses.field(default_factory=list)
    last: StepOutput | None = None
    finished: bool = False
    text: str = ""
    seen: int = 0  # output_ids already detokenized into text
    first_token_at: float | None = None  # time.monotonic() when the engine thread recorded the first token
    logprobs: LogprobAccumulator | None = None  # when the request asked for logprobs

    def add(self, out: StepOutput) -> None:
        """Engine thread, holding the lock: record a step's output and wake the consumer if it cares."""
        self.last = out
        if out.new_token_ids and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.output_ids.extend(out.new_token_ids)
        if out.logprobs:
            if self.logprobs is None:
                self.logprobs = LogprobAccumulator()
            self.logprobs.add(out.logprobs)
        self.finished = out.finished
        if self.stream or self.finished:
            self.cv.notify_all()

    def result(self, output_ids: list[int], last: StepOutput | None, delta: str,
               logprobs: LogprobAccumulator | None = None, decode_token=None) -> dict[str, Any]:
        """The caller's view so far. `logprobs`: a snapshot of `self.logprobs` taken under the engine's lock;
        `decode_token`: token id → text, for return_text_in_logprobs."""
        meta = {
            "id": self.inp.rid,
            "prompt_tokens": last.prompt_tokens if last else len(self.inp.input_ids),
            "completion_tokens": len(output_ids),
            "cached_tokens": last.cached_tokens if last else 0,
            "finish_reason": last.finish_reason if last else None,
            "e2e_latency": time.monotonic() - self.start,
            # from the call to the step that produced the first token: a non-streaming caller's TTFT
            "first_token_latency": None if self.first_token_at is None else self.first_token_at - self.start,
        }
        if last and last.extra:
            meta.update(last.extra)
        if self.inp.logprob is not None:
            text_of = decode_token if self.inp.logprob.return_text_in_logprobs else None
            meta.update((logprobs or LogprobAccumulator()).meta_info(text_of))
        return {"text": self.text, "output_ids": output_ids, "meta_info": meta, "delta": delta}
