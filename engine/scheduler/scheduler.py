"""Continuous-batching scheduler (pure Python): admission, chunked prefill, decode, retraction, finishing.

One step = `schedule()` → (model runner) → `process_results()`. Prefill-first: a step runs new prompts
(and at most one chunked prompt) when any can be admitted, otherwise one decode token for every running
request; with `enable_mixed_chunk` (the default) a prefill step also carries that decode token (a MIXED batch).
Admission keeps room for running requests' future tokens (`new_token_ratio` of their remaining
max_new_tokens, SGLang-style, relaxed while decode proceeds and reset on retraction); when decode still runs
out of KV, the most recently admitted request is retracted (its KV cached or freed, requeued) — never a crash.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from engine.config import ServerArgs
from engine.forward_mode import ForwardMode
from engine.scheduler.batch import ScheduledBatch, StepOutput, append_decode, build_extend
from engine.scheduler.finish import check_finish, finish_output
from engine.scheduler.kv_manager import KVManager
from engine.scheduler.policy import order_waiting, shares_uncached_prefix
from engine.pair.refiner import PairRefiner
from engine.scheduler.request import FinishKind, FinishReason, Req, ReqStatus, Segments

CLIP_NEW_TOKENS = 4096  # reservation per request is capped: max_new_tokens is often a loose upper bound


@dataclass
class SchedulerStats:
    prefix_cache_queries_total: int = 0  # prompt tokens looked up at first admission
    prefix_cache_hits_total: int = 0  # of those, tokens served from the cache
    num_retractions_total: int = 0
    prefill_tokens_computed_total: int = 0
    decode_tokens_total: int = 0
    mixed_steps_total: int = 0  # prefill steps that also decoded the running requests (enable_mixed_chunk)
    finished_total: int = 0


class Scheduler:
    def __init__(self, args: ServerArgs, num_slots: int, context_len: int,
                 decode_fn: Callable[[list[int]], str], clock: Callable[[], float] = time.monotonic):
        self.args = args
        self.context_len = context_len
        self.decode_fn = decode_fn
        self.clock = clock
        self.kv = KVManager(num_slots, args.page_size, args.max_running_requests + 1,
                            not args.disable_radix_cache, args.radix_eviction_policy)
        self.waiting: list[Req] = []
        self.running: list[Req] = []  # decoding requests, in admission order
        self.chunked: Req | None = None  # the one request mid-way through a chunked prefill
        self.stats = SchedulerStats()
        self.pair = PairRefiner(args.pair_table_capacity, keep_last=args.pair_keep_last)
        self._pending: list[StepOutput] = []
        self._aborts: set[str] = set()
        self._init_ratio = min(0.7 * args.schedule_conservativeness, 1.0)
        self.new_token_ratio = self._init_ratio

    # --- intake ---------------------------------------------------------------------------------------
    def add(self, req: Req) -> None:
        """Queue a validated request. Raises ValueError if it can never fit the context or the KV pool."""
        self.check_new(req)
        req.status = ReqStatus.WAITING
        self.waiting.append(req)

    def check_new(self, req: Req) -> None:
        """ValueError (naming the field) if `req` can never run here; reads only fixed sizes."""
        if req.prompt_len == 0:
            raise ValueError("input_ids: the prompt is empty")
        if req.prompt_len >= self.context_len:
            raise ValueError(f"input_ids: prompt of {req.prompt_len} tokens does not fit the context "
                             f"length {self.context_len} (one token must be generated)")
        if req.prompt_len + 1 > self.kv.capacity:
            raise ValueError(f"input_ids: prompt of {req.prompt_len} tokens exceeds the KV pool "
                             f"({self.kv.capacity} tokens)")

    def abort(self, rid: str) -> None:
        self._aborts.add(rid)

    def update_args(self, args: ServerArgs) -> None:
        """Apply live knobs (the pool size and page size cannot change)."""
        self.args = args
        self._init_ratio = min(0.7 * args.schedule_conservativeness, 1.0)
        self.pair.set_table_capacity(args.pair_table_capacity)
        if self.kv.tree is not None and self.kv.tree.eviction_policy != args.radix_eviction_policy:
            self.kv.tree.set_eviction_policy(args.radix_eviction_policy)  # a switch rebuilds the victim heap

    @property
    def num_live(self) -> int:
        return len(self.waiting) + len(self.running) + (self.chunked is not None)

    def has_work(self) -> bool:
        return self.num_live > 0 or bool(self._pending)

    def live_reqs(self) -> list[Req]:
        return self.waiting + self.running + ([self.chunked] if self.chunked else [])

    # --- one step -------------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        if self._aborts:
            self._apply_aborts()
        batch = self._schedule_prefill()
        if batch is None:
            return self._schedule_decode() if self.running else None
        if self.args.enable_mixed_chunk and self.running:
            return self._mix_decode(batch)
        return batch

    def process_results(self, batch: ScheduledBatch | None, next_ids: list[int] | None) -> list[StepOutput]:
        outputs, self._pending = self._pending, []
        if batch is None:
            return outputs
        now = self.clock()
        for i, (req, ext, do_sample, tok) in enumerate(zip(batch.reqs, batch.extend_lens, batch.sample, next_ids)):
            prefill = i < batch.num_extend
            req.kv_len += ext
            req.table_len = max(req.table_len, req.kv_len)
            if prefill:
                self.stats.prefill_tokens_computed_total += ext
                # Cache the prompt now, not at finish, so concurrent requests (and PAIR) see it.
                self.kv.cache_unfinished(req)
                if do_sample and req.icl is not None:
                    self.pair.prefilled(req.rid)
            if not do_sample:
                continue
            if req is self.chunked:
                self.chunked = None
            if req.status is not ReqStatus.RUNNING:
                req.status = ReqStatus.RUNNING
                self.running.append(req)
            req.output_ids.append(tok)
            if not prefill:
                self.stats.decode_tokens_total += 1
            if req.first_token_time is None:
                req.first_token_time = now
            reason = check_finish(req, tok, self.context_len, self.decode_fn)
            if reason is not None:
                self._finish(req, reason)
            outputs.append(finish_output(req, [tok]))
        if batch.num_extend < batch.batch_size:
            self.new_token_ratio = max(self.new_token_ratio - 0.001, 0.1 * self.args.schedule_conservativeness)
        return outputs

    # --- prefill --------------------------------------------------------------------------------------
    def _reserved_tokens(self) -> int:
        return sum(int(min(r.remaining_new_tokens, CLIP_NEW_TOKENS) * self.new_token_ratio) for r in self.running)

    def _schedule_prefill(self) -> ScheduledBatch | None:
        if self.chunked is None and not self.waiting:
            return None
        args = self.args
        token_budget = args.max_prefill_tokens
        chunk = args.effective_chunk_size
        avail = self.kv.available() - self._reserved_tokens()
        picked: list[tuple[Req, int]] = []
        if self.chunked is not None:
            req = self.chunked
            take = min(req.pending_len, chunk)
            if not self.kv.reserve(req, req.kv_len + take):
                return None  # decode frees room (or retracts) first
            picked.append((req, take))
            token_budget -= take
            if take < req.pending_len:
                return build_extend(picked)
        matches: dict[int, tuple[int, object]] = {}

        def match(r: Req) -> tuple[int, object]:
            if id(r) not in matches:
                slots, node = self.kv.match(r.fill_ids)
                matches[id(r)] = (len(slots), node)
            return matches[id(r)]

        order = order_waiting(args.schedule_policy, self.waiting, match, self.clock(), args.lpm_aging_seconds)
        for req in order:
            if len(self.running) + len(picked) >= args.max_running_requests or not self.kv.has_free_row():
                break
            if token_budget <= 0:
                break
            if req.icl is not None and "icl_order" not in req.extra:
                # PAIR at admission: the freshest view of the tree and of pending prompts. Before the budget
                # and dedup checks, which must see the refined prompt (a peer picked this step may share it).
                self._refine(req)
                matches.pop(id(req), None)
            cached, node = match(req)
            extend = req.seq_len - cached
            take = min(extend, chunk, token_budget) if args.chunked_prefill_size > 0 else extend
            if take < extend and self.chunked is not None:
                break  # one chunked request at a time
            if args.chunked_prefill_size <= 0 and picked and extend > token_budget:
                break
            future = int(min(req.remaining_new_tokens, CLIP_NEW_TOKENS) * self.new_token_ratio)
            alone = not picked and not self.running
            if extend + future > avail and not (alone and take <= avail):
                break
            if self.kv.tree is not None and shares_uncached_prefix(req.fill_ids, cached, [r for r, _ in picked]):
                continue  # in-batch prefix dedup: wait one step for a peer admitted now to cache the shared part
            self.kv.admit(req)
            extend = req.seq_len - req.cached_len  # the probe may have gone stale (eviction, PAIR)
            take = min(take, extend)
            if (take < extend and self.chunked is not None) or not self.kv.reserve(req, req.kv_len + take):
                self.kv.release(req)
                break
            self._account_admission(req)
            self.waiting.remove(req)
            picked.append((req, take))
            token_budget -= take
            avail -= extend + future
            if take < extend:
                self.chunked = req
                break
        return build_extend(picked) if picked else None

    def _refine(self, req: Req) -> None:
        """PAIR at admission time: reorder / substitute the request's examples against the live tree."""
        res = self.pair.refine(self.kv.tree, req.icl, req.rid, self.args.pair_policy)
        ids, boundaries, seg_ids = req.icl.assemble(res.examples)
        if len(ids) >= self.context_len or len(ids) + 1 > self.kv.capacity:
            # Substituted examples made it too long: keep the request's own examples, in the refined order.
            ids, boundaries, seg_ids = req.icl.assemble([req.icl.examples[i] for i in res.order])
            res = type(res)(res.examples, res.order, 0)
        req.input_ids = ids
        req.segments = Segments(boundaries, seg_ids)
        req.extra["icl_order"] = list(res.order)
        req.extra["icl_substituted"] = res.substituted

    def _account_admission(self, req: Req) -> None:
        if req.reported_cached_len is None:
            req.reported_cached_len = req.cached_len
            self.stats.prefix_cache_queries_total += req.prompt_len
            self.stats.prefix_cache_hits_total += req.cached_len

    # --- decode ---------------------------------------------------------------------------------------
    def _schedule_decode(self) -> ScheduledBatch | None:
        i = 0
        while i < len(self.running):
            req = self.running[i]
            if self.kv.reserve(req, req.kv_len + 1):
                i += 1
                continue
            victim = self.running[-1]
            if victim is req and len(self.running) == 1:
                self._finish(req, FinishReason(FinishKind.ABORT, message="KV cache too small for this request"))
                self._pending.append(finish_output(req, []))
                continue
            self._retract(victim)
        if not self.running:
            return None
        batch = ScheduledBatch(ForwardMode.DECODE, [], [], [], [], [], [], [])
        append_decode(batch, list(self.running))
        return batch

    def _mix_decode(self, batch: ScheduledBatch) -> ScheduledBatch:
        """Append one decode token for every running request to the prefill `batch` (SGLang's mixed chunk):
        the step shares one pass over the weights. If any running request cannot get its next slot, the batch
        stays a plain prefill and the next decode step retracts as usual (slots reserved here are kept)."""
        if not all(self.kv.reserve(r, r.kv_len + 1) for r in self.running):
            return batch
        num_extend = batch.batch_size
        append_decode(batch, list(self.running))
        batch.mode, batch.num_extend = ForwardMode.MIXED, num_extend
        self.stats.mixed_steps_total += 1
        return batch

    def _retract(self, req: Req) -> None:
        self.running.remove(req)
        self.kv.release(req)
        req.status = ReqStatus.WAITING
        req.num_retractions += 1
        self.stats.num_retractions_total += 1
        self.waiting.insert(0, req)
        self.new_token_ratio = self._init_ratio

    # --- finishing ------------------------------------------------------------------------------------
    def _finish(self, req: Req, reason: FinishReason) -> None:
        if req.icl is not None:
            self.pair.prefilled(req.rid)
        req.finish_reason = reason
        req.status = ReqStatus.FINISHED
        req.finish_time = self.clock()
        if req in self.running:
            self.running.remove(req)
        if req is self.chunked:
            self.chunked = None
        if req.req_pool_idx is not None:
            self.kv.release(req)
        self.stats.finished_total += 1

    def abort_batch(self, batch: ScheduledBatch, message: str) -> None:
        """The batch's forward failed: finish its requests as aborted and free their KV (reported next step)."""
        for req in batch.reqs:
            if not req.finished:
                self._finish(req, FinishReason(FinishKind.ABORT, message=message))
                self._pending.append(finish_output(req, []))

    def _apply_aborts(self) -> None:
        for req in self.live_reqs():
            if req.rid in self._aborts:
                if req in self.waiting:
                    self.waiting.remove(req)
                self._finish(req, FinishReason(FinishKind.ABORT, message="aborted"))
                self._pending.append(finish_output(req, []))
        self._aborts.clear()

    def check_integrity(self) -> None:
        live = [r for r in self.live_reqs() if r.req_pool_idx is not None]
        self.kv.check_integrity(live)
        assert all(r.req_pool_idx is None for r in self.waiting), "a waiting request holds KV"
