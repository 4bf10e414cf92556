"""The engine requests behind one HTTP request, and the events they produce.

A `RequestGroup` holds the rids of one HTTP request (prompts × n choices); the tokenizer manager puts each
request's step output on the group's single queue as a `ReqEvent` tagged with its index (the choice index).
Consumers either iterate `events()` (streaming) or `collect()` the finished results.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from server.errors import APIError

DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks whether its client went away


@dataclass
class ReqEvent:
    """One step of one engine request, addressed by its index in the group (choice index)."""

    index: int
    delta: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    extra: dict[str, Any] | None = None
    error: APIError | None = None


@dataclass
class ReqResult:
    """A finished engine request, as `RequestGroup.collect` returns it."""

    text: str
    output_ids: list[int]
    finish_reason: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    extra: dict[str, Any] | None
    e2e_latency: float


class RequestGroup:
    """The engine requests behind one HTTP request (prompts × n); their events share one queue."""

    def __init__(self, abort_rid: Callable[[str], None], rids: list[str], public_ids: list[str] | None = None):
        """`abort_rid(rid)` aborts one engine request (the tokenizer manager's `abort`)."""
        self.abort_rid = abort_rid
        self.rids = rids
        self.public_ids = list(rids) if public_ids is None else public_ids  # what the client calls each request
        self.log_requests = True  # False: left out of --log-requests (SGLang's no_logs)
        self.queue: asyncio.Queue[ReqEvent] = asyncio.Queue()
        self.finished = [False] * len(rids)
        self.created = time.monotonic()

    @property
    def done(self) -> bool:
        return all(self.finished)

    async def events(self) -> AsyncIterator[ReqEvent]:
        """Every event until each request has finished; an error event ends the iteration after it is yielded."""
        while not self.done:
            ev = await self.queue.get()
            self.finished[ev.index] = self.finished[ev.index] or ev.finished
            yield ev
            if ev.error is not None:
                return

    def abort(self) -> None:
        """Abort every request of the group that has not finished (idempotent)."""
        for i, rid in enumerate(self.rids):
            if not self.finished[i]:
                self.finished[i] = True
                self.abort_rid(rid)

    async def collect(self, is_disconnected: Callable[[], Awaitable[bool]]) -> list[ReqResult]:
        """Wait for all results; raise the first error. Checks `is_disconnected` every DISCONNECT_POLL_S and
        aborts the group (and raises) when the client has gone; unfinished requests are aborted on any exit."""
        texts: list[list[str]] = [[] for _ in self.rids]
        ids: list[list[int]] = [[] for _ in self.rids]
        results: list[ReqResult | None] = [None] * len(self.rids)
        next_check = time.monotonic() + DISCONNECT_POLL_S
        try:
            while not self.done:
                try:
                    ev = await asyncio.wait_for(self.queue.get(), max(0.0, next_check - time.monotonic()))
                except asyncio.TimeoutError:
                    ev = None
                # Check on a clock, not only when idle: a request that keeps producing tokens never goes quiet.
                if time.monotonic() >= next_check:
                    if await is_disconnected():
                        raise APIError(499, "client disconnected")
                    next_check = time.monotonic() + DISCONNECT_POLL_S
                if ev is None:
                    continue
                if ev.error is not None:
                    raise ev.error
                texts[ev.index].append(ev.delta)
                ids[ev.index].extend(ev.new_token_ids)
                if ev.finished:
                    self.finished[ev.index] = True
                    results[ev.index] = ReqResult("".join(texts[ev.index]), ids[ev.index], ev.finish_reason,
                                                  ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens,
                                                  ev.extra, time.monotonic() - self.created)
        finally:
            self.abort()
        return results  # type: ignore[return-value]
