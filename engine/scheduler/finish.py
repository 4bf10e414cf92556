"""When a request stops, and what a step reports for it (pure Python)."""
from __future__ import annotations

from typing import Callable

from engine.detokenize import find_stop_in_tail
from engine.scheduler.batch import StepOutput
from engine.scheduler.request import FinishKind, FinishReason, Req

ENGINE_ERROR_PREFIX = "engine error: "  # abort messages of requests whose forward failed (HTTP 500)
STOP_TAIL_EXTRA_TOKENS = 8  # decode this many tokens beyond the longest stop string's length


def check_finish(req: Req, token: int, context_len: int, decode_fn: Callable[[list[int]], str]) -> FinishReason | None:
    """The reason `req` stops after appending `token`, or None. Order: stop tokens, stop strings, a grammar that
    accepts nothing more, length."""
    sp = req.sampling
    if token in sp.stop_token_ids:
        return FinishReason(FinishKind.STOP, matched=token)
    if not sp.ignore_eos and token in req.eos_token_ids:
        return FinishReason(FinishKind.STOP, matched=token)
    if sp.stop:
        # A stop string can span token boundaries: decode a tail long enough to contain any of them.
        n = max(len(s) for s in sp.stop) + STOP_TAIL_EXTRA_TOKENS
        matched = find_stop_in_tail(decode_fn(req.output_ids[-n:]), sp.stop)
        if matched is not None:
            return FinishReason(FinishKind.STOP, matched=matched)
    if req.grammar is not None and req.grammar.terminated:
        if req.grammar.error is not None:
            return FinishReason(FinishKind.ABORT, message=req.grammar.error)
        return FinishReason(FinishKind.STOP, matched=token)
    if len(req.output_ids) >= sp.max_new_tokens or req.seq_len >= context_len:
        return FinishReason(FinishKind.LENGTH)
    return None


def finish_output(req: Req, new_ids: list[int], logprobs: dict | None = None) -> StepOutput:
    return StepOutput(
        rid=req.rid,
        new_token_ids=new_ids,
        finished=req.finish_reason is not None,
        finish_reason=req.finish_reason.to_dict() if req.finish_reason else None,
        prompt_tokens=req.prompt_len,
        completion_tokens=len(req.output_ids),
        cached_tokens=req.reported_cached_len or 0,
        first_token_time=req.first_token_time,
        extra=req.extra or None,
        logprobs=logprobs,
    )
