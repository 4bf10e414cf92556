"""The search harness, baselines, AttMAML proposer, meta-data files and the leave-one-task-out benchmark."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autotune.attmaml import AttMAMLConfig
from autotune.baselines import DefaultProposer, GPProposer, RandomProposer
from autotune.data import load_meta
from autotune.knobs import SearchSpace, latin_hypercube
from autotune.objective import Objective
from autotune.smbo import attmaml_proposer, meta_tasks_from_tables, run_search
from autotune.workload import FEATURE_NAMES
from bench.autotune import run as loto_run

SMALL = AttMAMLConfig(hidden=16, meta_steps=20, inner_steps=1, mc_samples=8)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lookup(x: np.ndarray, y: np.ndarray):
    def evaluate(u):
        row = int(np.argmin(((x - u) ** 2).sum(axis=1)))
        return float(y[row]), x[row]
    return evaluate


def bowl(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return ((x - centre) ** 2).sum(axis=1)


def test_run_search_visits_each_pool_point_once_and_tracks_the_best():
    rng = np.random.default_rng(0)
    x = rng.random((6, 3))
    y = bowl(x, np.full(3, 0.5))
    steps = run_search(RandomProposer(), lookup(x, y), x, budget=10, rng=rng)
    assert len(steps) == 6  # the pool ran out
    assert len({tuple(s.u) for s in steps}) == 6
    assert [s.best_loss for s in steps] == list(np.minimum.accumulate([s.loss for s in steps]))
    assert steps[-1].best_loss == y.min()
    with pytest.raises(ValueError, match="budget"):
        run_search(RandomProposer(), lookup(x, y), x, budget=0, rng=rng)


def test_default_proposer_picks_the_default_point():
    x = np.array([[0.1, 0.1], [0.5, 0.5], [0.9, 0.2]])
    steps = run_search(DefaultProposer(np.array([0.45, 0.55])), lookup(x, bowl(x, np.zeros(2))), x, 1,
                       np.random.default_rng(0))
    assert np.array_equal(steps[0].u, x[1])


def test_gp_bo_finds_the_bottom_of_a_smooth_bowl():
    rng = np.random.default_rng(1)
    x = latin_hypercube(300, 2, rng)
    y = bowl(x, np.array([0.3, 0.7]))
    steps = run_search(GPProposer(n_init=2), lookup(x, y), x, budget=12, rng=np.random.default_rng(2))
    assert steps[-1].best_loss - y.min() < 0.01
    rand = [run_search(RandomProposer(), lookup(x, y), x, 12, np.random.default_rng(s))[-1].best_loss
            for s in range(10)]
    assert steps[-1].best_loss < np.median(rand)


def test_attmaml_warm_starts_from_the_most_similar_task_and_then_improves():
    rng = np.random.default_rng(0)
    centres = [np.array([0.2, 0.2]), np.array([0.8, 0.8]), np.array([0.25, 0.75]), np.array([0.7, 0.3])]
    tables = []
    for c in centres:
        x = latin_hypercube(16, 2, rng)
        tables.append((x, bowl(x, c), c))
    target_centre = np.array([0.78, 0.82])
    proposer = attmaml_proposer(meta_tasks_from_tables(tables), target_centre, warm_start=1, config=SMALL)
    assert np.array_equal(proposer.warm_points[0], tables[1][0][np.argmin(tables[1][1])])
    pool = latin_hypercube(200, 2, rng)
    y = bowl(pool, target_centre)
    steps = run_search(proposer, lookup(pool, y), pool, budget=5, rng=np.random.default_rng(0))
    first = int(np.argmin(((pool - proposer.warm_points[0]) ** 2).sum(axis=1)))
    assert np.array_equal(steps[0].u, pool[first])  # the warm start comes first
    assert steps[0].loss < np.median(y)  # and the similar task's optimum is a good guess here
    assert steps[-1].best_loss <= steps[0].loss


def write_meta(path, n_tasks: int = 3, n_lhs: int = 8) -> SearchSpace:
    """Synthetic meta-data in the collector's format: p95 = exp(bowl around a task-specific centre)."""
    space = SearchSpace()
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for t in range(n_tasks):
            centre = rng.random(len(space))
            cfgs = [space.default_config()] + [space.decode(u) for u in latin_hypercube(n_lhs, len(space), rng)]
            cfgs.append(space.default_config())
            evals = []
            for i, cfg in enumerate(cfgs):
                p95 = float(np.exp(bowl(space.encode(cfg)[None], centre)[0])) * (1.1 if i == len(cfgs) - 1 else 1.0)
                evals.append({"kind": "default" if i in (0, len(cfgs) - 1) else "lhs", "config": cfg,
                              "metrics": {"p95_s": p95, "throughput_rps": 8 / p95}})
            feats = {n: float(rng.random()) for n in FEATURE_NAMES}
            f.write(json.dumps({"system": f"T{t}", "features": feats, "evals": evals}) + "\n")
    return space


