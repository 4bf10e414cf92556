"""The engine step shared by `Engine` and the server's scheduler process: schedule → run → process results.

I/O is not here: callers feed requests in with `add`/`abort` and take `StepOutput`s from `step()`. The one
output besides those, a trace of finished requests, goes to a `TraceRecorder` the caller opens, passes in and
closes (engine/trace_recorder.py). It records every request that finishes normally (stop or length) with the
prompt the engine ran; aborted requests (client abort, engine error, KV pool too small) are skipped and only
counted (`recorder.skipped`), since their output length says nothing about the request.
"""
from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

from engine.config import ServerArgs
from engine.grammar import GrammarBackend
from engine.knobs import LIVE_KNOBS, apply_knobs
from engine.logprob_options import LogprobOptions
from engine.kv_events.publisher import open_kv_event_stream
from engine.model_runner import ModelRunner
from engine.sampling_params import SamplingParams
from engine.pair.refiner import ANONYMOUS_TENANT
from engine.pair.render import IclPrompt
from engine.radix_cache import make_eviction_policy
from engine.scheduler import Req, Scheduler, StepOutput
from engine.scheduler.finish import ENGINE_ERROR_PREFIX
from engine.scheduler.request import FinishKind
from engine.trace_recorder import TraceRecorder


logger = logging.getLogger(__name__)

GRAMMAR_WAIT_S = 0.01  # an idle step waits this long at most for a compiling grammar


