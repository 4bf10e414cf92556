"""In-process engine: `Engine(model_path=..., **flags).generate(...)`, streaming, async, stats, shutdown.

One engine thread owns the `EngineLoop`: it loads the model, runs every step (schedule → run → process results)
and every control call. Callers only validate and tokenize their requests, queue them in an inbox, and wait on
their request's condition for its tokens, which they detokenize themselves (engine/request_state.py).
Concurrent `generate` / `stream` / `async_generate` callers therefore batch together in the engine thread's steps.

Why one thread for all model work: torch's CPU kernels run on an OpenMP team per calling OS thread, and once a
process has more OpenMP threads than cores, libgomp stops spin-waiting between parallel regions. When each caller
stepped the loop itself, 8 client threads made 8 teams on 2 cores and every op paid a wake-up: a bf16 decode
linear took 174 us instead of 92 us, and decode steps ran ~2x slower than from a single thread.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, Iterator

from engine.config import ServerArgs
from engine.cpu_runtime import OpenMPPools
from engine.detokenize import IncrementalDetokenizer
from engine.loop import EngineLoop
from engine.models.loader import load_tokenizer, resolve_model_path
from engine.pair.refiner import ANONYMOUS_TENANT
from engine.pair.render import SegmentEncoder
from engine.request_input import normalize_inputs
from engine.request_state import ReqState
from engine.trace_recorder import open_trace_recorder


class EngineDeadError(RuntimeError):
    """The engine thread stopped on an unexpected error; every waiting and later call raises this."""


class Engine:
    def __init__(self, model_path: str | None = None, **flags: Any):
        if model_path is not None:
            flags["model_path"] = model_path
        self.args = ServerArgs(**flags).validate()
        path = resolve_model_path(self.args.model_path)
        self.tokenizer = load_tokenizer(path, self.args.chat_template)
        self.segment_encoder = SegmentEncoder(self.tokenizer)
        # trace_file: finished requests are recorded there (hashes only) until shutdown() closes it.
        self.recorder = open_trace_recorder(self.args)
        self.loop: EngineLoop | None = None
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)  # the engine thread and control calls wait here, requests not
        self._inbox: list[tuple[Any, ReqState]] = []  # (Req, state) submitted since the engine thread looked
        self._calls: list[tuple[Callable[[], Any], dict]] = []  # control calls to run between steps
        self._states: dict[str, ReqState] = {}  # engine thread only
        self._closed = False
        self._error: BaseException | None = None
        # This thread's earlier torch work left an OpenMP team that would throttle the engine thread's (the
        # callers' threads run no torch ops of their own here); engine/cpu_runtime.py has the measurements.
        self._omp = OpenMPPools() if self.args.device == "cpu" else None
        if self._omp is not None:
            self._omp.release()
        self._thread = threading.Thread(target=self._run, args=(path,), name="pairserve-engine", daemon=True)
        self._thread.start()
        with self._cv:
            self._cv.wait_for(lambda: self.loop is not None or self._error is not None)
        if self._error is not None:
            self._thread.join()
            if self.recorder is not None:
                self.recorder.close()
            raise self._error

    # --- the engine thread ----------------------------------------------------------------------------------
    def _run(self, path: str) -> None:
        try:
            loop = EngineLoop(self.args, path, self.tokenizer, self.recorder)
        except BaseException as e:
            self._fail(e)
            return
        with self._cv:
            self.loop = loop
            self._cv.notify_all()
        try:
            while self._serve_once(loop):
                pass
        except BaseException as e:  # a bug outside the forward (those abort their batch in EngineLoop.step)
            err = EngineDeadError(f"engine thread failed: {type(e).__name__}: {e}")
            err.__cause__ = e
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        """Engine thread: record the error and wake everyone waiting, so each raises it."""
        with self._cv:
            self._error = err
            for st in [*self._states.values(), *(s for _, s in self._inbox)]:
                st.cv.notify_all()
            self._cv.notify_all()

    def _serve_once(self, loop: EngineLoop) -> bool:
        """Take queued requests and calls, run one step if there is work; False once shut down."""
        with self._cv:
            self._cv.wait_for(lambda: self._inbox or self._calls or self._closed or loop.has_work())
            items, self._inbox = self._inbox, []
            calls, self._calls = self._calls, []
            closing = self._closed
        for req, st in items:
            loop.enqueue(req)
            self._states[req.rid] = st
        for fn, box in calls:
            try:
                box["value"] = fn()
            except Exception as e:  # raised in the caller
                box["error"] = e
        if closing:  # abort what is in flight and step until the aborts are reported
            for rid in list(self._states):
                loop.abort(rid)
        outputs = loop.step() if loop.has_work() else []
        while closing and loop.has_work():
            outputs += loop.step()
        with self._cv:
            for call in calls:
                call[1]["done"] = True
            for out in outputs:
                st = self._states.get(out.rid)
                if st is None:
                    continue
                st.add(out)
                if out.finished:
                    del self._states[out.rid]
            if calls:
                self._cv.notify_all()
        return not closing

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the engine thread between steps and return its result (or raise its exception)."""
        box: dict[str, Any] = {}
        with self._cv:
            self._check_alive()
            self._calls.append((fn, box))
            self._cv.notify_all()
            self._cv.wait_for(lambda: "done" in box or self._error is not None)
        if "done" not in box:
            self._check_alive()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def _check_alive(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError("engine is shut down")

    # --- callers' side ----------------------------------------------------------------------------------
    def _submit(self, prompt, sampling_params, input_ids, icl=None, stream: bool = False,
                tenant: str | None = None, **request_fields) -> tuple[list[ReqState], bool]:
        self._check_alive()
        start = time.monotonic()  # latencies count validation and tokenization too
        inputs, single = normalize_inputs(self.tokenizer, prompt, input_ids, sampling_params, self.loop.context_len,
                                          icl, self.segment_encoder, **request_fields)
        if stream and len(inputs) != 1:
            raise ValueError("stream: streaming takes a single prompt")
        if self._omp is not None:
            self._omp.release()  # a caller thread that ran torch work since
        states, reqs = [], []
        for inp in inputs:
            sp = inp.sampling
            reqs.append(self.loop.make_request(inp.rid, inp.input_ids, sp, inp.icl, inp.logprob, inp.priority,
                                               ANONYMOUS_TENANT if tenant is None else tenant))  # ValueError: none queued
            detok = IncrementalDetokenizer(self.tokenizer, sp.skip_special_tokens, sp.stop, sp.no_stop_trim)
            states.append(ReqState(inp, detok, start, threading.Condition(self._lock), stream))
        with self._cv:
            self._check_alive()
            self._inbox.extend(zip(reqs, states))
            self._cv.notify_all()
        return states, single

    def _wait(self, st: ReqState) -> dict[str, Any]:
        """Block until `st` has new tokens (a stream) or has finished; the result with the text detokenized so far."""
        with self._lock:
            st.cv.wait_for(lambda: st.finished or self._error is not None
                           or (st.stream and len(st.output_ids) > st.seen))
            if self._error is not None and not st.finished:
                raise self._error
            output_ids, last, finished = list(st.output_ids), st.last, st.finished
            logprobs = st.logprobs.snapshot() if st.logprobs is not None else None
        delta = st.detok.add(output_ids[st.seen:])
        if finished:
            delta += st.detok.finish()
        st.seen = len(output_ids)
        st.text += delta
        return st.result(output_ids, last, delta, logprobs, self._token_text)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _wait_all(self, states: list[ReqState]) -> list[dict[str, Any]]:
        try:
            return [self._wait(st) for st in states]
        except BaseException:
            for st in states:
                self._abort_quietly(st.inp.rid)
            raise

    def _abort_quietly(self, rid: str) -> None:
        if self._error is None and not self._closed:
            self.abort(rid)

    # --- public API -------------------------------------------------------------------------------
    def generate(self, prompt: str | list[str] | None = None, sampling_params: dict | list[dict] | None = None,
                 input_ids: list[int] | list[list[int]] | None = None, stream: bool = False,
                 icl: dict | list[dict] | None = None, tenant: str | None = None, return_logprob=None,
                 logprob_start_len=None, top_logprobs_num=None, return_text_in_logprobs=None, priority=None):
        """Generate for one prompt (→ dict) or a batch (→ list of dicts, in order).

        Each dict: {"text", "output_ids", "meta_info": {"prompt_tokens", "completion_tokens", "cached_tokens",
        "finish_reason", "e2e_latency", "first_token_latency", ...}} (latencies in seconds from the call). With
        stream=True (single prompt), returns an iterator of dicts whose "text" is the text so far and "delta" the
        new part. Bad input raises ValueError naming the field, and nothing is queued. `icl` ({"instruction",
        "examples": [{"input", "output"}], "query", "refine": none|table|native}) renders an ICL prompt whose
        examples PAIR may reorder at admission; meta_info then carries icl_order, icl_substituted and icl_examples
        (sha256(input + "\n" + output)[:16] of each example of the final prompt). `tenant` (default: the anonymous
        tenant) scopes PAIR: a request is only given examples its own tenant sent. Safe to call from many threads.

        SGLang's request fields (each one value or a list with one per prompt): `return_logprob`,
        `logprob_start_len`, `top_logprobs_num`, `return_text_in_logprobs` (engine/logprob_options.py) put
        input_token_logprobs, output_token_logprobs, input_top_logprobs and output_top_logprobs in meta_info;
        `priority` (needs enable_priority_scheduling) orders admission, higher first.
        """
        states, single = self._submit(prompt, sampling_params, input_ids, icl, stream, tenant,
                                      return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                                      top_logprobs_num=top_logprobs_num,
                                      return_text_in_logprobs=return_text_in_logprobs, priority=priority)
        if stream:
            return self._stream(states[0])
        results = self._wait_all(states)
        for r in results:
            del r["delta"]
        return results[0] if single else results

    def _stream(self, st: ReqState) -> Iterator[dict]:
        try:
            while True:
                out = self._wait(st)
                yield out
                if out["meta_info"]["finish_reason"] is not None:  # the last snapshot held every token
                    return
        finally:
            if not st.finished:
                self._abort_quietly(st.inp.rid)

    async def async_generate(self, prompt=None, sampling_params=None, input_ids=None, icl=None, tenant=None,
                             **request_fields):
        """Async `generate` (non-streaming): the wait runs in a worker thread so the event loop stays free.
        `tenant` and `request_fields`: as generate's."""
        states, single = self._submit(prompt, sampling_params, input_ids, icl, tenant=tenant, **request_fields)
        try:
            results = await asyncio.to_thread(self._wait_all, states)
        except BaseException:
            for st in states:
                self._abort_quietly(st.inp.rid)
            raise
        for r in results:
            del r["delta"]
        return results[0] if single else results

    def abort(self, rid: str) -> None:
        self._call(lambda: self.loop.abort(rid))

    def get_stats(self) -> dict[str, Any]:
        return self._call(self.loop.stats)

    def update_config(self, **knobs: Any) -> dict[str, Any]:
        """Change live knobs (engine/knobs.py) between steps, dropping nothing. ValueError, nothing changed, on
        a bad knob. max_running_requests may only go down from the start value (request rows are preallocated)."""
        new = self._call(lambda: self.loop.update_config(knobs))
        self.args = self.loop.args
        return new

    def flush_cache(self) -> bool:
        """Drop every cached prefix; only when idle (returns False otherwise)."""
        return self._call(self.loop.flush_cache)

    def check_integrity(self) -> None:
        self._call(self.loop.scheduler.check_integrity)

    def shutdown(self) -> None:
        """Abort what is in flight, stop the engine thread, close the trace. Idempotent."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
        if self.loop is not None:
            self.loop.close()
        if self.recorder is not None:
            self.recorder.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
