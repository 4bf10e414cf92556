"""Request traces for the prefix-cache simulator: one JSONL format, its reader/writer, a Mooncake reader, and
(re-exported from engine/trace_recorder.py) block hashing, `record_request` and `TraceRecorder` for logging
live traffic without raw text.

Format (docs/traces.md has the full description). A trace file is UTF-8 JSON Lines:

- optional first line, the header: {"trace": "pairserve", "version": 1, "block_size": 16, "meta": {...}}
  (block_size is the token count behind one entry of `hash_ids`; meta is free-form provenance);
- then one object per request, in any order (replay sorts by timestamp, stably):
    timestamp       float seconds since the trace start (required)
    input_length    prompt tokens (required; must equal len(token_ids) when token_ids is given)
    output_length   generated tokens (required, >= 0)
    token_ids       the prompt's token ids                       } exactly one of the two
    hash_ids        chained hashes of the prompt's blocks        } (prefix identity)
    segments        increasing token offsets where prompt blocks end: [head end, example 1 end, ...] (optional)
    example_ids     one id per example block: example i ends at segments[i + 1] (optional, needs segments)
    example_templates  one template (or its hash) per example: PAIR's matching identity (optional)
    session_id, app_id  strings (optional)

`hash_ids[i]` identifies block i *with its whole prefix* (as in Mooncake traces): equal ids at the same
position mean equal prefixes. The last, partial block has an id too, so len(hash_ids) = ceil(input_length /
block_size). Mooncake's own JSONL (timestamp in ms, input_length, output_length, hash_ids, block_size 512)
is read by `read_mooncake`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator

# The writing half of the format lives in the engine (it records live traffic and must not import bench);
# re-exported here so trace users find the whole format in one module.
from engine.trace_recorder import (TRACE_NAME, TRACE_VERSION, BlockHasher, TraceRecorder, block_hashes,
                                   record_request, template_hash, trace_header)

__all__ = ["TRACE_NAME", "TRACE_VERSION", "MOONCAKE_BLOCK_SIZE", "BlockHasher", "Trace", "TraceRecorder",
           "TraceRequest", "block_hashes", "open_trace", "read_mooncake", "read_trace", "record_request",
           "template_hash", "trace_header", "write_trace"]

MOONCAKE_BLOCK_SIZE = 512
_OPTIONAL_LISTS = ("segments", "example_ids", "example_templates")


@dataclass
class TraceRequest:
    """One request of a trace; see the module docstring for the meaning of each field."""

    timestamp: float
    input_length: int
    output_length: int
    token_ids: list[int] | None = None
    hash_ids: list[int] | None = None
    segments: list[int] | None = None
    example_ids: list[str] | None = None
    example_templates: list[str] | None = None
    session_id: str | None = None
    app_id: str | None = None

    def to_json(self) -> dict:
        out = {"timestamp": self.timestamp, "input_length": self.input_length, "output_length": self.output_length}
        for name in ("token_ids", "hash_ids", *_OPTIONAL_LISTS, "session_id", "app_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, obj: dict, where: str = "request") -> "TraceRequest":
        """Validate one decoded line; ValueError names `where` and the field."""
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: must be a JSON object")
        unknown = set(obj) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown field")
        for name in ("timestamp", "input_length", "output_length"):
            if name not in obj:
                raise ValueError(f"{where}.{name}: missing")
        req = cls(**obj)
        req.validate(where)
        return req

    def validate(self, where: str = "request") -> None:
        if not isinstance(self.timestamp, (int, float)) or self.timestamp != self.timestamp:
            raise ValueError(f"{where}.timestamp: must be a number")
        for name in ("input_length", "output_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{where}.{name}: must be an integer >= 0")
        if (self.token_ids is None) == (self.hash_ids is None):
            raise ValueError(f"{where}.token_ids: give exactly one of token_ids or hash_ids")
        ids = self.token_ids if self.token_ids is not None else self.hash_ids
        name = "token_ids" if self.token_ids is not None else "hash_ids"
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError(f"{where}.{name}: must be a list of integers")
        if self.token_ids is not None and len(self.token_ids) != self.input_length:
            raise ValueError(f"{where}.input_length: {self.input_length} != len(token_ids) {len(self.token_ids)}")
        if self.segments is not None:
            seg = self.segments
            if not isinstance(seg, list) or any(not isinstance(s, int) for s in seg):
                raise ValueError(f"{where}.segments: must be a list of integers")
            if any(b <= a for a, b in zip(seg, seg[1:])) or (seg and (seg[0] < 0 or seg[-1] > self.input_length)):
                raise ValueError(f"{where}.segments: must increase within [0, input_length]")
        for name in ("example_ids", "example_templates"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}.{name}: must be a list of strings")
            if self.segments is None or len(value) != len(self.segments) - 1:
                raise ValueError(f"{where}.{name}: need one entry per example block (len(segments) - 1)")
        for name in ("session_id", "app_id"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{where}.{name}: must be a string")

    @property
    def is_icl(self) -> bool:
        """Carries what PAIR needs: token ids, segment offsets, example ids and templates."""
        return self.token_ids is not None and self.example_ids is not None and self.example_templates is not None


@dataclass
class Trace:
    """Requests (file order) plus the header's block_size (None: the file had no header) and meta."""

    requests: list[TraceRequest]
    block_size: int | None = None
    meta: dict = field(default_factory=dict)

    def sorted_requests(self) -> list[TraceRequest]:
        """Requests by timestamp; equal timestamps keep file order."""
        return sorted(self.requests, key=lambda r: r.timestamp)


