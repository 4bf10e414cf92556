"""Turn user inputs (prompt text or ids, sampling dicts) into validated, tokenized requests.

All validation happens here, before anything is queued, so a bad item in a batch rejects the whole call with a
ValueError naming the field and leaves the engine untouched.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from engine.logprob_options import LogprobOptions
from engine.pair.render import IclPrompt, SegmentEncoder, check_text, render_icl, validate_icl
from engine.sampling_params import SamplingParams

# SGLang's per-request fields besides sampling_params that normalize_inputs takes (each a value or one per prompt)
REQUEST_FIELDS = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs", "priority")


@dataclass
class RequestInput:
    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    icl: IclPrompt | None = None
    logprob: LogprobOptions | None = None
    priority: int | None = None


def _as_list(x, n: int, name: str) -> list:
    if isinstance(x, list):
        if len(x) != n:
            raise ValueError(f"{name}: got {len(x)} entries for {n} prompts")
        return x
    return [x] * n


def normalize_inputs(tokenizer, prompt, input_ids, sampling_params, context_len: int, icl=None,
                     encoder: SegmentEncoder | None = None, **request_fields) -> tuple[list[RequestInput], bool]:
    """Returns (requests, single) where single says the caller passed one prompt rather than a list.

    Exactly one of prompt (str | list[str]), input_ids (list[int] | list[list[int]]) or icl (dict | list[dict]);
    `encoder` (over `tokenizer`) memoises the ICL segments' tokens. `request_fields`: REQUEST_FIELDS (logprobs,
    priority), each one value or a list with one per prompt; None values keep the defaults."""
    unknown = set(request_fields) - set(REQUEST_FIELDS)
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown field")
    if sum(x is not None for x in (prompt, input_ids, icl)) != 1:
        raise ValueError("prompt: give exactly one of prompt, input_ids or icl")
    icl_prompts: list = []
    if icl is not None:
        single = isinstance(icl, dict)
        items = [icl] if single else icl
        if not isinstance(items, list) or not items:
            raise ValueError("icl: must be an object or a non-empty list of objects")
        icl_prompts = [render_icl(tokenizer, validate_icl(x), encoder) for x in items]
        ids_list = [p.assemble(p.examples)[0] for p in icl_prompts]
    elif prompt is not None:
        single = isinstance(prompt, str)
        prompts = [prompt] if single else prompt
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt: must be a string or a list of strings")
        if not prompts:
            raise ValueError("prompt: empty list")
        if any(p == "" for p in prompts):
            raise ValueError("prompt: empty prompt")
        for p in prompts:
            check_text(p, "prompt")
        ids_list = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    else:
        single = bool(input_ids) and all(isinstance(t, int) for t in input_ids)
        ids_list = [input_ids] if single else input_ids
        if not isinstance(ids_list, list) or not ids_list:
            raise ValueError("input_ids: must be a non-empty list of ints or of lists of ints")
        for ids in ids_list:
            if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise ValueError("input_ids: must be a list of ints or a list of lists of ints")
    vocab = len(tokenizer)
    sps = _as_list(sampling_params, len(ids_list), "sampling_params")
    per_prompt = {k: _as_list(v, len(ids_list), k) for k, v in request_fields.items()}
    out = []
    for i, (ids, spd) in enumerate(zip(ids_list, sps)):
        name = "input_ids" if input_ids is not None else ("icl" if icl is not None else "prompt")
        if not ids:
            raise ValueError(f"{name}: empty prompt")
        if any(t < 0 or t >= vocab for t in ids):
            raise ValueError(f"input_ids: token id out of range [0, {vocab})")
        if len(ids) >= context_len:
            raise ValueError(f"{name}: {len(ids)} tokens do not fit the context length {context_len}")
        sp = SamplingParams.from_dict(spd)
        sp.validate()
        check_vocab_fields(sp, vocab)
        fields = {k: v[i] for k, v in per_prompt.items()}
        priority = fields.pop("priority", None)
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise ValueError(f"priority: must be an integer (got {priority!r})")
        logprob = LogprobOptions.from_fields(**fields)
        if logprob is not None:
            logprob.check_prompt(len(ids))
        out.append(RequestInput(uuid.uuid4().hex, list(ids), sp, icl=icl_prompts[i] if icl_prompts else None,
                                logprob=logprob, priority=priority))
    return out, single


def check_vocab_fields(sp: SamplingParams, vocab: int) -> None:
    """The sampling fields checked against the tokenizer: logit_bias ids in range, a grammar that parses."""
    for tok, _ in sp.logit_bias:
        if tok >= vocab:
            raise ValueError(f"sampling_params.logit_bias: token id {tok} out of range [0, {vocab})")
    if sp.grammar_key is not None:
        from engine.grammar import validate_grammar  # xgrammar only for constrained requests

        validate_grammar(*sp.grammar_key)
