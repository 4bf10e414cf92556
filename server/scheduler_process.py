"""The scheduler process: owns the EngineLoop (model, KV pool, radix cache) and runs the engine step.

Loop: take every pending message (waiting up to IDLE_POLL_MS only when there is no work) → `loop.step()` →
send the step's outputs to the detokenizer. Per-request failures never end the process: a request the engine
rejects (`add` raises) finishes at once with an error carrying status 400; an exception inside a step fails
every unfinished request with status 500 (the step does not say which request failed) and the loop goes on —
if the failure left the KV accounting inconsistent, the scheduler state is rebuilt from scratch. Only
MAX_CONSECUTIVE_STEP_FAILURES failed steps in a row, or the parent's death, end the process.
"""
from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from typing import Any

import zmq

from engine.scheduler.finish import ENGINE_ERROR_PREFIX

from server.ipc import (IpcAddresses, parent_alive, pull_socket, push_socket, recv_all, report_startup_failure,
                        send)
from server.batch_log import BatchLogger, KvState
from server.messages import (AbortReq, BatchTokenOut, FlushCacheOut, FlushCacheReq, GenerateReq, Ready, ShutdownReq,
                             StatsOut, StatsReq, TokenOut, UpdateConfigOut, UpdateConfigReq)

IDLE_POLL_MS = 200  # how long an idle loop waits for a message before re-checking its parent
STATS_INTERVAL_S = 0.5  # periodic stats push for /metrics gauges
MAX_CONSECUTIVE_STEP_FAILURES = 3  # after this many failed steps in a row the engine state is not trusted

logger = logging.getLogger("pairserve.scheduler")


def icl_from_wire(d: dict[str, Any] | None):
    """Rebuild an engine.pair.render.IclPrompt from its dataclasses.asdict form (None stays None)."""
    if d is None:
        return None
    from engine.pair.render import IclExample, IclPrompt

    examples = tuple(IclExample(e["id"], e["input"], e["output"], tuple(e["ids"])) for e in d["examples"])
    return IclPrompt(tuple(d["head_ids"]), examples, tuple(d["tail_ids"]), d["refine"])


def error_reason(message: str, status_code: int) -> dict[str, Any]:
    return {"type": "abort", "matched": None, "message": message, "status_code": status_code}


