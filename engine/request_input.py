"""Turn user inputs (prompt text or ids, sampling dicts) into validated, tokenized requests.

All validation happens here, before anything is queued, so a bad item in a batch rejects the whole call with a
ValueError naming the field and leaves the engine untouched.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams
from engine.scheduler import Segments


@dataclass
class RequestInput:
    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    segments: Segments | None = None
    extra: dict = field(default_factory=dict)


def _as_list(x, n: int, name: str) -> list:
    if isinstance(x, list):
        if len(x) != n:
            raise ValueError(f"{name}: got {len(x)} entries for {n} prompts")
        return x
    return [x] * n


def normalize_inputs(tokenizer, prompt, input_ids, sampling_params, context_len: int
                     ) -> tuple[list[RequestInput], bool]:
    """Returns (requests, single) where single says the caller passed one prompt rather than a list."""
    if (prompt is None) == (input_ids is None):
        raise ValueError("prompt: give exactly one of prompt or input_ids")
    if prompt is not None:
        single = isinstance(prompt, str)
        prompts = [prompt] if single else prompt
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt: must be a string or a list of strings")
        if not prompts:
            raise ValueError("prompt: empty list")
        if any(p == "" for p in prompts):
            raise ValueError("prompt: empty prompt")
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
    out = []
    for ids, spd in zip(ids_list, sps):
        name = "prompt" if prompt is not None else "input_ids"
        if not ids:
            raise ValueError(f"{name}: empty prompt")
        if any(t < 0 or t >= vocab for t in ids):
            raise ValueError(f"input_ids: token id out of range [0, {vocab})")
        if len(ids) >= context_len:
            raise ValueError(f"{name}: {len(ids)} tokens do not fit the context length {context_len}")
        sp = SamplingParams.from_dict(spd)
        sp.validate()
        out.append(RequestInput(uuid.uuid4().hex, list(ids), sp))
    return out, single
