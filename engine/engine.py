"""In-process engine: `Engine(model_path=..., **flags).generate(...)`, streaming, async, stats, shutdown.

Every caller drives the same `EngineLoop.step()` under one lock and each step's outputs are routed to the
requests they belong to, so concurrent `generate` / `stream` / `async_generate` callers batch together. New
requests are validated without that lock and wait in an inbox that the next step drains.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any, Iterator

from engine.config import ServerArgs
from engine.detokenize import IncrementalDetokenizer
from engine.loop import EngineLoop
from engine.models.loader import load_tokenizer, resolve_model_path
from engine.request_input import RequestInput, normalize_inputs
from engine.sampling_params import SamplingParams
from engine.scheduler import StepOutput
from engine.trace_recorder import open_trace_recorder


@dataclasses.dataclass
class _ReqState:
    inp: RequestInput
    detok: IncrementalDetokenizer
    start: float
    output_ids: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    delta: str = ""
    unseen_tokens: int = 0  # tokens produced since the stream last yielded
    last: StepOutput | None = None
    finished: bool = False

    def result(self) -> dict[str, Any]:
        o = self.last
        meta = {
            "id": self.inp.rid,
            "prompt_tokens": o.prompt_tokens if o else len(self.inp.input_ids),
            "completion_tokens": len(self.output_ids),
            "cached_tokens": o.cached_tokens if o else 0,
            "finish_reason": o.finish_reason if o else None,
            "e2e_latency": time.monotonic() - self.start,
        }
        if o and o.extra:
            meta.update(o.extra)
        return {"text": self.text, "output_ids": list(self.output_ids), "meta_info": meta}


class Engine:
    def __init__(self, model_path: str | None = None, **flags: Any):
        if model_path is not None:
            flags["model_path"] = model_path
        self.args = ServerArgs(**flags).validate()
        path = resolve_model_path(self.args.model_path)
        self.tokenizer = load_tokenizer(path)
        # trace_file: finished requests are recorded there (hashes only) until shutdown() closes it.
        self.recorder = open_trace_recorder(self.args)
        try:
            self.loop = EngineLoop(self.args, path, self.tokenizer, self.recorder)
        except BaseException:
            if self.recorder is not None:
                self.recorder.close()
            raise
        self._lock = threading.Lock()  # held for a whole step; the inbox has its own short-held lock
        self._inbox_lock = threading.Lock()
        self._inbox: list[tuple[Any, _ReqState]] = []  # (Req, state) submitted since the last step
        self._states: dict[str, _ReqState] = {}
        self._closed = False

    # --- submitting -----------------------------------------------------------------------------------
    def _submit(self, prompt, sampling_params, input_ids, icl=None) -> tuple[list[_ReqState], bool]:
        if self._closed:
            raise RuntimeError("engine is shut down")
        inputs, single = normalize_inputs(self.tokenizer, prompt, input_ids, sampling_params, self.loop.context_len,
                                          icl)
        states, reqs = [], []
        for inp in inputs:
            sp: SamplingParams = inp.sampling
            reqs.append(self.loop.make_request(inp.rid, inp.input_ids, sp, inp.icl))  # ValueError: nothing queued
            detok = IncrementalDetokenizer(self.tokenizer, sp.skip_special_tokens, sp.stop, sp.no_stop_trim)
            states.append(_ReqState(inp, detok, time.monotonic()))
        # Into the inbox, not the scheduler: taking the step lock here would wait out a whole forward, and the
        # thread that just stepped usually re-takes the lock first, so submitters starved (8 concurrent
        # streams decoded ~2.4 requests per step).
        with self._inbox_lock:
            self._inbox.extend(zip(reqs, states))
        return states, single

    def _drain_inbox(self) -> None:
        """Move submitted requests into the scheduler; the caller holds the step lock."""
        with self._inbox_lock:
            items, self._inbox = self._inbox, []
        for req, st in items:
            self.loop.enqueue(req)
            self._states[req.rid] = st

    def _step(self) -> None:
        with self._lock:
            self._drain_inbox()
            if not self.loop.has_work():
                return
            for out in self.loop.step():
                st = self._states.get(out.rid)
                if st is None:
                    continue
                st.last = out
                st.output_ids.extend(out.new_token_ids)
                st.unseen_tokens += len(out.new_token_ids)
                delta = st.detok.add(out.new_token_ids)
                if out.finished:
                    delta += st.detok.finish()
                    st.finished = True
                    del self._states[out.rid]
                st.text += delta
                st.delta += delta

    def _drive(self, states: list[_ReqState]) -> None:
        try:
            while not all(s.finished for s in states):
                self._step()
        except BaseException:
            for s in states:
                self.abort(s.inp.rid)
            raise

    # --- public API -----------------------------------------------------------------------------------
    def generate(self, prompt: str | list[str] | None = None, sampling_params: dict | list[dict] | None = None,
                 input_ids: list[int] | list[list[int]] | None = None, stream: bool = False,
                 icl: dict | list[dict] | None = None):
        """Generate for one prompt (→ dict) or a batch (→ list of dicts, in order).

        Each dict: {"text", "output_ids", "meta_info": {"prompt_tokens", "completion_tokens", "cached_tokens",
        "finish_reason", "e2e_latency", ...}}. With stream=True (single prompt), returns an iterator of
        dicts whose "text" is the text so far and "delta" the new part. Bad input raises ValueError naming
        the field, and nothing is queued. `icl` ({"instruction", "examples": [{"input", "output"}], "query",
        "refine": none|table|native}) renders an ICL prompt whose examples PAIR may reorder at admission;
        meta_info then carries icl_order and icl_substituted.
        """
        states, single = self._submit(prompt, sampling_params, input_ids, icl)
        if stream:
            if len(states) != 1:
                raise ValueError("stream: streaming takes a single prompt")
            return self._stream(states[0])
        self._drive(states)
        results = [s.result() for s in states]
        return results[0] if single else results

    def _stream(self, st: _ReqState) -> Iterator[dict]:
        try:
            while True:
                self._step()
                if st.unseen_tokens or st.finished:
                    done = st.finished  # read before yielding: other callers may finish it meanwhile
                    out = st.result()
                    out["delta"], st.delta, st.unseen_tokens = st.delta, "", 0
                    yield out
                    if done:
                        return
        finally:
            if not st.finished:
                self.abort(st.inp.rid)

    async def async_generate(self, prompt=None, sampling_params=None, input_ids=None, icl=None):
        """Async `generate` (non-streaming): steps run in a worker thread so the event loop stays free."""
        states, single = self._submit(prompt, sampling_params, input_ids, icl)
        try:
            while not all(s.finished for s in states):
                await asyncio.to_thread(self._step)
        except BaseException:
            for s in states:
                self.abort(s.inp.rid)
            raise
        results = [s.result() for s in states]
        return results[0] if single else results

    def abort(self, rid: str) -> None:
        with self._lock:
            self._drain_inbox()
            self.loop.abort(rid)

    def get_stats(self) -> dict[str, Any]:
        with self._lock:
            self._drain_inbox()
            return self.loop.stats()

    def update_config(self, **knobs: Any) -> dict[str, Any]:
        """Change live knobs (engine/knobs.py) between steps, dropping nothing. ValueError, nothing changed, on
        a bad knob. max_running_requests may only go down from the start value (request rows are preallocated)."""
        with self._lock:
            new = self.loop.update_config(knobs)
            self.args = self.loop.args
            return new

    def flush_cache(self) -> bool:
        """Drop every cached prefix; only when idle (returns False otherwise)."""
        with self._lock:
            return self.loop.flush_cache()

    def check_integrity(self) -> None:
        with self._lock:
            self._drain_inbox()
            self.loop.scheduler.check_integrity()

    def shutdown(self) -> None:
        with self._lock:
            self._drain_inbox()
            for rid in list(self._states):
                self.loop.abort(rid)
            self._closed = True
            if self.recorder is not None:
                self.recorder.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
