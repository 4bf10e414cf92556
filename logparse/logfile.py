"""Reading log lines for `python -m logparse`: a whole file, stdin (`-`), or a growing file (`--follow`).

Lines are decoded as UTF-8 one by one and stripped of surrounding whitespace (loghub's reader strips them too, and
the Loghub-2k `Content` ground truth has no trailing spaces). A line that is not valid UTF-8, or is empty after
stripping, or does not match the header format, is SKIPPED and counted by reason; it takes no LineId (LineIds
number the parsed lines 1, 2, ... as loghub's structured CSVs do). A file whose first 8 KiB hold a NUL byte, or
whose lines are mostly not UTF-8, is refused as binary.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from logparse.formats import CONTENT_FIELD, HeaderFormat

BINARY_PROBE_BYTES = 8192


@dataclass(frozen=True)
class LogLine:
    """One parsed line: `line_id` 1-based over kept lines, `fields` the header fields (Content excluded)."""

    line_id: int
    content: str
    fields: dict[str, str]


@dataclass
class LineReader:
    """Turns raw byte lines into LogLines with the header format; counts skipped lines by reason."""

    fmt: HeaderFormat
    skipped: Counter = field(default_factory=Counter)
    raw_lines: int = 0
    kept: int = 0

    def feed(self, raw: bytes) -> LogLine | None:
        self.raw_lines += 1
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.skipped["not_utf8"] += 1
            return None
        if not text:
            self.skipped["empty"] += 1
            return None
        parts = self.fmt.split(text)
        if parts is None:
            self.skipped["format_mismatch"] += 1
            return None
        content = parts.pop(CONTENT_FIELD).strip()
        if not content:
            self.skipped["empty_content"] += 1
            return None
        self.kept += 1
        return LogLine(self.kept, content, parts)


def open_log(path: str) -> BinaryIO:
    """Open FILE (or stdin for `-`) for binary reading; ValueError with a clear message if it cannot be read or
    looks binary."""
    if path == "-":
        return sys.stdin.buffer
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a log file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror or e}") from None
    head = f.read(BINARY_PROBE_BYTES)
    if b"\0" in head:
        f.close()
        raise ValueError(f"{path!r} looks like a binary file (NUL bytes in its first {BINARY_PROBE_BYTES} bytes)")
    f.seek(0)
    return f


def read_all(f: BinaryIO, reader: LineReader) -> list[LogLine]:
    """Every line of `f` through `reader`. ValueError if no line is left (binary, or the format matches none)."""
    lines = [ln for ln in (reader.feed(raw) for raw in f) if ln is not None]
    check_some_kept(reader)
    return lines


def check_some_kept(reader: LineReader) -> None:
    if reader.kept:
        if reader.skipped["not_utf8"] * 2 > reader.raw_lines:
            raise ValueError(f"input looks binary: {reader.skipped['not_utf8']} of {reader.raw_lines} lines are "
                             f"not UTF-8")
        return
    if reader.raw_lines == 0:
        raise ValueError("input holds no lines")
    if reader.skipped["not_utf8"] * 2 > reader.raw_lines:
        raise ValueError(f"input looks binary: {reader.skipped['not_utf8']} of {reader.raw_lines} lines are not "
                         f"UTF-8")
    raise ValueError(f"format {reader.fmt.spec!r} matches none of the {reader.raw_lines} lines "
                     f"(skipped: {dict(reader.skipped)}); pass --format raw, or the header format of these logs")


def follow(f: BinaryIO, poll_s: float = 0.2, max_batch: int = 256) -> Iterator[list[bytes]]:
    """Tail a growing file: yield batches of complete new lines as they appear, and an empty batch after each idle
    poll (so the caller can time out); never ends by itself.

    A partial last line (no newline yet) is held back until its newline arrives."""
    partial = b""
    while True:
        batch: list[bytes] = []
        while len(batch) < max_batch:
            chunk = f.readline()
            if not chunk:
                break
            if not chunk.endswith(b"\n"):
                partial += chunk
                continue
            batch.append(partial + chunk)
            partial = b""
        if not batch:
            time.sleep(poll_s)
        yield batch
