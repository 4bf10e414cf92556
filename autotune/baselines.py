"""Baselines in the same harness as AttMAML (autotune.smbo.run_search): default config, random search, GP-BO.

GP-BO: scikit-learn's GaussianProcessRegressor with a Matern(nu=2.5) kernel times a constant, plus a white-noise
term (measurements are noisy), normalize_y; the next point maximises Expected Improvement over the pool. The
first `n_init` points are random, as a GP needs data to fit. The length scale is shared by all knobs unless
`ard`: with at most a dozen points in 9 dimensions, per-knob length scales are not identifiable and cost 3-4x
the fitting time.
"""
from __future__ import annotations

import numpy as np

from autotune.gp import fit_gp_predict
from autotune.smbo import expected_improvement, nearest


class DefaultProposer:
    """Always the default config (nearest pool point); a budget of 1 is all it uses."""

    name = "default"

    def __init__(self, default_point: np.ndarray):
        self.default_point = np.asarray(default_point, dtype=np.float64)

    def propose(self, pool: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> int:
        return nearest(pool, self.default_point)


class RandomProposer:
    name = "random"

    def propose(self, pool: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> int:
        return int(rng.integers(len(pool)))


class GPProposer:
    name = "gp"

    def __init__(self, n_init: int = 2, xi: float = 0.0, restarts: int = 1, ard: bool = False):
        if n_init < 1:
            raise ValueError(f"n_init: must be >= 1 (got {n_init})")
        self.n_init, self.xi, self.restarts, self.ard = n_init, xi, restarts, ard

    def propose(self, pool: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> int:
        if len(y) < self.n_init:
            return int(rng.integers(len(pool)))
        mean, std = fit_gp_predict(x, y, pool, rng, self.restarts, self.ard)
        ei = expected_improvement(mean, std, float(y.min()), self.xi)
        if not np.any(ei > 0):
            return int(np.argmin(mean))
        return int(np.argmax(ei))

