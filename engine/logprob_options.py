"""What a request asks to get back besides its tokens: logprobs (SGLang's request fields), pure Python.

SGLang's `/generate` and `Engine.generate` fields: `return_logprob`, `logprob_start_len`, `top_logprobs_num`,
`return_text_in_logprobs`. Semantics here:
- output logprobs: for every generated token, its logprob and (top_logprobs_num > 0) the top-n alternatives;
- input (prompt) logprobs: for every prompt token from position `logprob_start_len` on, its logprob given the
  tokens before it (None for the very first prompt token, which has no context), and top-n per position.
  -1 (the default) asks for none. Those positions are always computed, never taken from the prefix cache: the
  scheduler limits the request's cache match to below them (a cached prefix has no logits to give).
Logprobs are log_softmax of the model's raw logits (before logit_bias, penalties, temperature and grammar masks,
vLLM's default `raw_logprobs`), in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_TOP_LOGPROBS = 20  # OpenAI's bound for top_logprobs


@dataclass(frozen=True)
class LogprobOptions:
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False

    @classmethod
    def from_fields(cls, return_logprob: Any = None, logprob_start_len: Any = None, top_logprobs_num: Any = None,
                    return_text_in_logprobs: Any = None) -> "LogprobOptions | None":
        """Validated options from request fields (None keeps a default); None when no logprob is asked.

        ValueError naming the field on a wrong type or range. The prompt length is checked by `check_prompt`."""
        def as_bool(name: str, v: Any, default: bool) -> bool:
            if v is None:
                return default
            if not isinstance(v, bool):
                raise ValueError(f"{name}: must be a boolean (got {v!r})")
            return v

        def as_int(name: str, v: Any, default: int) -> int:
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name}: must be an integer (got {v!r})")
            return v

        opts = cls(as_bool("return_logprob", return_logprob, False),
                   as_int("logprob_start_len", logprob_start_len, -1),
                   as_int("top_logprobs_num", top_logprobs_num, 0),
                   as_bool("return_text_in_logprobs", return_text_in_logprobs, False))
        if opts.logprob_start_len < -1:
            raise ValueError(f"logprob_start_len: must be -1 (no prompt logprobs) or >= 0 "
                             f"(got {opts.logprob_start_len})")
        if not 0 <= opts.top_logprobs_num <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs_num: must be in [0, {MAX_TOP_LOGPROBS}] (got {opts.top_logprobs_num})")
        return opts if opts.return_logprob else None

    def check_prompt(self, prompt_len: int) -> None:
        if self.logprob_start_len >= prompt_len:
            raise ValueError(f"logprob_start_len: must be below the prompt length {prompt_len} "
                             f"(got {self.logprob_start_len})")

    @property
    def wants_input(self) -> bool:
        return self.logprob_start_len >= 0

    def to_dict(self) -> dict[str, Any]:
        return {"return_logprob": self.return_logprob, "logprob_start_len": self.logprob_start_len,
                "top_logprobs_num": self.top_logprobs_num, "return_text_in_logprobs": self.return_text_in_logprobs}


LOGPROB_KEYS = ("input_token_logprobs", "input_top_logprobs", "output_token_logprobs", "output_top_logprobs")


class LogprobAccumulator:
    """A request's logprobs so far, from the step deltas (engine.scheduler.batch.StepOutput.logprobs)."""

    def __init__(self) -> None:
        self.lists: dict[str, list] = {k: [] for k in LOGPROB_KEYS}

    def add(self, delta: dict | None) -> None:
        if delta:
            for key, items in delta.items():
                self.lists[key].extend(items)

    def snapshot(self) -> "LogprobAccumulator":
        copy = LogprobAccumulator()
        copy.lists = {k: list(v) for k, v in self.lists.items()}
        return copy

    def meta_info(self, decode_token=None) -> dict[str, list]:
        """SGLang's meta_info fields: token lists of [logprob, token id, text], top lists of those per position
        (None where not asked). `decode_token(id) -> str` fills text (return_text_in_logprobs), else None."""
        def triple(pair: list) -> list:
            return [pair[0], pair[1], decode_token(pair[1]) if decode_token is not None else None]

        out: dict[str, list] = {}
        for key, items in self.lists.items():
            if key.endswith("top_logprobs"):
                out[key] = [None if top is None else [triple(p) for p in top] for top in items]
            else:
                out[key] = [triple(p) for p in items]
        return out