def test_meta_file_round_trip_and_table_merges_repeated_configs(tmp_path):
    path = tmp_path / "meta.jsonl"
    space = write_meta(path)
    recs = load_meta(str(path))
    assert [r.system for r in recs] == ["T0", "T1", "T2"]
    x, y = recs[0].table(space, Objective(clock="wall"))
    assert x.shape == (9, len(space)) and y.shape == (9,)  # 8 LHS + the default, measured twice, once
    default_row = int(np.argmin(((x - space.encode(space.default_config())) ** 2).sum(axis=1)))
    p95s = [m["p95_s"] for m, k in zip(recs[0].metrics, recs[0].kinds) if k == "default"]
    assert np.isclose(y[default_row], np.mean(np.log(p95s)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"system": "X", "features": {}, "evals": []}) + "\n")
    with pytest.raises(ValueError, match="features"):
        load_meta(str(bad))


def test_leave_one_task_out_benchmark_on_synthetic_meta(tmp_path):
    path = tmp_path / "meta.jsonl"
    write_meta(path, n_lhs=5)
    methods = ["default", "random", "gp", "attmaml"]
    res = loto_run(load_meta(str(path)), Objective(clock="wall"), budget=6, seeds=1, tol=0.05,
                   methods=methods, config=SMALL)
    assert set(res["within"]) == set(methods)
    for m in ("random", "gp", "attmaml"):
        within = res["within"][m]
        assert len(within) == 6 and all(a <= b for a, b in zip(within, within[1:]))  # best-so-far only improves
        assert within[-1] == 1.0  # 6 evaluations exhaust a 6-point grid: the grid best is always found
    assert len(set(res["within"]["default"])) == 1  # the default spends one evaluation, then stays
    assert set(res["per_task"]) == {"T0", "T1", "T2"}
    assert all(np.isclose(r["default_noise"], 0.1) for r in res["per_task"].values())


def test_residual_gp_corrects_a_meta_prior_that_points_the_wrong_way():
    # Every meta-task has its optimum near (0.2, 0.2); the target's is at (0.85, 0.8). The meta-model alone keeps
    # proposing near its prior; the residual GP learns the target's own shape from the points it measures.
    rng = np.random.default_rng(0)
    tables = []
    for c in ([0.2, 0.2], [0.22, 0.18], [0.18, 0.24]):
        x = latin_hypercube(16, 2, rng)
        tables.append((x, bowl(x, np.array(c)), np.array(c)))
    pool = latin_hypercube(300, 2, rng)
    target = np.array([0.85, 0.8])
    y = bowl(pool, target)
    best = {}
    for residual in (False, True):
        proposer = attmaml_proposer(meta_tasks_from_tables(tables), np.array([0.2, 0.2]), warm_start=1,
                                    config=SMALL, residual_gp=residual)
        runs = [run_search(proposer, lookup(pool, y), pool, 10, np.random.default_rng(s))[-1].best_loss
                for s in range(3)]
        best[residual] = float(np.mean(runs))
    assert best[True] < 0.02 and best[True] < best[False], best