def write_trace(path: str, requests: Iterable[TraceRequest], block_size: int | None = None,
                meta: dict | None = None) -> int:
    """Write a header line and one line per request; returns the number of requests written."""
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(trace_header(block_size, meta))
        for req in requests:
            fh.write(json.dumps(req.to_json(), separators=(",", ":")) + "\n")
            count += 1
    return count


def _iter_lines(fh: IO[str]) -> Iterator[tuple[int, dict]]:
    for lineno, line in enumerate(fh, 1):
        line = line.strip()
        if not line:
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {lineno}: not valid JSON ({e.msg})") from None


def open_trace(path: str, fmt: str = "pairserve", block_size: int | None = None, limit: int | None = None,
               mooncake_time_scale: float = 1e-3) -> tuple[Trace, Iterator[TraceRequest]]:
    """Stream a trace: (Trace holding the header's block_size and meta, no requests; iterator of requests in
    file order). fmt "pairserve" (header optional) or "mooncake" (timestamp in ms → s by mooncake_time_scale,
    block_size 512 unless given). `block_size` overrides a missing header value. ValueError names the line
    and field of a bad record."""
    if fmt not in ("pairserve", "mooncake"):
        raise ValueError(f"format: must be 'pairserve' or 'mooncake' (got {fmt!r})")
    fh = open(path, encoding="utf-8")
    lines = _iter_lines(fh)
    head = Trace([], block_size=block_size)
    first = next(lines, None)
    if fmt == "mooncake":
        head.block_size = block_size or MOONCAKE_BLOCK_SIZE
        head.meta = {"source": "mooncake", "path": path}
    elif first is not None and isinstance(first[1], dict) and first[1].get("trace") == TRACE_NAME:
        lineno, obj = first
        if obj.get("version") != TRACE_VERSION:
            raise ValueError(f"line {lineno}.version: unsupported trace version {obj.get('version')!r}")
        bs = obj.get("block_size")
        if bs is not None and (not isinstance(bs, int) or bs < 1):
            raise ValueError(f"line {lineno}.block_size: must be a positive integer")
        head.block_size, head.meta = bs or block_size, obj.get("meta") or {}
        first = None

    def requests() -> Iterator[TraceRequest]:
        with fh:
            count = 0
            for lineno, obj in _chain(first, lines):
                if limit is not None and count >= limit:
                    return
                where = f"line {lineno}"
                if fmt == "mooncake":
                    yield _mooncake_request(obj, where, mooncake_time_scale)
                elif isinstance(obj, dict) and obj.get("trace") == TRACE_NAME:
                    raise ValueError(f"{where}: the header must be the first line")
                else:
                    yield TraceRequest.from_json(obj, where)
                count += 1

    return head, requests()


def _chain(first, rest):
    if first is not None:
        yield first
    yield from rest


def _mooncake_request(obj, where: str, time_scale: float) -> TraceRequest:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: must be a JSON object")
    for name in ("timestamp", "input_length", "output_length", "hash_ids"):
        if name not in obj:
            raise ValueError(f"{where}.{name}: missing")
    if not isinstance(obj["timestamp"], (int, float)):
        raise ValueError(f"{where}.timestamp: must be a number")
    req = TraceRequest(timestamp=obj["timestamp"] * time_scale, input_length=obj["input_length"],
                       output_length=obj["output_length"], hash_ids=obj["hash_ids"])
    req.validate(where)
    return req


def read_trace(path: str, limit: int | None = None, fmt: str = "pairserve", block_size: int | None = None) -> Trace:
    """The whole trace in memory (see open_trace for the arguments)."""
    head, requests = open_trace(path, fmt, block_size, limit)
    head.requests = list(requests)
    return head


def read_mooncake(path: str, block_size: int = MOONCAKE_BLOCK_SIZE, time_scale: float = 1e-3,
                  limit: int | None = None) -> Trace:
    """Mooncake's JSONL (timestamp in ms, input_length, output_length, hash_ids; other fields ignored)."""
    head, requests = open_trace(path, "mooncake", block_size, limit, time_scale)
    head.requests = list(requests)
    return head
