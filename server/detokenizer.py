"""The detokenizer process: token ids from the scheduler → text deltas for the tokenizer manager.

One `IncrementalDetokenizer` per live request, created from the settings on the request's first TokenOut
and dropped when it finishes. Stop strings are cut here; the scheduler only decides *that* a request stopped.
A request whose decoding raises finishes with a status-500 error (the tokenizer manager then aborts it in the
scheduler) and its later outputs are dropped; other requests are untouched.
"""
from __future__ import annotations

import logging
import os
import signal
import traceback
from typing import Any

import zmq

from server.ipc import (IpcAddresses, parent_alive, pull_socket, push_socket, recv_all, report_startup_failure,
                        send)
from server.messages import BatchTextOut, BatchTokenOut, Ready, ShutdownReq, TextOut, TokenOut

IDLE_POLL_MS = 200

logger = logging.getLogger("pairserve.detokenizer")


class DetokenizerProcess:
    def __init__(self, tokenizer, addrs: IpcAddresses, parent_pid: int):
        self.tokenizer = tokenizer
        self.parent_pid = parent_pid
        self.ctx = zmq.Context()
        self.recv_sock = pull_socket(self.ctx, addrs.detokenizer)
        self.to_main = push_socket(self.ctx, addrs.tokenizer)
        self.states: dict[str, Any] = {}  # rid → IncrementalDetokenizer
        self.failed: set[str] = set()  # rids whose decoding failed; dropped when the scheduler finishes them
        self.stopping = False

    def _detokenizer_for(self, out: TokenOut):
        from engine.detokenize import IncrementalDetokenizer

        state = self.states.get(out.rid)
        if state is None:
            p = out.detok or {}
            state = IncrementalDetokenizer(self.tokenizer, p.get("skip_special_tokens", True),
                                           tuple(p.get("stop") or ()), p.get("no_stop_trim", False))
            self.states[out.rid] = state
        return state

    def convert(self, out: TokenOut) -> TextOut | None:
        """The text delta for one TokenOut, or None when the request already failed here."""
        if out.rid in self.failed:
            if out.finished:
                self.failed.discard(out.rid)
            return None
        reason = out.finish_reason
        try:
            detok = self._detokenizer_for(out)
            text = detok.add(out.new_token_ids)
            if out.finished:
                text += detok.finish()
        except Exception as e:
            logger.error("detokenizer: request %s failed:\n%s", out.rid, traceback.format_exc())
            self.states.pop(out.rid, None)
            if not out.finished:
                self.failed.add(out.rid)
            return TextOut(out.rid, "", list(out.new_token_ids), True,
                           {"type": "abort", "matched": None, "message": f"detokenizer error: {e}",
                            "status_code": 500}, out.prompt_tokens, out.completion_tokens, out.cached_tokens,
                           out.extra)
        if out.finished:
            self.states.pop(out.rid, None)
        return TextOut(out.rid, text, list(out.new_token_ids), out.finished, reason, out.prompt_tokens,
                       out.completion_tokens, out.cached_tokens, out.extra, out.logprobs)

    def handle(self, msg: Any) -> None:
        if isinstance(msg, BatchTokenOut):
            texts = [t for t in (self.convert(o) for o in msg.outputs) if t is not None]
            if texts:
                send(self.to_main, BatchTextOut(texts))
        elif isinstance(msg, ShutdownReq):
            self.stopping = True
        else:
            logger.warning("detokenizer: ignoring unexpected message %s", type(msg).__name__)

    def run(self) -> None:
        send(self.to_main, Ready("detokenizer", os.getpid()))
        while not self.stopping and parent_alive(self.parent_pid):
            for msg in recv_all(self.recv_sock, IDLE_POLL_MS):
                self.handle(msg)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def run_detokenizer_process(model_path: str, addrs_dict: dict[str, str], parent_pid: int, log_level: str) -> None:
    """Entry point of the spawned process. Exits 0 on ShutdownReq or when the parent is gone, 1 on failure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates shutdown
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    addrs = IpcAddresses.from_dict(addrs_dict)
    try:
        from engine.models.loader import load_tokenizer

        proc = DetokenizerProcess(load_tokenizer(model_path), addrs, parent_pid)
    except Exception as e:
        logger.critical("detokenizer: failed to start:\n%s", traceback.format_exc())
        report_startup_failure(addrs, "detokenizer", e)
        raise SystemExit(1)
    try:
        proc.run()
    except Exception:
        logger.critical("detokenizer: fatal error, exiting:\n%s", traceback.format_exc())
        raise SystemExit(1)
    finally:
        proc.close()
