"""Demonstration selection for ICL log parsing: offline TF-IDF embedding, DPP candidate pool, kNN examples.

The pipeline follows DivLog / InferLog: a diverse pool of labelled candidates (10% of the logs) is chosen by a
determinantal point process over the log embeddings; every query then gets its k nearest candidates as
examples, ordered so that the most similar example sits last (right before the query, where it helps most).

Tokenization (`tokenize`): split on anything that is not a letter or digit (whitespace, punctuation and `_`),
lowercase, then map digits-only tokens to `<num>` and tokens mixing letters and digits (hex ids, `t761`,
`u0`) to `<id>`. Variable values then share a token instead of each adding a rare, high-IDF dimension that
would make two lines of the same template look unrelated.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from logparse.loghub import LogDataset

_TOKEN_RE = re.compile(r"[^\W_]+")
NUM_TOKEN = "<num>"
ID_TOKEN = "<id>"
# Residual determinant gain below which the DPP considers every remaining item spanned by the chosen ones.
_DPP_EPS = 1e-10


def tokenize(text: str) -> list[str]:
    """Lowercased alphanumeric runs; digits-only -> `<num>`, mixed letters+digits -> `<id>`."""
    tokens = []
    for raw in _TOKEN_RE.findall(text.lower()):
        if raw.isdigit():
            tokens.append(NUM_TOKEN)
        elif any(ch.isdigit() for ch in raw):
            tokens.append(ID_TOKEN)
        else:
            tokens.append(raw)
    return tokens


class TfidfEmbedder:
    """TF-IDF over `tokenize` tokens: raw counts times smoothed IDF ln((1+n)/(1+df)) + 1, L2-normalized.

    Tokens never seen in `fit` are ignored by `transform`; a text with no known token embeds to zeros.
    """

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.idf: np.ndarray = np.zeros(0, dtype=np.float64)  # [vocab_size]

    def fit(self, texts: Sequence[str]) -> "TfidfEmbedder":
        doc_freq: Counter[str] = Counter()
        for text in texts:
            doc_freq.update(set(tokenize(text)))
        self.vocab = {tok: i for i, tok in enumerate(sorted(doc_freq))}
        n_docs = len(texts)
        self.idf = np.array(
            [math.log((1 + n_docs) / (1 + doc_freq[tok])) + 1.0 for tok in self.vocab], dtype=np.float64
        )
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), vocab_size] float64 rows of unit L2 norm (or all zeros)."""
        out = np.zeros((len(texts), len(self.vocab)), dtype=np.float64)
        for row, text in enumerate(texts):
            for tok, count in Counter(tokenize(text)).items():
                col = self.vocab.get(tok)
                if col is not None:
                    out[row, col] = count * self.idf[col]
        norms = np.linalg.norm(out, axis=1, keepdims=True)  # [n, 1]
        np.divide(out, norms, out=out, where=norms > 0)
        return out


def embed_logs(texts: Sequence[str]) -> np.ndarray:
    """Fit a TfidfEmbedder on `texts` and embed them: [len(texts), vocab_size], unit rows."""
    return TfidfEmbedder().fit(texts).transform(texts)


