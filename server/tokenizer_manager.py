"""TokenizerManager: the main process's side of the engine — tokenize, submit, route outputs back to requests.

It validates and tokenizes with `engine.request_input.normalize_inputs` (the same rules as the in-process
Engine), sends `GenerateReq`s to the scheduler, and keeps rid → request state. One receive task reads the
PULL socket every child writes to: text deltas go to the owning `RequestGroup`'s queue, stats and control
replies resolve futures. After `fail_all` (a child died, or shutdown) every waiting caller gets an APIError
and new submissions get 503.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import zmq
import zmq.asyncio

from server.errors import APIError
from server.ipc import IpcAddresses, pull_socket, push_socket, send
from server.messages import (AbortReq, BatchTextOut, ChildFailed, FlushCacheOut, FlushCacheReq, GenerateReq, Ready,
                             ShutdownReq, StatsOut, StatsReq, TextOut, UpdateConfigOut, UpdateConfigReq, decode)
from server.metrics import ServerMetrics
from server.request_group import ReqEvent, RequestGroup

REPLY_TIMEOUT_S = 10.0

logger = logging.getLogger("pairserve.server")


@dataclass
class _ReqState:
    group: RequestGroup
    index: int
    arrival: float
    last_output: float | None = None
    first_output: float | None = None


class TokenizerManager:
    def __init__(self, addrs: IpcAddresses, metrics: ServerMetrics, args, tokenizer=None):
        """Binds the receive socket at once (create this before the children start, so a child's first
        message always has a reader). `tokenizer` may be set later, before any request is served.
        `args` (ServerArgs) is kept current through `update_config`."""
        self.tokenizer = tokenizer
        self._segment_encoder = None  # over self.tokenizer: ICL heads' and examples' tokens, memoised
        self.metrics = metrics
        self.args = args
        self.max_running_cap = args.max_running_requests  # request rows are preallocated at this size
        self.context_len = 0  # known once the scheduler is ready
        self.actx = zmq.asyncio.Context()
        self.sctx = zmq.Context()
        self.recv_sock = pull_socket(self.actx, addrs.tokenizer)
        self.to_scheduler = push_socket(self.sctx, addrs.scheduler)
        self.to_detokenizer = push_socket(self.sctx, addrs.detokenizer)
        self.states: dict[str, _ReqState] = {}
        self.replies: dict[int, asyncio.Future] = {}
        self.seq = itertools.count(1)
        self.dead_reason: str | None = None
        self.dead_status = 503
        self.ready_info: dict[str, Ready] = {}
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    # --- startup --------------------------------------------------------------------------------------
    async def wait_ready(self, names: set[str], check_alive: Callable[[], None], timeout_s: float) -> None:
        """Wait for a Ready from each named child. Raises RuntimeError if one fails, dies, or time runs out."""
        deadline = time.monotonic() + timeout_s
        while set(self.ready_info) != names:
            if time.monotonic() > deadline:
                missing = sorted(names - set(self.ready_info))
                raise RuntimeError(f"children not ready after {timeout_s:.0f} s: missing {missing}")
            try:
                check_alive()
            except RuntimeError:
                # A child that failed says why just before exiting: prefer its message to a bare exit code.
                await self._recv_startup_message(200)
                raise
            await self._recv_startup_message(500)
        self.context_len = self.ready_info["scheduler"].info["context_len"]

    async def _recv_startup_message(self, timeout_ms: int) -> None:
        if not await self.recv_sock.poll(timeout_ms, zmq.POLLIN):
            return
        msg = decode(await self.recv_sock.recv())
        if isinstance(msg, ChildFailed):
            raise RuntimeError(f"{msg.who} failed to start: {msg.message}")
        if isinstance(msg, Ready):
            self.ready_info[msg.who] = msg
        elif isinstance(msg, StatsOut) and msg.seq == 0:
            self.metrics.scheduler_stats = msg.stats

    # --- submitting -----------------------------------------------------------------------------------
    async def tokenize(self, prompt=None, input_ids=None, sampling_params=None, icl=None):
        """normalize_inputs with this server's tokenizer and context: (list[RequestInput], single).

        Runs on the manager's single worker thread: a long prompt does not stall other requests' streams, and
        the tokenizer (HF tokenizers are not safe to share between threads) is only ever used by that thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self.worker, self._tokenize, prompt, input_ids, sampling_params, icl)

    async def render_chat(self, messages: list[dict[str, Any]], continue_final_message: bool = False,
                          template_kwargs: dict[str, Any] | None = None) -> str:
        """The chat template applied to `messages` (on the worker thread); ValueError naming 'messages'.

        continue_final_message: the last (assistant) message stays open for the model to continue, instead of a
        new assistant turn being opened. template_kwargs: extra variables for the template (tools among them)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.worker, self._apply_chat_template, messages, continue_final_message, template_kwargs or {})

    async def on_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the worker thread that owns the tokenizer (e.g. /tokenize, /detokenize)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    def _tokenize(self, prompt, input_ids, sampling_params, icl):
        from engine.pair.render import SegmentEncoder
        from engine.request_input import normalize_inputs

        if icl is not None:
            if self._segment_encoder is None or self._segment_encoder.tokenizer is not self.tokenizer:
                self._segment_encoder = SegmentEncoder(self.tokenizer)
            return normalize_inputs(self.tokenizer, prompt, input_ids, sampling_params, self.context_len,
                                    icl=icl, encoder=self._segment_encoder)
        return normalize_inputs(self.tokenizer, prompt, input_ids, sampling_params, self.context_len)

    def _apply_chat_template(self, messages: list[dict[str, Any]], continue_final_message: bool,
                             template_kwargs: dict[str, Any]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("messages: this model has no chat template; use /v1/completions")
        if continue_final_message and messages[-1].get("role") != "assistant":
            raise ValueError("continue_final_message: the last message must be the assistant's")
        try:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=not continue_final_message, tokenize=False,
                continue_final_message=continue_final_message, **template_kwargs)
        except Exception as e:  # template errors are the client's messages not fitting the template
            raise ValueError(f"messages: the chat template rejected them ({e})") from None

    def submit(self, inputs: list, public_ids: list[str] | None = None) -> RequestGroup:
        """Queue validated RequestInputs (engine.request_input) as one group; 503 once the engine is gone.

        `public_ids`: the id a client knows each request by (its `rid`, or the response id), for
        /abort_request and logs; default the engine rids."""
        if self.dead_reason is not None:
            raise APIError(self.dead_status, self.dead_reason)
        group = RequestGroup(self.abort, [inp.rid for inp in inputs], public_ids)
        now = time.monotonic()
        for index, inp in enumerate(inputs):
            self.states[inp.rid] = _ReqState(group, index, now)
            icl = dataclasses.asdict(inp.icl) if getattr(inp, "icl", None) is not None else None
            send(self.to_scheduler, GenerateReq(inp.rid, list(inp.input_ids), dataclasses.asdict(inp.sampling), icl))
        return group

    def abort(self, rid: str) -> None:
        if self.states.pop(rid, None) is not None and self.dead_reason is None:
            send(self.to_scheduler, AbortReq(rid))

    def abort_request(self, rid: str | None, abort_all: bool = False) -> int:
        """SGLang's /abort_request: end the requests whose public id or engine rid is `rid` (or every request
        with `abort_all`) as finished with reason abort, and free them in the scheduler. Returns how many."""
        matched = [(r, st) for r, st in self.states.items()
                   if abort_all or r == rid or st.group.public_ids[st.index] == rid]
        reason = {"type": "abort", "matched": None, "message": "aborted by /abort_request"}
        for r, st in matched:
            st.group.queue.put_nowait(ReqEvent(st.index, "", [], True, reason, 0, 0, 0, None, None))
            self.abort(r)
        return len(matched)

    # --- control requests -----------------------------------------------------------------------------
    async def _ask(self, make_msg: Callable[[int], Any]) -> Any:
        if self.dead_reason is not None:
            raise APIError(self.dead_status, self.dead_reason)
        seq = next(self.seq)
        fut = asyncio.get_running_loop().create_future()
        self.replies[seq] = fut
        send(self.to_scheduler, make_msg(seq))
        try:
            return await asyncio.wait_for(fut, REPLY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise APIError(503, "the scheduler did not answer in time") from None
        finally:
            self.replies.pop(seq, None)

    async def get_stats(self) -> dict[str, Any]:
        return (await self._ask(StatsReq)).stats

    async def flush_cache(self) -> FlushCacheOut:
        if self.states:
            return FlushCacheOut(0, False, "requests are in flight; flush the cache when the server is idle")
        return await self._ask(FlushCacheReq)

    async def update_config(self, knobs: dict[str, Any]) -> dict[str, Any]:
        """Apply live knobs in the scheduler; ValueError naming the knob (and nothing changes) if one is bad.
        Returns every live knob's value afterwards."""
        from engine.knobs import apply_knobs

        new_args = apply_knobs(self.args, knobs, self.max_running_cap)
        out = await self._ask(lambda seq: UpdateConfigReq(seq, knobs))
        if not out.success:
            raise ValueError(out.message)
        self.args = new_args
        return out.knobs

    # --- receiving ------------------------------------------------------------------------------------
    async def recv_loop(self) -> None:
        """Runs for the server's lifetime: route every message from the children."""
        while True:
            data = await self.recv_sock.recv()
            try:
                msg = decode(data)
            except ValueError as e:
                logger.error("dropping a bad message: %s", e)
                continue
            if isinstance(msg, BatchTextOut):
                now = time.monotonic()
                for out in msg.outputs:
                    self._on_output(out, now)
            elif isinstance(msg, StatsOut):
                if msg.seq == 0:
                    self.metrics.scheduler_stats = msg.stats
                self._resolve(msg.seq, msg)
            elif isinstance(msg, (FlushCacheOut, UpdateConfigOut)):
                self._resolve(msg.seq, msg)
            elif isinstance(msg, ChildFailed):
                logger.error("%s (pid %d) failed: %s", msg.who, msg.pid, msg.message)

    def _resolve(self, seq: int, msg: Any) -> None:
        fut = self.replies.get(seq)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _on_output(self, out: TextOut, now: float) -> None:
        st = self.states.get(out.rid)
        if st is None:
            return  # aborted: its last outputs are still in flight
        since_last = None if st.last_output is None else now - st.last_output
        self.metrics.observe_output(len(out.new_token_ids), now - st.arrival, since_last)
        if out.new_token_ids:
            st.last_output = now
            if st.first_output is None:
                st.first_output = now
        error = None
        reason = out.finish_reason or {}
        if out.finished:
            del self.states[out.rid]
            status = reason.get("status_code")
            if reason.get("type") == "abort":
                # Aborts the server asked for never get here (their state is gone first): this one is an engine
                # error or the engine giving up on the request; make sure the scheduler has let it go.
                send(self.to_scheduler, AbortReq(out.rid))
                error = APIError(status or 500, reason.get("message") or "request aborted by the engine")
            else:
                self.metrics.observe_finished(now - st.arrival, out.prompt_tokens, reason.get("type", "stop"),
                                              out.cached_tokens)
            if self.args.log_requests and st.group.log_requests:
                self._log_request(out, st, now, error)
        st.group.queue.put_nowait(ReqEvent(st.index, out.text, list(out.new_token_ids), out.finished,
                                           out.finish_reason, out.prompt_tokens, out.completion_tokens,
                                           out.cached_tokens, out.extra, error))

    @staticmethod
    def _log_request(out: TextOut, st: _ReqState, now: float, error: APIError | None) -> None:
        """--log-requests: one line per finished request (its id as the client knows it, lengths, timings)."""
        ttft = "-" if st.first_output is None else f"{st.first_output - st.arrival:.3f}s"
        outcome = f"error {error.status}: {error.message}" if error else (out.finish_reason or {}).get("type", "stop")
        logger.info("request %s finished (%s): prompt_tokens=%d cached_tokens=%d completion_tokens=%d ttft=%s "
                    "e2e=%.3fs", st.group.public_ids[st.index], outcome, out.prompt_tokens, out.cached_tokens,
                    out.completion_tokens, ttft, now - st.arrival)

    # --- failure and shutdown -------------------------------------------------------------------------
    def fail_all(self, status: int, reason: str) -> None:
        """Stop serving: every in-flight request and control call fails with `status`, later ones too."""
        if self.dead_reason is None:
            self.dead_reason, self.dead_status = reason, status
        for rid, st in list(self.states.items()):
            st.group.queue.put_nowait(ReqEvent(st.index, "", [], True, None, 0, 0, 0, None,
                                               APIError(status, reason)))
            try:
                send(self.to_scheduler, AbortReq(rid))
            except zmq.ZMQError:
                pass
        self.states.clear()
        for fut in self.replies.values():
            if not fut.done():
                fut.set_exception(APIError(status, reason))

    def shutdown_children(self) -> None:
        for sock in (self.to_scheduler, self.to_detokenizer):
            try:
                send(sock, ShutdownReq("server exiting"))
            except zmq.ZMQError:
                pass

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.actx.destroy(linger=0)
        self.sctx.destroy(linger=0)
