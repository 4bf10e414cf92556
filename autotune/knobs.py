"""The autotune search space: the engine's live knobs (engine/knobs.py) mapped to the unit cube [0, 1]^d.

Each dimension is one knob. Numeric knobs map linearly, or in log space where the engine's table flags
`log_scale`; integers round to the nearest value in that space. A categorical knob with n choices owns one
dimension cut into n equal bins (choice i encodes to the bin centre (i + 0.5) / n), so every point of the cube
decodes to a valid config and `decode(encode(cfg)) == cfg`. Ranges may be narrowed for a workload (the engine's
own ranges are wide enough for any deployment, e.g. 1..100000 table entries) but never widened.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from engine.knobs import LIVE_KNOBS, Knob, apply_knobs  # noqa: F401 (re-exported for autotune users)

# Narrower ranges for the log-parsing workload on the bench preset: the rest of the engine's range is either
# equivalent (more running slots than requests in flight) or pathological (64-token prefill budgets).
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "max_running_requests": (1, 16),
    "chunked_prefill_size": (64, 8192),
    "max_prefill_tokens": (128, 16384),
    "schedule_conservativeness": (0.05, 2.0),
    "lpm_aging_seconds": (0.1, 60.0),
    "pair_table_capacity": (4, 4096),
}


@dataclass(frozen=True)
class Dim:
    """One searchable knob: the engine's Knob plus the (possibly narrowed) range searched."""

    knob: Knob
    low: float | None = None
    high: float | None = None

    @property
    def name(self) -> str:
        return self.knob.name

    @property
    def categorical(self) -> bool:
        return self.knob.kind is str

    def _to_space(self, v: float) -> float:
        return math.log(v) if self.knob.log_scale else float(v)

    def encode(self, value: Any) -> float:
        if self.categorical:
            if value not in self.knob.choices:
                raise ValueError(f"{self.name}: must be one of {self.knob.choices} (got {value!r})")
            return (self.knob.choices.index(value) + 0.5) / len(self.knob.choices)
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.name}: must be in [{self.low}, {self.high}] to be searched (got {value!r})")
        lo, hi = self._to_space(self.low), self._to_space(self.high)
        return 0.0 if hi == lo else (self._to_space(value) - lo) / (hi - lo)

    def decode(self, u: float) -> Any:
        u = min(max(float(u), 0.0), 1.0)
        if self.categorical:
            n = len(self.knob.choices)
            return self.knob.choices[min(int(u * n), n - 1)]
        lo, hi = self._to_space(self.low), self._to_space(self.high)
        x = lo + u * (hi - lo)
        value = math.exp(x) if self.knob.log_scale else x
        if self.knob.kind is int:
            # Round in the search space so log-scaled ints round-trip exactly and stay inside the range.
            return int(min(max(round(value), self.low), self.high))
        return float(min(max(value, self.low), self.high))


class SearchSpace:
    """An ordered list of Dims; configs are {knob name: value} dicts over exactly these names."""

    def __init__(self, names: tuple[str, ...] | None = None, ranges: Mapping[str, tuple[float, float]] | None = None):
        names = tuple(LIVE_KNOBS) if names is None else tuple(names)
        ranges = {**DEFAULT_RANGES, **(ranges or {})}
        dims = []
        for name in names:
            knob = LIVE_KNOBS.get(name)
            if knob is None:
                raise ValueError(f"{name}: not a live knob (live: {', '.join(LIVE_KNOBS)})")
            if knob.kind is str:
                dims.append(Dim(knob))
                continue
            low, high = ranges.get(name, (knob.low, knob.high))
            if not knob.low <= low < high <= knob.high:
                raise ValueError(f"{name}: search range [{low}, {high}] must lie inside the engine's "
                                 f"[{knob.low}, {knob.high}] and be non-empty")
            dims.append(Dim(knob, low, high))
        self.dims: tuple[Dim, ...] = tuple(dims)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)

    def __len__(self) -> int:
        return len(self.dims)

    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        """[d] float64 point in [0, 1]^d; ValueError names a missing or out-of-range knob."""
        missing = [n for n in self.names if n not in config]
        if missing:
            raise ValueError(f"{missing[0]}: missing from the config")
        return np.array([d.encode(config[d.name]) for d in self.dims], dtype=np.float64)

    def decode(self, u: np.ndarray) -> dict[str, Any]:
        u = np.asarray(u, dtype=np.float64)
        if u.shape != (len(self.dims),):
            raise ValueError(f"u: expected shape ({len(self.dims)},), got {u.shape}")
        return {d.name: d.decode(x) for d, x in zip(self.dims, u)}

    def default_config(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The engine's defaults (or `base`, e.g. an engine's start args) clipped into the searched ranges."""
        out = {}
        for d in self.dims:
            value = base[d.name] if base is not None and d.name in base else d.knob.default()
            if not d.categorical:
                value = type(value)(min(max(value, d.low), d.high))
            out[d.name] = value
        return out

    def canonical(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config as the space represents it (log-rounded ints): decode(encode(config))."""
        return self.decode(self.encode(config))


def latin_hypercube(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """[n, d] points in [0, 1)^d with exactly one point in each of the n equal strata of every dimension."""
    if n < 1 or d < 1:
        raise ValueError(f"n and d must be >= 1 (got n={n}, d={d})")
    strata = np.stack([rng.permutation(n) for _ in range(d)], axis=1)  # [n, d] stratum index per dim
    return (strata + rng.random((n, d))) / n