class EngineLoop:
    def __init__(self, args: ServerArgs, model_path: str, tokenizer, recorder: TraceRecorder | None = None):
        self.args = args
        self.recorder = recorder
        self.runner = ModelRunner(args, model_path)
        self.tokenizer = tokenizer
        self.context_len = self.runner.context_len
        try:
            self.scheduler = Scheduler(args, self.runner.num_slots, self.context_len, self._decode_tail)
            # --kv-events-config: the tree's changes go out as vLLM KV events, one batch per step; close() ends it
            self.kv_events = open_kv_event_stream(args.kv_events, self.scheduler.kv.tree)
        except BaseException:
            self.runner.close()  # tensor-parallel workers must not outlive a failed start
            raise
        self.eos_token_ids = self._eos_ids(tokenizer)
        self._rng = random.Random(args.seed)
        self.failed_steps = 0  # consecutive steps whose forward raised (their requests were aborted)
        self._grammar_backend: GrammarBackend | None = None
        self.last_batch = None  # the batch the last step ran (None: it found nothing to run), for batch logs

    def _decode_tail(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _eos_ids(self, tokenizer) -> tuple[int, ...]:
        ids = set(self.runner.model_config.eos_token_ids)
        if getattr(tokenizer, "eos_token_id", None) is not None:
            ids.add(tokenizer.eos_token_id)
        return tuple(sorted(ids))

    def add(self, rid: str, input_ids: list[int], sampling: SamplingParams, icl: IclPrompt | None = None,
            logprob: LogprobOptions | None = None, priority: int | None = None,
            tenant: str = ANONYMOUS_TENANT) -> None:
        """Queue one request. Raises ValueError (naming the field) if it cannot run; nothing is queued then.

        With `icl`, input_ids is its unrefined assembly; PAIR may rewrite it when the request is admitted."""
        self.enqueue(self.make_request(rid, input_ids, sampling, icl, logprob, priority, tenant))

    def make_request(self, rid: str, input_ids: list[int], sampling: SamplingParams,
                     icl: IclPrompt | None = None, logprob: LogprobOptions | None = None,
                     priority: int | None = None, tenant: str = ANONYMOUS_TENANT) -> Req:
        """A validated Req, not yet queued (ValueError naming the field if it can never run). Touches no queue
        state, so a caller may build requests while another thread runs a step. A constrained request starts
        compiling its grammar here (on the grammar thread). `tenant` scopes the request's PAIR examples (and,
        with isolate_prefix_cache, its radix prefixes) to that tenant."""
        if not isinstance(tenant, str) or not tenant:
            raise ValueError("tenant: must be a non-empty string")
        sampling.validate()
        if logprob is not None:
            logprob.check_prompt(len(input_ids))
            if logprob.wants_input and self.args.tp_size > 1:  # worker ranks compute last-token logits only
                raise ValueError("logprob_start_len: prompt logprobs are not available with tp_size > 1")
        if priority is not None:
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise ValueError(f"priority: must be an integer (got {priority!r})")
            if not self.args.enable_priority_scheduling:
                raise ValueError("priority: priority scheduling is off on this server "
                                 "(start it with --enable-priority-scheduling)")
        seed = sampling.seed if sampling.seed is not None else self._rng.getrandbits(63)
        req = Req(rid=rid, input_ids=list(input_ids), sampling=sampling, eos_token_ids=self.eos_token_ids,
                  seed=seed, icl=icl, logprob=logprob, priority=priority or 0, tenant=tenant)
        self.scheduler.check_new(req)
        if sampling.grammar_key is not None:
            req.grammar = self.grammar_backend().state_for(*sampling.grammar_key)
        return req

    def grammar_backend(self) -> GrammarBackend:
        """The xgrammar compiler, made on the first constrained request (its vocabulary scan takes a while)."""
        if self._grammar_backend is None:
            self._grammar_backend = GrammarBackend(self.tokenizer, self.runner.model_config.vocab_size,
                                                   self.eos_token_ids)
        return self._grammar_backend

    def enqueue(self, req: Req) -> None:
        """Queue a request from make_request (between steps)."""
        self.scheduler.add(req)

    def abort(self, rid: str) -> None:
        self.scheduler.abort(rid)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[StepOutput]:
        outputs = self._step()
        if self.kv_events is not None:
            self.kv_events.flush()
        return outputs

    def close(self) -> None:
        """Publish the last KV events, close the publisher, stop the other tensor-parallel ranks and the grammar
        compiler thread. Idempotent."""
        if self.kv_events is not None:
            self.kv_events.close()
            self.kv_events = None
        if self._grammar_backend is not None:
            self._grammar_backend.shutdown()
            self._grammar_backend = None
        self.runner.close()

    def _step(self) -> list[StepOutput]:
        batch = self.last_batch = self.scheduler.schedule()
        try:
            result = self.runner.run(batch) if batch is not None else None
        except Exception as e:  # a failed forward must not strand the batch's requests and their KV
            self.failed_steps += 1
            logger.exception("model runner failed; aborting the %d request(s) of this batch", batch.batch_size)
            self.scheduler.abort_batch(batch, f"{ENGINE_ERROR_PREFIX}{type(e).__name__}: {e}")
            return self._record_finished(self.scheduler.process_results(None, None), [])
        self.failed_steps = 0
        if result is None:
            compiling = self.scheduler.compiling_grammars()
            if compiling and not self.scheduler.running:
                compiling[0].wait(GRAMMAR_WAIT_S)  # nothing to run until a grammar compiles: do not spin
            return self._record_finished(self.scheduler.process_results(None, None), [])
        return self._record_finished(self.scheduler.process_results(batch, result.next_ids, result.logprobs),
                                     batch.reqs)

    def _record_finished(self, outputs: list[StepOutput], batch_reqs: list[Req]) -> list[StepOutput]:
        """Trace the requests that finished in this step (if recording); returns `outputs`. Normal finishes
        happen only to the batch's requests; aborts (reported for any request) are counted, not recorded."""
        if self.recorder is None:
            return outputs
        by_rid = None
        for out in outputs:
            if not out.finished:
                continue
            if (out.finish_reason or {}).get("type") == FinishKind.ABORT.value:
                self.recorder.skip()
                continue
            if by_rid is None:
                by_rid = {r.rid: r for r in batch_reqs}
            req = by_rid.get(out.rid)
            if req is None:  # not reachable today; a trace line without its prompt would be wrong, so skip
                self.recorder.skip()
                continue
            segments = example_ids = templates = None
            if req.segments is not None and req.segments.segment_ids:
                segments = list(req.segments.boundaries)
                example_ids = [eid for _, eid in req.segments.segment_ids]
                templates = self._templates(req, example_ids)
            self.recorder.record(arrival_time=req.arrival_time, token_ids=req.input_ids,
                                 output_length=len(req.output_ids), segments=segments, example_ids=example_ids,
                                 example_templates=templates)
        return outputs

    def _templates(self, req: Req, example_ids: list[str]) -> list[str] | None:
        """Each example's template (PAIR's matching identity), or None when one is unknown: a substituted
        example comes from PAIR's registry, which may have dropped it since."""
        known = {ex.id: ex.output for ex in req.icl.examples} if req.icl is not None else {}
        registry = self.scheduler.pair.scope(req.tenant).registry
        out = []
        for eid in example_ids:
            if eid not in known:
                ex = registry.get(eid)
                if ex is None:
                    return None
                known[eid] = ex.output
            out.append(known[eid])
        return out

    # --- control shared by Engine and the server's scheduler process -----------------------------------
    def stats(self) -> dict[str, Any]:
        sch = self.scheduler
        kv, tree = sch.kv, sch.kv.tree
        stats = dataclasses.asdict(sch.stats)
        stats.update(
            num_running=len(sch.running) + (sch.chunked is not None), num_waiting=len(sch.waiting),
            kv_capacity_tokens=kv.capacity, kv_free_tokens=kv.allocator.num_free,
            cache_tokens=tree.total_size() if tree else 0, cache_evictable_tokens=tree.evictable_size if tree else 0,
            evicted_tokens_total=kv.evicted_tokens_total, context_len=self.context_len,
            token_hit_rate=stats["prefix_cache_hits_total"] / max(stats["prefix_cache_queries_total"], 1),
            dtype=self.runner.dtype,  # what --dtype auto resolved to
        )
        return stats

    def flush_cache(self) -> bool:
        """Drop every cached prefix; only when idle (returns False otherwise)."""
        if self.has_work():
            return False
        if self.scheduler.kv.tree is not None:
            self.scheduler.kv.tree.reset()
        if self.kv_events is not None:
            self.kv_events.flush()
        return True

    def update_config(self, knobs: dict[str, Any]) -> dict[str, Any]:
        """Apply live knobs (engine/knobs.py) between steps; ValueError, and nothing changes, on a bad one."""
        args = apply_knobs(self.args, knobs, self.runner.max_reqs - 1)
        if args.radix_eviction_policy != self.args.radix_eviction_policy:
            make_eviction_policy(args.radix_eviction_policy)  # a registered factory may refuse: before any change
        self.args = args
        self.scheduler.update_args(self.args)
        return {name: getattr(self.args, name) for name in LIVE_KNOBS}
