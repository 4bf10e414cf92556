"""Per-request sampling parameters (SGLang field names), parsed from JSON-like dicts and validated.

Pure Python on purpose: the scheduler and the server import this without torch. `from_dict` checks keys and
types; `validate` checks ranges. Both raise ValueError whose message starts with `sampling_params.<field>`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

MAX_SEED = 1 << 63
MAX_TOKEN_ID = 1 << 31  # ints past these bounds cannot travel in the server's msgpack messages (it was a 500)
# Below this a temperature would overflow logits / temperature in fp32; such requests decode greedily.
GREEDY_TEMPERATURE = 1e-5


def _err(name: str, why: str, value: Any) -> ValueError:
    return ValueError(f"sampling_params.{name}: {why} (got {value!r})")


def _as_int(name: str, value: Any) -> int:
    # bool is an int subclass; `"top_k": true` is a client bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(name, "must be an integer", value)
    return value


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(name, "must be a number", value)
    return float(value)


def _as_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _err(name, "must be a boolean", value)
    return value


def _as_str_tuple(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise _err(name, "must be a string or a list of strings", value)
    return tuple(value)


def _as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(_as_int(name, v) for v in value)
    raise _err(name, "must be a list of integers", value)


def _as_optional_int(name: str, value: Any) -> int | None:
    return None if value is None else _as_int(name, value)


def _as_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _err(name, "must be a string", value)
    return value


def _as_logit_bias(name: str, value: Any) -> tuple[tuple[int, float], ...]:
    """{token id (int or its decimal string, as JSON object keys are): bias}, or the (id, bias) pairs this returns
    (how the field travels between processes) → sorted (id, bias) pairs."""
    if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        value = dict(value)
    if not isinstance(value, dict):
        raise _err(name, "must be an object mapping token ids to numbers", value)
    out: dict[int, float] = {}
    for key, bias in value.items():
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            tok = int(key)
        elif isinstance(key, int) and not isinstance(key, bool):
            tok = key
        else:
            raise _err(name, "keys must be token ids", key)
        out[tok] = _as_float(name, bias)
    return tuple(sorted(out.items()))


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops.

    top_k = -1 disables top-k; top_p = 1 and min_p = 0 disable theirs. temperature 0 (or top_k 1) is greedy.
    `seed` None lets the engine pick one; a seeded request samples the same tokens whatever batch it runs in.
    `stop` strings end generation when they appear in the output text (cut unless no_stop_trim);
    `stop_token_ids` end it on those tokens, as does EOS unless ignore_eos.

    Logit processing, applied to the raw logits in this order before temperature and the filters (greedy rows
    too): `logit_bias` adds its value to each listed token; below `min_new_tokens` output tokens, EOS and the
    stop tokens are masked out; `repetition_penalty` (HF / vLLM: over prompt and output tokens) divides a seen
    token's positive logit and multiplies a negative one; `frequency_penalty` subtracts penalty × count of the
    token in the output so far, `presence_penalty` subtracts penalty once the token occurred in the output
    (OpenAI's definitions). 1 / 0 / 0 turn them off. At most one of `json_schema`, `regex`, `ebnf` constrains
    the output to a grammar (engine/grammar.py).
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    min_new_tokens: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # sorted (token id, bias) pairs
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "SamplingParams":
        """Build from a request's `sampling_params` object; None or {} gives the defaults.

        A key whose value is None keeps its default (clients send explicit nulls). Unknown keys and wrong types
        raise ValueError naming the key. Ranges are not checked here: call `validate`.
        """
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"sampling_params: must be an object (got {type(d).__name__})")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in known:
                raise ValueError(f"sampling_params.{key}: unknown key (known: {', '.join(sorted(known))})")
            if value is None and key != "seed":
                continue
            kwargs[key] = _PARSERS[key](key, value)
        return cls(**kwargs)

    def validate(self, context_len_left: int | None = None) -> "SamplingParams":
        """Raise ValueError naming the first out-of-range field; return self so it chains.

        `context_len_left`: tokens the context window has left after the prompt; max_new_tokens may not exceed it.
        """
        if self.max_new_tokens <= 0:
            raise _err("max_new_tokens", "must be >= 1", self.max_new_tokens)
        if context_len_left is not None and self.max_new_tokens > context_len_left:
            raise _err("max_new_tokens", f"exceeds the {context_len_left} tokens left in the context",
                       self.max_new_tokens)
        # `not x >= 0` style comparisons also reject NaN.
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            raise _err("temperature", "must be a finite number >= 0", self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            raise _err("top_p", "must be in (0, 1]", self.top_p)
        if self.top_k == 0 or self.top_k < -1 or self.top_k >= MAX_TOKEN_ID:
            raise _err("top_k", "must be -1 (off) or >= 1", self.top_k)
        if not 0.0 <= self.min_p <= 1.0:
            raise _err("min_p", "must be in [0, 1]", self.min_p)
        if any(s == "" for s in self.stop):
            raise _err("stop", "stop strings must be non-empty", self.stop)
        if self.seed is not None and not 0 <= self.seed < MAX_SEED:
            raise _err("seed", "must be in [0, 2**63)", self.seed)  # a 64-bit seed travels as msgpack and torch
        if any(not 0 <= t < MAX_TOKEN_ID for t in self.stop_token_ids):
            raise _err("stop_token_ids", "token ids must be in [0, 2**31)", self.stop_token_ids)
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise _err("min_new_tokens", "must be in [0, max_new_tokens]", self.min_new_tokens)
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise _err(name, "must be in [-2, 2]", getattr(self, name))
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise _err("repetition_penalty", "must be in (0, 2]", self.repetition_penalty)
        for tok, bias in self.logit_bias:
            if not 0 <= tok < MAX_TOKEN_ID:
                raise _err("logit_bias", "token ids must be in [0, 2**31)", tok)
            if not -100.0 <= bias <= 100.0:
                raise _err("logit_bias", "biases must be in [-100, 100]", bias)
        constraints = [n for n in ("json_schema", "regex", "ebnf") if getattr(self, n) is not None]
        if len(constraints) > 1:
            raise _err(constraints[1], f"only one of json_schema, regex, ebnf may be given (also got "
                       f"{constraints[0]})", getattr(self, constraints[1]))
        return self

    @property
    def has_penalties(self) -> bool:
        """True when the row needs its token counts (frequency, presence or repetition penalty)."""
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0 or self.repetition_penalty != 1.0

    @property
    def grammar_key(self) -> tuple[str, str] | None:
        """(kind, spec) of the output constraint, or None: the key grammars are compiled and cached under."""
        for kind in ("json_schema", "regex", "ebnf"):
            spec = getattr(self, kind)
            if spec is not None:
                return kind, spec
        return None

    @property
    def is_greedy(self) -> bool:
        """True when sampling reduces to argmax (temperature ~0 or top_k 1)."""
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1


_PARSERS = MappingProxyType({
    "max_new_tokens": _as_int,
    "temperature": _as_float,
    "top_p": _as_float,
    "top_k": _as_int,
    "min_p": _as_float,
    "stop": _as_str_tuple,
    "stop_token_ids": _as_int_tuple,
    "ignore_eos": _as_bool,
    "seed": _as_optional_int,
    "skip_special_tokens": _as_bool,
    "no_stop_trim": _as_bool,
    "min_new_tokens": _as_int,
    "frequency_penalty": _as_float,
    "presence_penalty": _as_float,
    "repetition_penalty": _as_float,
    "logit_bias": _as_logit_bias,
    "json_schema": _as_str,
    "regex": _as_str,
    "ebnf": _as_str,
})
assert set(_PARSERS) == {f.name for f in fields(SamplingParams)}, "every field needs a parser"
