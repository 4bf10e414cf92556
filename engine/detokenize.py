"""Incremental detokenization of a stream of output token ids, with stop strings.

Two stages per request:
1. Decoding: each step decodes a small window — the tokens of the previous release (for context: byte-level
   and SentencePiece decoders treat a token differently at the start of a text) plus the new tokens — and
   diffs it against the decode of the context alone, so a step costs O(window), not O(output). Text whose
   decode ends in U+FFFD is held until more tokens arrive: it is usually a UTF-8 character split across tokens.
2. Stop strings: released text that ends in what could be the start of a stop string is held back too; when a
   stop string completes, the output is cut before it (or after it with no_stop_trim) and the stream ends.

The contract, checked by property tests: the concatenation of every `add` delta and `finish()` equals
`tokenizer.decode(all_ids)` cut at the first stop string (`cut_at_stop`). That relies on the tokenizer's
decode being concatenative at the points where a window decodes cleanly, true of byte-level BPE (Qwen2,
Llama 3, SmolLM) with clean_up_tokenization_spaces off, the transformers 5 default.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT_CHAR = "\ufffd"


def find_first_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """(start, stop) of the stop string occurrence in `text` that completes first reading left to right (the
    longer one when two end together), or None. Completing first, rather than starting first, is what a
    stream sees, so the answer does not depend on how the text was chunked."""
    best: tuple[int, int, str] | None = None  # (end, start, stop)
    for stop in stops:
        start = text.find(stop)
        if start >= 0:
            candidate = (start + len(stop), start, stop)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
    return None if best is None else (best[1], best[2])


def find_stop_in_tail(tail_text: str, stops: Sequence[str]) -> str | None:
    """The stop string that occurs in `tail_text` (the first to complete), or None. The scheduler calls this on
    the decoded tail of a request's output to decide whether the request is finished."""
    hit = find_first_stop(tail_text, stops)
    return None if hit is None else hit[1]


def cut_at_stop(text: str, stops: Sequence[str], no_stop_trim: bool = False) -> tuple[str, str | None]:
    """(text up to the first stop string — through it with no_stop_trim —, that stop or None)."""
    hit = find_first_stop(text, stops)
    if hit is None:
        return text, None
    start, stop = hit
    return text[:start + len(stop) if no_stop_trim else start], stop


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string (0 if none)."""
    longest = min(len(text), max((len(s) for s in stops), default=1) - 1)
    for n in range(longest, 0, -1):
        tail = text[-n:]
        if any(len(s) > n and s.startswith(tail) for s in stops):
            return n
    return 0


class IncrementalDetokenizer:
    """Turns one request's output token ids into text deltas as they arrive.

    `tokenizer` is a HF tokenizer (anything with `decode(ids, skip_special_tokens=...)`). Call `add` with each
    step's new ids and send what it returns; call `finish` once at the end to flush held-back text. After a
    stop string completes, `stopped_by` names it and `add` returns "".
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True, stop: Sequence[str] = (),
                 no_stop_trim: bool = False) -> None:
        if isinstance(stop, str):
            stop = (stop,)
        if any(s == "" for s in stop):
            raise ValueError("stop: stop strings must be non-empty")
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stops = tuple(stop)
        self._no_stop_trim = no_stop_trim
        self._ids: list[int] = []
        # Token offsets into _ids: [prefix_offset, read_offset) is context already released, decoded again only
        # to be diffed away; tokens from read_offset on have text not yet released by stage 1.
        self._prefix_offset = 0
        self._read_offset = 0
        self._pending = ""  # stage-2 holdback: a suffix that may start a stop string
        self._chunks: list[str] = []
        self._finished = False
        self.stopped_by: str | None = None

    @property
    def text(self) -> str:
        """All text returned so far by `add` and `finish`."""
        return "".join(self._chunks)

    @property
    def token_ids(self) -> list[int]:
        """Every id added so far (a copy)."""
        return list(self._ids)

    def add(self, new_ids: Sequence[int]) -> str:
        """Append this step's ids; return the text that became final (possibly "")."""
        if self._finished:
            raise RuntimeError("IncrementalDetokenizer.add after finish")
        if self.stopped_by is not None:
            return ""
        self._ids.extend(new_ids)
        return self._release(self._decode_new(final=False), final=False)

    def finish(self) -> str:
        """End of stream: return everything still held back (a split character decodes as U+FFFD, a partial
        stop string is real text). Further calls return ""."""
        if self._finished:
            return ""
        self._finished = True
        if self.stopped_by is not None:
            return ""
        return self._release(self._decode_new(final=True), final=True)

    def _decode(self, start: int, end: int | None = None) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip_special_tokens)

    def _decode_new(self, final: bool) -> str:
        """Stage 1: the text of the tokens from read_offset on, or "" while it may end in a split character."""
        if self._read_offset == len(self._ids):
            return ""
        context_text = self._decode(self._prefix_offset, self._read_offset)
        window_text = self._decode(self._prefix_offset)
        # Hold when the new tokens added no text yet (e.g. skipped special tokens) or end mid-character;
        # keeping the offsets keeps the window starting where the decoder is known to be in step.
        if not final and (len(window_text) <= len(context_text) or window_text.endswith(REPLACEMENT_CHAR)):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return window_text[len(context_text):]

    def _release(self, new_text: str, final: bool) -> str:
        """Stage 2: pass text through, holding back a possible stop-string start and cutting at a stop."""
        if not self._stops:
            return self._emit(new_text)
        text = self._pending + new_text
        # Held text can never contain a whole stop (it would have matched), so a stop here ends in new_text.
        cut_text, stop = cut_at_stop(text, self._stops, self._no_stop_trim)
        if stop is not None:
            self.stopped_by = stop
            self._pending = ""
            return self._emit(cut_text)
        hold = 0 if final else partial_stop_len(text, self._stops)
        self._pending = text[len(text) - hold:]
        return self._emit(text[:len(text) - hold])

    def _emit(self, delta: str) -> str:
        if delta:
            self._chunks.append(delta)
        return delta
