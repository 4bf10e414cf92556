"""Typed messages between the server's processes, serialized with msgpack (never pickle).

Wire format: a msgpack array `[type_tag, {field: value}]` where the tag is the dataclass name. Values are plain
msgpack types (ints, floats, str, bytes, lists, dicts, None); tuples come back as lists. Batch messages carry
lists of item dataclasses that travel as dicts and are rebuilt in `__post_init__`.

Who sends what (all over ZMQ PUSH → PULL):
  tokenizer manager → scheduler:    GenerateReq, AbortReq, FlushCacheReq, StatsReq, UpdateConfigReq, ShutdownReq
  scheduler → detokenizer:          BatchTokenOut
  tokenizer manager → detokenizer:  ShutdownReq
  detokenizer → tokenizer manager:  BatchTextOut, Ready, ChildFailed
  scheduler → tokenizer manager:    Ready, ChildFailed, StatsOut (periodic: seq 0), FlushCacheOut, UpdateConfigOut
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgpack


# --- tokenizer manager → scheduler --------------------------------------------------------------------
@dataclass
class GenerateReq:
    """A validated, tokenized request. `sampling` holds SamplingParams fields; `icl` an IclPrompt as a dict."""

    rid: str
    input_ids: list[int]
    sampling: dict[str, Any]
    icl: dict[str, Any] | None = None
    logprob: dict[str, Any] | None = None  # engine.logprob_options.LogprobOptions fields, when asked
    priority: int | None = None
    tenant: str = "anonymous"  # from the API key (server/auth.py): scopes PAIR and, if isolated, the prefix cache


@dataclass
class AbortReq:
    rid: str


@dataclass
class FlushCacheReq:
    seq: int


@dataclass
class StatsReq:
    seq: int


@dataclass
class UpdateConfigReq:
    """Live knobs (engine.knobs.LIVE_KNOBS), already validated by the tokenizer manager."""

    seq: int
    knobs: dict[str, Any]


@dataclass
class ShutdownReq:
    reason: str = ""


# --- scheduler → detokenizer ----------------------------------------------------------------------------
@dataclass
class TokenOut:
    """One request's step delta. `detok` (skip_special_tokens, stop, no_stop_trim) rides on the first TokenOut
    of each request, so the detokenizer learns a request's settings on the same ordered path as its tokens.

    `finish_reason` is the engine's dict ({"type": stop|length|abort, "matched", "message"}); a request the
    engine failed carries "status_code" (400: rejected input, 500: engine error) in it as well.
    """

    rid: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    extra: dict[str, Any] | None = None
    detok: dict[str, Any] | None = None
    logprobs: dict[str, Any] | None = None  # engine.scheduler.batch.StepOutput.logprobs: this step's delta


@dataclass
class BatchTokenOut:
    outputs: list[TokenOut] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outputs = [o if isinstance(o, TokenOut) else TokenOut(**o) for o in self.outputs]


# --- detokenizer → tokenizer manager ----------------------------------------------------------------------
@dataclass
class TextOut:
    """One request's step delta as text: `text` is the new text only (stop strings already cut)."""

    rid: str
    text: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    extra: dict[str, Any] | None = None
    logprobs: dict[str, Any] | None = None  # as TokenOut's (token ids; text is added by the HTTP layer)


@dataclass
class BatchTextOut:
    outputs: list[TextOut] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outputs = [o if isinstance(o, TextOut) else TextOut(**o) for o in self.outputs]


# --- children → tokenizer manager -------------------------------------------------------------------------
@dataclass
class Ready:
    """Sent once by each child when it can serve; the scheduler's `info` has context_len and kv capacity."""

    who: str
    pid: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChildFailed:
    """Sent by a child that cannot start (e.g. the model failed to load) just before it exits non-zero."""

    who: str
    pid: int
    message: str


@dataclass
class StatsOut:
    """Scheduler stats; seq 0 is the periodic push, other seqs answer a StatsReq."""

    seq: int
    stats: dict[str, Any]


@dataclass
class FlushCacheOut:
    seq: int
    success: bool
    message: str = ""


@dataclass
class UpdateConfigOut:
    """The scheduler's live knob values after an UpdateConfigReq (unchanged when success is False)."""

    seq: int
    success: bool
    message: str = ""
    knobs: dict[str, Any] = field(default_factory=dict)


MESSAGE_TYPES = MappingProxyType({cls.__name__: cls for cls in (
    GenerateReq, AbortReq, FlushCacheReq, StatsReq, UpdateConfigReq, ShutdownReq, TokenOut, BatchTokenOut, TextOut,
    BatchTextOut, Ready, ChildFailed, StatsOut, FlushCacheOut, UpdateConfigOut,
)})


def encode(msg: Any) -> bytes:
    """Serialize a message dataclass (one of MESSAGE_TYPES)."""
    name = type(msg).__name__
    if MESSAGE_TYPES.get(name) is not type(msg):
        raise TypeError(f"not a server message: {type(msg)!r}")
    return msgpack.packb([name, dataclasses.asdict(msg)], use_bin_type=True)


def decode(data: bytes) -> Any:
    """Rebuild a message from `encode`'s bytes; ValueError for anything that is not one."""
    try:
        name, fields = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise ValueError(f"message: undecodable ({e})") from None
    cls = MESSAGE_TYPES.get(name) if isinstance(name, str) else None
    if cls is None or not isinstance(fields, dict):
        raise ValueError(f"message: unknown type {name!r}")
    try:
        return cls(**fields)
    except TypeError as e:  # missing or unexpected fields: a peer speaking another version
        raise ValueError(f"message: bad fields for {name} ({e})") from None