class SchedulerProcess:
    def __init__(self, args, model_path: str, addrs: IpcAddresses, parent_pid: int):
        from engine.loop import EngineLoop
        from engine.models.loader import load_tokenizer
        from engine.trace_recorder import open_trace_recorder

        self.args = args
        self.parent_pid = parent_pid
        self.recorder = open_trace_recorder(args)  # --trace-file; closed by close()
        try:
            self.loop = EngineLoop(args, model_path, load_tokenizer(model_path), self.recorder)
        except BaseException:
            if self.recorder is not None:
                self.recorder.close()
            raise
        self.ctx = zmq.Context()
        self.recv_sock = pull_socket(self.ctx, addrs.scheduler)
        self.to_detok = push_socket(self.ctx, addrs.detokenizer)
        self.to_main = push_socket(self.ctx, addrs.tokenizer)
        self.detok_params: dict[str, dict[str, Any] | None] = {}  # rid → sent with its first TokenOut, then None
        self.errors: dict[str, str] = {}  # rid → engine error message, for requests aborted by a failed step
        self.failed_steps = 0
        self.last_stats_at = 0.0
        self.stopping = False
        self.batch_log = BatchLogger(self.kv_state, logger)

    # --- stats ------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {**self.loop.stats(), "scheduler_pid": os.getpid()}

    def kv_state(self) -> KvState:
        sch = self.loop.scheduler
        kv, tree = sch.kv, sch.kv.tree
        used = kv.capacity - kv.allocator.num_free - (tree.evictable_size if tree else 0)
        return KvState(len(sch.running) + (sch.chunked is not None), len(sch.waiting), used, kv.capacity)

    def push_stats_if_due(self) -> None:
        now = time.monotonic()
        if now - self.last_stats_at >= STATS_INTERVAL_S:
            self.last_stats_at = now
            send(self.to_main, StatsOut(0, self.stats()))

    # --- messages ---------------------------------------------------------------------------------------
    def handle(self, msg: Any) -> None:
        if isinstance(msg, GenerateReq):
            self.add(msg)
        elif isinstance(msg, AbortReq):
            self.loop.abort(msg.rid)
        elif isinstance(msg, StatsReq):
            send(self.to_main, StatsOut(msg.seq, self.stats()))
        elif isinstance(msg, FlushCacheReq):
            send(self.to_main, self.flush_cache(msg.seq))
        elif isinstance(msg, UpdateConfigReq):
            send(self.to_main, self.update_config(msg))
        elif isinstance(msg, ShutdownReq):
            self.stopping = True
        else:
            logger.warning("scheduler: ignoring unexpected message %s", type(msg).__name__)

    def add(self, msg: GenerateReq) -> None:
        from engine.sampling_params import SamplingParams

        detok = {"skip_special_tokens": msg.sampling.get("skip_special_tokens", True),
                 "stop": list(msg.sampling.get("stop") or ()), "no_stop_trim": msg.sampling.get("no_stop_trim", False)}
        try:
            from engine.logprob_options import LogprobOptions

            sampling = SamplingParams.from_dict(msg.sampling)
            icl = icl_from_wire(msg.icl)
            logprob = LogprobOptions(**msg.logprob) if msg.logprob is not None else None
            self.loop.add(msg.rid, msg.input_ids, sampling, icl=icl, logprob=logprob, priority=msg.priority,
                          tenant=msg.tenant)
        except Exception as e:  # a bad request must not take the engine down
            status = 400 if isinstance(e, ValueError) else 500
            if status == 500:
                logger.error("scheduler: add(%s) failed:\n%s", msg.rid, traceback.format_exc())
            out = TokenOut(msg.rid, [], True, error_reason(str(e), status), len(msg.input_ids), 0, 0, None, detok)
            send(self.to_detok, BatchTokenOut([out]))
            return
        self.detok_params[msg.rid] = detok

    def flush_cache(self, seq: int) -> FlushCacheOut:
        if not self.loop.flush_cache():
            return FlushCacheOut(seq, False, "requests are in flight; flush the cache when the server is idle")
        return FlushCacheOut(seq, True)

    def update_config(self, msg: UpdateConfigReq) -> UpdateConfigOut:
        """Apply live knobs between steps (as Engine.update_config); nothing changes on a bad knob."""
        try:
            knobs = self.loop.update_config(msg.knobs)
        except ValueError as e:
            return UpdateConfigOut(msg.seq, False, str(e))
        self.args = self.loop.args
        return UpdateConfigOut(msg.seq, True, "", knobs)

    # --- the engine step --------------------------------------------------------------------------------
    def step(self) -> None:
        try:
            outputs = self.loop.step()
        except Exception:
            self.on_step_failure(traceback.format_exc())
            return
        self.batch_log.on_step(self.loop.last_batch)
        self.failed_steps = self.loop.failed_steps  # forward failures: the loop aborted their batch itself
        if self.failed_steps >= MAX_CONSECUTIVE_STEP_FAILURES:
            raise RuntimeError(f"engine step failed {self.failed_steps} times in a row")
        if outputs:
            send(self.to_detok, BatchTokenOut([self.to_token_out(o) for o in outputs]))

    def on_step_failure(self, tb: str) -> None:
        """Fail the requests the step may have touched; keep serving unless failures repeat."""
        logger.error("scheduler: engine step failed:\n%s", tb)
        self.failed_steps += 1
        if self.failed_steps >= MAX_CONSECUTIVE_STEP_FAILURES:
            raise RuntimeError(f"engine step failed {self.failed_steps} times in a row")
        message = "engine error: " + tb.strip().splitlines()[-1]
        try:
            self.loop.scheduler.check_integrity()
        except AssertionError:
            # The failed step left requests outside the scheduler's queues (admitted into a batch that never
            # came back) and their KV unaccounted: start over with a fresh scheduler state.
            self.reset_engine_state(message)
            return
        # Consistent state: abort what is live; the abort outputs (carrying the error) come with the next step.
        for req in self.loop.scheduler.live_reqs():
            self.errors[req.rid] = message
            self.loop.abort(req.rid)

    def reset_engine_state(self, message: str) -> None:
        """Fail every unfinished request with `message` and replace the scheduler (empty queues, all KV free,
        prefix cache dropped; the cumulative stats carry over)."""
        from engine.scheduler import Scheduler

        old = self.loop.scheduler
        fresh = Scheduler(self.args, self.loop.runner.num_slots, self.loop.context_len, old.decode_fn)
        fresh.stats = old.stats
        self.loop.scheduler = fresh
        outs = [TokenOut(rid, [], True, error_reason(message, 500), 0, 0, 0, None, detok)
                for rid, detok in self.detok_params.items()]
        self.detok_params.clear()
        self.errors.clear()
        logger.error("scheduler: state reset after a failed step; %d request(s) failed", len(outs))
        if outs:
            send(self.to_detok, BatchTokenOut(outs))

    def to_token_out(self, o) -> TokenOut:
        reason = o.finish_reason
        if o.finished and o.rid in self.errors:
            reason = error_reason(self.errors.pop(o.rid), 500)
        elif reason and reason.get("type") == "abort" and (reason.get("message") or "").startswith(ENGINE_ERROR_PREFIX):
            reason = error_reason(reason["message"], 500)
        detok = self.detok_params.get(o.rid)
        if o.finished:
            self.detok_params.pop(o.rid, None)
        elif detok is not None:
            self.detok_params[o.rid] = None  # sent once; the key stays until the request finishes
        return TokenOut(o.rid, list(o.new_token_ids), o.finished, reason, o.prompt_tokens, o.completion_tokens,
                        o.cached_tokens, o.extra or None, detok, o.logprobs)

    def run(self) -> None:
        send(self.to_main, Ready("scheduler", os.getpid(), {
            "context_len": self.loop.context_len, "kv_capacity_tokens": self.loop.scheduler.kv.capacity}))
        while not self.stopping and parent_alive(self.parent_pid):
            busy = self.loop.has_work()
            for msg in recv_all(self.recv_sock, 0 if busy else IDLE_POLL_MS):
                self.handle(msg)
            if self.loop.has_work():
                self.step()
            else:
                self.batch_log.flush()
            self.push_stats_if_due()

    def close(self) -> None:
        self.loop.close()  # the last KV events, if published
        if self.recorder is not None:
            self.recorder.close()
        self.ctx.destroy(linger=0)


def run_scheduler_process(args_dict: dict[str, Any], model_path: str, addrs_dict: dict[str, str],
                          parent_pid: int) -> None:
    """Entry point of the spawned process. Exits 0 on ShutdownReq or when the parent is gone, 1 on failure."""
    from engine.config import ServerArgs

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent coordinates exit
    args = ServerArgs(**args_dict)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    addrs = IpcAddresses.from_dict(addrs_dict)
    try:
        proc = SchedulerProcess(args, model_path, addrs, parent_pid)
    except Exception as e:
        logger.critical("scheduler: failed to start:\n%s", traceback.format_exc())
        report_startup_failure(addrs, "scheduler", e)
        raise SystemExit(1)
    try:
        proc.run()
    except Exception:
        logger.critical("scheduler: fatal error, exiting:\n%s", traceback.format_exc())
        raise SystemExit(1)
    finally:
        proc.close()