def dpp_select(embeddings: np.ndarray, k: int) -> list[int]:
    """Greedy MAP for a DPP with kernel L = E E^T (Chen et al. 2018, incremental Cholesky); returns k indices.

    Indices come in selection order and are distinct. Each step adds the item with the largest residual
    variance d_i^2 (the gain in log det L_S). Once every remaining item is (numerically) spanned by the chosen
    ones (max d_i^2 < 1e-10, e.g. fewer distinct rows than k), the rest are filled farthest-first: the item
    whose highest similarity to the chosen set is lowest, ties to the lowest index.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {embeddings.shape}")
    n_items = embeddings.shape[0]
    if not 0 <= k <= n_items:
        raise ValueError(f"k must be in [0, {n_items}], got {k}")
    if k == 0:
        return []
    emb = np.asarray(embeddings, dtype=np.float64)
    kernel = emb @ emb.T  # [n, n]
    cholesky_rows = np.zeros((k, n_items), dtype=np.float64)  # row t: t-th column of the Cholesky factor
    residual = np.diag(kernel).copy()  # [n] d_i^2
    chosen_mask = np.zeros(n_items, dtype=bool)
    selected: list[int] = []
    best = int(np.argmax(residual))
    while len(selected) < k and residual[best] >= _DPP_EPS:
        step = len(selected)
        selected.append(best)
        chosen_mask[best] = True
        # e_i = (L[j, i] - <c_j, c_i>) / d_j : the new Cholesky entries for every item i.
        e = (kernel[best] - cholesky_rows[:step, best] @ cholesky_rows[:step]) / math.sqrt(residual[best])
        cholesky_rows[step] = e
        residual = residual - e * e
        residual[chosen_mask] = -np.inf
        best = int(np.argmax(residual))
    if len(selected) < k:
        selected.extend(_farthest_fill(kernel, selected, k - len(selected)))
    assert len(set(selected)) == len(selected) == k
    return selected


def _farthest_fill(kernel: np.ndarray, selected: list[int], count: int) -> list[int]:
    n_items = kernel.shape[0]
    chosen_mask = np.zeros(n_items, dtype=bool)
    chosen_mask[selected] = True
    if selected:
        max_sim = kernel[selected].max(axis=0)  # [n] highest similarity to any chosen item
    else:
        max_sim = np.full(n_items, -np.inf)
    picks = []
    for _ in range(count):
        score = np.where(chosen_mask, np.inf, max_sim)
        pick = int(np.argmin(score))  # argmin returns the first (lowest) index on ties
        picks.append(pick)
        chosen_mask[pick] = True
        max_sim = np.maximum(max_sim, kernel[pick])
    return picks


def knn(query_vec: np.ndarray, candidate_vecs: np.ndarray, k: int = 5, exclude: Iterable[int] = ()) -> list[int]:
    """Indices (rows of `candidate_vecs`) of the k most cosine-similar candidates, MOST similar LAST.

    Rows are assumed L2-normalized (dot product = cosine). `exclude` rows are never returned (a candidate
    must not be its own example). Fewer than k indices come back when fewer candidates remain. Among equal
    similarities the lower index ranks as more similar, so the order is deterministic.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    sims = candidate_vecs @ query_vec  # [n_candidates]
    excluded = set(exclude)
    ranked = [int(i) for i in np.argsort(-sims, kind="stable") if int(i) not in excluded]
    return ranked[:k][::-1]


@dataclass(frozen=True)
class ParseQuery:
    """One log-parsing request: the log, its ground truth, and (input log, output template) examples."""

    query: str
    template: str
    examples: tuple[tuple[str, str], ...]
    line: int  # 0-based index of the query in its dataset
    is_candidate: bool


def build_stream(dataset: LogDataset, pool_frac: float = 0.1, k: int = 5) -> list[ParseQuery]:
    """InferLog's request stream for one dataset.

    A DPP pool of round(pool_frac * n) candidates (at least 1) is drawn from the TF-IDF embeddings; each log
    gets its k nearest candidates as examples (most similar last, outputs = the candidates' ground-truth
    templates). Order: every non-candidate log in line order, then the candidates in line order, each
    candidate's own line excluded from its examples.
    """
    if not 0.0 < pool_frac <= 1.0:
        raise ValueError(f"pool_frac must be in (0, 1], got {pool_frac}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n_lines = len(dataset)
    if n_lines == 0:
        return []
    embeddings = embed_logs(dataset.contents)  # [n_lines, vocab]
    pool_size = min(n_lines, max(1, round(pool_frac * n_lines)))
    pool = sorted(dpp_select(embeddings, pool_size))
    pool_pos = {line: pos for pos, line in enumerate(pool)}
    pool_vecs = embeddings[pool]  # [pool_size, vocab]

    def make(line: int) -> ParseQuery:
        own = pool_pos.get(line)
        picked = knn(embeddings[line], pool_vecs, k, exclude=() if own is None else (own,))
        examples = tuple((dataset.contents[pool[p]], dataset.templates[pool[p]]) for p in picked)
        return ParseQuery(dataset.contents[line], dataset.templates[line], examples, line, own is not None)

    non_candidates = [line for line in range(n_lines) if line not in pool_pos]
    return [make(line) for line in non_candidates] + [make(line) for line in pool]
