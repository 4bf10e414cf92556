"""Recording live traffic as a request trace (format: docs/traces.md), keeping hashes only, never raw text or ids.

This is the writing half of the trace format; the readers, the full validator and the generators live in
bench/cachesim/traces.py, which re-exports what is here (the engine must not import bench). A recorded line holds:
  timestamp          seconds from the recorder's start to the request's arrival at the engine
  input_length       prompt tokens (after PAIR, for ICL requests: the prompt the engine actually ran)
  output_length      generated tokens
  hash_ids           chained block hashes of the prompt (block_hashes below)
  segments, example_ids, example_templates   for ICL requests: block end offsets, example ids, and
                     16-hex-digit hashes of the templates (only when every example's template is known)
Lines come in finish order, not arrival order; readers sort by timestamp.

Hash contract: hash i covers tokens [0, min((i + 1) * block_size, len)) — block i chained with hash i - 1
(blake2b, 8 bytes, masked to 63 bits), the first keyed by `salt`. So equal hashes at a position mean equal
prefixes, the last partial block gets a hash too, and a recorder with a secret salt writes traces that cannot
be checked against guessed prompts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from array import array
from typing import IO, Callable, Sequence

TRACE_NAME = "pairserve"
TRACE_VERSION = 1
HASH_MASK = (1 << 63) - 1
assert array("i").itemsize == 4, "token ids are hashed as 4-byte integers"

logger = logging.getLogger(__name__)


def _id_bytes(token_ids: Sequence[int]) -> bytes:
    """4 little-endian bytes per id: the hash input, fixed so a trace hashes the same on every platform."""
    astype = getattr(token_ids, "astype", None)
    if astype is not None:  # a numpy array: convert in C, without importing numpy here
        return astype("<i4").tobytes()
    ids = array("i", token_ids)
    if sys.byteorder == "big":
        ids.byteswap()
    return ids.tobytes()


class BlockHasher:
    """Chained block hashes of a token sequence that grows at the end (a chat session's history), so each
    token is hashed once however many turns repeat it. `hashes()` equals block_hashes(all tokens so far)."""

    def __init__(self, block_size: int, salt: bytes = b""):
        if block_size < 1:
            raise ValueError(f"block_size: must be >= 1 (got {block_size})")
        self.block_size = block_size
        self._full: list[int] = []  # hashes of the complete blocks
        self._prev = salt  # digest of the last complete block (the salt before the first)
        self._pending = b""  # bytes of the tokens after the last complete block

    def extend(self, token_ids: Sequence[int]) -> "BlockHasher":
        data = self._pending + _id_bytes(token_ids)
        step = 4 * self.block_size
        whole = len(data) - len(data) % step
        for start in range(0, whole, step):
            self._prev = hashlib.blake2b(self._prev + data[start:start + step], digest_size=8).digest()
            self._full.append(int.from_bytes(self._prev, "little") & HASH_MASK)
        self._pending = data[whole:]
        return self

    def hashes(self) -> list[int]:
        if not self._pending:
            return list(self._full)
        digest = hashlib.blake2b(self._prev + self._pending, digest_size=8).digest()
        return self._full + [int.from_bytes(digest, "little") & HASH_MASK]


def block_hashes(token_ids: Sequence[int], block_size: int, salt: bytes = b"") -> list[int]:
    """Chained 63-bit hashes of the blocks of token_ids, the last possibly partial (see the module docstring)."""
    return BlockHasher(block_size, salt).extend(token_ids).hashes()


def template_hash(template: str, salt: bytes = b"") -> str:
    """16 hex digits standing for an example template: equal templates, equal hashes; no text kept."""
    return hashlib.blake2b(salt + template.encode(), digest_size=8).hexdigest()


def trace_header(block_size: int | None, meta: dict | None = None) -> str:
    """The header line (with newline) that starts a trace file."""
    header = {"trace": TRACE_NAME, "version": TRACE_VERSION, "block_size": block_size, "meta": meta or {}}
    return json.dumps(header, separators=(",", ":")) + "\n"


def record_request(fh: IO[str], *, timestamp: float, token_ids: Sequence[int], output_length: int,
                   block_size: int, segments: Sequence[int] | None = None,
                   example_ids: Sequence[str] | None = None, example_templates: Sequence[str] | None = None,
                   session_id: str | None = None, app_id: str | None = None, salt: bytes = b"") -> None:
    """Append one request to an open trace file, without raw text or token ids: the prompt becomes block hashes,
    templates become template_hash()es. The caller writes trace_header(block_size) once first and flushes when
    it likes. ValueError names the field when the layout is inconsistent (nothing is written then)."""
    n = len(token_ids)
    if output_length < 0:
        raise ValueError(f"output_length: must be >= 0 (got {output_length})")
    if segments is not None:
        seg = list(segments)
        if any(b <= a for a, b in zip(seg, seg[1:])) or (seg and (seg[0] < 0 or seg[-1] > n)):
            raise ValueError(f"segments: must increase within [0, {n}] (got {seg})")
    for name, values in (("example_ids", example_ids), ("example_templates", example_templates)):
        if values is not None and (segments is None or len(values) != len(segments) - 1):
            raise ValueError(f"{name}: need one entry per example block (len(segments) - 1)")
    out: dict = {"timestamp": float(timestamp), "input_length": n, "output_length": int(output_length),
                 "hash_ids": block_hashes(token_ids, block_size, salt)}
    if segments is not None:
        out["segments"] = [int(s) for s in segments]
    if example_ids is not None:
        out["example_ids"] = [str(e) for e in example_ids]
    if example_templates is not None:
        out["example_templates"] = [template_hash(t, salt) for t in example_templates]
    for name, value in (("session_id", session_id), ("app_id", app_id)):
        if value is not None:
            out[name] = str(value)
    fh.write(json.dumps(out, separators=(",", ":")) + "\n")


class TraceRecorder:
    """Owns one trace file: opens it (truncating) and writes the header on construction, appends one flushed
    line per `record()`, and closes on `close()` (idempotent; records after it are dropped). Not thread-safe:
    the engine loop that calls it is single-threaded (Engine drives it under its lock).

    `clock` must be the clock that stamps request arrival times (time.monotonic for engine.scheduler.Req), so
    timestamps are arrival - start. Recording never fails the request being recorded: a bad layout
    (ValueError) is logged and skipped, an OSError is logged and closes the recorder.
    """

    def __init__(self, path: str, block_size: int = 16, salt: bytes = b"", meta: dict | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if block_size < 1:
            raise ValueError(f"trace_block_size: must be >= 1 (got {block_size})")
        self.path, self.block_size, self._salt = path, block_size, salt
        self.recorded = 0
        self.skipped = 0  # requests not recorded: the caller's skip()s (aborted ones) and bad layouts
        self._fh: IO[str] | None = open(path, "w", encoding="utf-8")
        self._fh.write(trace_header(block_size, {"source": "live", "start_unix": time.time(), **(meta or {})}))
        self._fh.flush()
        self.start = clock()

    @property
    def closed(self) -> bool:
        return self._fh is None

    def record(self, *, arrival_time: float, token_ids: Sequence[int], output_length: int,
               segments: Sequence[int] | None = None, example_ids: Sequence[str] | None = None,
               example_templates: Sequence[str] | None = None, session_id: str | None = None,
               app_id: str | None = None) -> None:
        """Append one finished request (arrival_time on the recorder's clock)."""
        if self._fh is None:
            return
        try:
            record_request(self._fh, timestamp=max(arrival_time - self.start, 0.0), token_ids=token_ids,
                           output_length=output_length, block_size=self.block_size, segments=segments,
                           example_ids=example_ids, example_templates=example_templates, session_id=session_id,
                           app_id=app_id, salt=self._salt)
            self._fh.flush()
        except ValueError:  # an inconsistent layout: nothing was written; the trace goes on without it
            logger.exception("trace recorder: request not recorded")
            self.skipped += 1
            return
        except OSError:
            # A full disk must not fail requests or take serving down: the trace ends here, and says so.
            logger.exception("trace recorder: writing %s failed; recording stops", self.path)
            self.close()
            return
        self.recorded += 1

    def skip(self) -> None:
        self.skipped += 1

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()


def open_trace_recorder(args) -> TraceRecorder | None:
    """The recorder a ServerArgs asks for (trace_file, trace_block_size), or None when trace_file is unset."""
    if args.trace_file is None:
        return None
    return TraceRecorder(args.trace_file, args.trace_block_size)
