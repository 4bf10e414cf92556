"""Labelled demonstrations for the parser's LLM calls: a candidate pool and each line's k nearest candidates.

Where the labels come from (`python -m logparse`):
- `--ground-truth CSV` (or the oracle's CSV): DivLog / InferLog's protocol, as bench.logparse uses it: a DPP picks a
  diverse pool of round(pool_frac × rows) of the CSV's labelled lines (TF-IDF embeddings, logparse.selection); a
  line that is itself in the pool (same LineId and Content) never gets its own label as an example.
- `--examples CSV`: any labelled set (columns Content and EventTemplate, e.g. a loghub structured CSV of another
  sample of the same system); every row is a candidate.
Each line then gets its k nearest candidates by TF-IDF cosine similarity (the embedder is fitted on the file's
lines and the candidates), most similar LAST, right before the query.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from logparse.selection import TfidfEmbedder, dpp_select, knn


@dataclass(frozen=True)
class Labelled:
    """A labelled log: content, template, and its LineId in the parsed file when it comes from that file."""

    content: str
    template: str
    line_id: int | None = None


def read_labelled_csv(path: str) -> list[Labelled]:
    """Rows of a CSV with `Content` and `EventTemplate` columns (LineId, when present, is kept). ValueError if the
    file cannot be read or lacks a column."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("Content", "EventTemplate") if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path!r} lacks column(s) {missing} (need Content and EventTemplate)")
            rows = []
            for i, row in enumerate(reader):
                line_id = row.get("LineId")
                rows.append(Labelled(row["Content"], row["EventTemplate"],
                                     int(line_id) if line_id and line_id.strip().isdigit() else i + 1))
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path!r} is not a UTF-8 CSV") from None
    if not rows:
        raise ValueError(f"{path!r} holds no rows")
    return rows


class Demonstrations:
    """k nearest labelled candidates per query (most similar last)."""

    def __init__(self, pool: Sequence[Labelled], fit_texts: Sequence[str], k: int = 5):
        if not pool:
            raise ValueError("demonstrations: the candidate pool is empty")
        if k < 1:
            raise ValueError(f"k: must be >= 1, got {k}")
        self.pool = list(pool)
        self.k = k
        self.embedder = TfidfEmbedder().fit(list(fit_texts) + [c.content for c in self.pool])
        self.pool_vecs = self.embedder.transform([c.content for c in self.pool])  # [pool, vocab]
        self._own = {c.line_id: i for i, c in enumerate(self.pool) if c.line_id is not None}

    def examples_for(self, content: str, line_id: int | None = None) -> tuple[tuple[str, str], ...]:
        """(input, template) pairs for one query; the query's own pool entry (same LineId) is excluded."""
        vec = self.embedder.transform([content])[0]
        own = self._own.get(line_id) if line_id is not None else None
        if own is not None and self.pool[own].content != content:
            own = None  # the same LineId in another file: not this line
        picked = knn(vec, self.pool_vecs, self.k, exclude=() if own is None else (own,))
        if not picked:  # a pool of one candidate that is the query itself: use it rather than nothing
            picked = [0]
        return tuple((self.pool[i].content, self.pool[i].template) for i in picked)


def dpp_pool(rows: Sequence[Labelled], pool_frac: float = 0.1) -> list[Labelled]:
    """A DPP-diverse pool of round(pool_frac × rows) labelled rows (TF-IDF over their contents), in row order."""
    if not 0.0 < pool_frac <= 1.0:
        raise ValueError(f"pool_frac: must be in (0, 1], got {pool_frac}")
    if not rows:
        raise ValueError("demonstrations: no labelled rows to choose candidates from")
    texts = [r.content for r in rows]
    emb = TfidfEmbedder().fit(texts).transform(texts)  # [rows, vocab]
    size = min(len(rows), max(1, round(pool_frac * len(rows))))
    return [rows[j] for j in sorted(dpp_select(np.asarray(emb), size))]
