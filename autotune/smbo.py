"""Sequential model-based optimisation over a candidate pool, and the AttMAML proposer.

Everything minimises a loss (autotune.objective.Objective.loss). A search is: for each of `budget` steps the
proposer picks a point from the pool of candidates not yet evaluated (points in [0, 1]^d), `evaluate` measures
it and returns (loss, the point actually measured), and the history grows. The pool is where live runs and
benchmarks differ: a live run scores a Latin hypercube of ~2000 points; the leave-one-task-out benchmark
scores the target task's measured grid (so every evaluation is a lookup of a real measurement).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
from scipy.stats import norm

from autotune.attmaml import AttMAML, AttMAMLConfig, MetaTask


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """EI for minimisation: E[max(best - xi - Y, 0)] with Y ~ N(mean, std^2); std = 0 gives max(best - xi - mean, 0)."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    gain = best - xi - mean
    safe = np.where(std > 1e-12, std, 1.0)
    z = gain / safe
    ei = gain * norm.cdf(z) + safe * norm.pdf(z)
    return np.where(std > 1e-12, np.maximum(ei, 0.0), np.maximum(gain, 0.0))


class Proposer(Protocol):
    name: str

    def propose(self, pool: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> int:
        """Index into `pool` [m, d] of the next point, given the history x [t, d], y [t] (losses)."""


@dataclass(frozen=True)
class Step:
    u: np.ndarray  # the point measured
    loss: float
    best_loss: float  # best so far, this step included


def run_search(proposer: Proposer, evaluate: Callable[[np.ndarray], tuple[float, np.ndarray]], pool: np.ndarray,
               budget: int, rng: np.random.Generator, on_step: Callable[[int, Step], None] | None = None
               ) -> list[Step]:
    """`budget` proposals from `pool` [m, d] (each pool row at most once); returns one Step per evaluation."""
    if budget < 1:
        raise ValueError(f"budget: must be >= 1 (got {budget})")
    available = np.ones(len(pool), dtype=bool)
    xs: list[np.ndarray] = []
    ys: list[float] = []
    steps: list[Step] = []
    for i in range(budget):
        if not available.any():
            break
        idx_map = np.flatnonzero(available)
        x_hist = np.array(xs).reshape(len(xs), pool.shape[1])
        pick = idx_map[proposer.propose(pool[idx_map], x_hist, np.array(ys), rng)]
        available[pick] = False
        loss, u = evaluate(pool[pick])
        xs.append(np.asarray(u, dtype=np.float64))
        ys.append(float(loss))
        steps.append(Step(xs[-1], ys[-1], min(ys)))
        if on_step is not None:
            on_step(i, steps[-1])
    return steps


def nearest(pool: np.ndarray, u: np.ndarray) -> int:
    return int(np.argmin(((pool - u) ** 2).sum(axis=1)))


class AttMAMLProposer:
    """Warm start with the best configs of the most similar tasks, then EI on the adapted meta-model.

    `model` is meta-trained for this target (see `attmaml_proposer`); `warm_points` are visited first (nearest
    pool point each). Each later step fine-tunes the meta-init on the target's observations (centred by
    their mean) and picks the pool point of highest EI under the MC-dropout mean/std. With `residual_gp`, once
    `residual_min` points are measured a GP is fitted to what the adapted model still gets wrong at them
    (observed - predicted) and EI uses model + GP mean and the two variances summed: the meta-model is the
    prior, the GP corrects it where the target differs. Without it a few SGD steps from the meta-init could
    not move the model off a wrong shape, and the search stalled near the meta-tasks' optimum.
    """

    name = "attmaml"

    def __init__(self, model: AttMAML, warm_points: list[np.ndarray], xi: float = 0.0, residual_gp: bool = True,
                 residual_min: int = 3):
        self.model, self.warm_points, self.xi = model, list(warm_points), xi
        self.residual_gp, self.residual_min = residual_gp, residual_min

    def propose(self, pool: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> int:
        if len(y) < len(self.warm_points):
            return nearest(pool, self.warm_points[len(y)])
        centre = float(y.mean()) if len(y) else 0.0
        params = self.model.adapt(x, y - centre)
        mean, std = self.model.predict(params, pool)
        if self.residual_gp and len(y) >= self.residual_min:
            from autotune.gp import fit_gp_predict

            fitted, _ = self.model.predict(params, x)
            r_mean, r_std = fit_gp_predict(x, (y - centre) - fitted, pool, rng)
            mean, std = mean + r_mean, np.sqrt(std ** 2 + r_std ** 2)
        best = float(y.min() - centre) if len(y) else float(mean.min())
        ei = expected_improvement(mean, std, best, self.xi)
        if not np.any(ei > 0):
            return int(np.argmin(mean))  # nothing expected to improve: exploit the model
        return int(np.argmax(ei))


def attmaml_proposer(meta_tasks: list[MetaTask], target_features: np.ndarray, warm_start: int = 2,
                     config: AttMAMLConfig = AttMAMLConfig(), xi: float = 0.0,
                     residual_gp: bool = True) -> AttMAMLProposer:
    """Meta-train AttMAML towards the target and take the best point of each of the `warm_start` tasks with
    the highest attention weights (most similar first)."""
    if not meta_tasks:
        raise ValueError("meta_tasks: AttMAML needs at least one task of meta-data")
    model = AttMAML(meta_tasks[0].x.shape[1], config)
    model.meta_train(meta_tasks, target_features)
    order = np.argsort(-model.weights, kind="stable")
    warm = [meta_tasks[i].x[int(np.argmin(meta_tasks[i].y))] for i in order[:warm_start]]
    return AttMAMLProposer(model, warm, xi, residual_gp)


def meta_tasks_from_tables(tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[MetaTask]:
    """[(x [n, d], losses [n], features [f])] -> MetaTasks with losses centred per task."""
    return [MetaTask(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64) - float(np.mean(y)),
                     np.asarray(f, dtype=np.float64)) for x, y, f in tables]
