"""Leave-one-task-out benchmark of the autotuners over the measured meta-data.

    python -m bench.autotune [--meta data/autotune_meta.jsonl] [--budget 12] [--objective p95] [--clock cpu]

Each Loghub system in turn is the target; the others are AttMAML's meta-data. The target's measured grid is
its lookup table: the candidate pool of every method is exactly the target's measured configs (its Latin
hypercube plus the default, whose two measurements are averaged), so every evaluation returns a real
measurement and nothing is interpolated. (Points from elsewhere, such as AttMAML's warm-start configs of
other tasks, snap to the nearest measured config.) For each method and budget b = 1..B the table reports the
share of runs whose best loss after b evaluations is within `--tol` (5%) of the grid's best, then the mean
number of evaluations needed (runs that never get there count as B + 1, shown with '>'). Random search and
GP-BO average over --seeds; AttMAML is meta-trained once per target and rerun with --seeds dropout seeds.
The noise column is the gap between the two measurements of the default config, in the same units.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from autotune.attmaml import AttMAMLConfig
from autotune.baselines import DefaultProposer, GPProposer, RandomProposer
from autotune.data import TaskRecord, load_meta
from autotune.knobs import SearchSpace
from autotune.objective import Objective, ObjectiveKind
from autotune.smbo import attmaml_proposer, meta_tasks_from_tables, run_search


def _trajectory(proposer, x: np.ndarray, y: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Best loss after each of `budget` evaluations on the lookup table (x [n, d], y [n])."""
    def evaluate(u: np.ndarray) -> tuple[float, np.ndarray]:
        row = int(np.argmin(((x - u) ** 2).sum(axis=1)))
        return float(y[row]), x[row]

    steps = run_search(proposer, evaluate, x, budget, np.random.default_rng(seed))
    best = np.array([s.best_loss for s in steps])
    return np.concatenate([best, np.full(budget - len(best), best[-1])])  # pool exhausted: nothing changes


def default_noise(rec: TaskRecord, objective: Objective) -> float:
    """Relative gap between the default config's two measurements (natural units)."""
    vals = [objective.value(m) for m, k in zip(rec.metrics, rec.kinds) if k == "default"]
    return abs(vals[0] - vals[-1]) / min(vals) if len(vals) >= 2 else float("nan")


def run(records: list[TaskRecord], objective: Objective, budget: int, seeds: int, tol: float,
        methods: list[str], config: AttMAMLConfig, residual_gp: bool = True) -> dict:
    space = SearchSpace()
    tables = [rec.table(space, objective) for rec in records]
    default_u = space.encode(space.default_config())
    within: dict[str, list[np.ndarray]] = {m: [] for m in methods}  # method -> [runs] of [budget] bools
    per_task: dict[str, dict[str, float]] = {}
    for t, rec in enumerate(records):
        x, y = tables[t]
        grid_best = float(y.min())
        others = [(*tables[i], records[i].feature_vector()) for i in range(len(records)) if i != t]
        per_task[rec.system] = {"points": len(y), "default_noise": default_noise(rec, objective)}
        for method in methods:
            runs = []
            if method == "default":
                runs.append(_trajectory(DefaultProposer(default_u), x, y, 1, 0).repeat(budget))
            elif method == "attmaml":
                proposer = attmaml_proposer(meta_tasks_from_tables(others), rec.feature_vector(), config=config,
                                            residual_gp=residual_gp)
                for s in range(seeds):
                    proposer.model.reseed(1000 + s)
                    runs.append(_trajectory(proposer, x, y, budget, s))
            else:
                for s in range(seeds):
                    proposer = RandomProposer() if method == "random" else GPProposer()
                    runs.append(_trajectory(proposer, x, y, budget, s))
            hits = [np.array([objective.within(b, grid_best, tol) for b in traj]) for traj in runs]
            within[method].extend(hits)
            per_task[rec.system][method] = float(np.mean([_needed(h, budget) for h in hits]))
    return {
        "budget": budget, "tol": tol, "objective": objective.kind.value, "clock": objective.clock,
        "within": {m: np.mean(within[m], axis=0).tolist() for m in methods},
        "mean_evals_needed": {m: float(np.mean([_needed(h, budget) for h in within[m]])) for m in methods},
        "never_within": {m: float(np.mean([not h.any() for h in within[m]])) for m in methods},
        "per_task": per_task,
    }


def _needed(hits: np.ndarray, budget: int) -> int:
    return int(np.argmax(hits)) + 1 if hits.any() else budget + 1


def print_report(res: dict, methods: list[str]) -> None:
    budget = res["budget"]
    print(f"objective {res['objective']} ({res['clock']} clock); share of runs within {res['tol']:.0%} "
          f"of the grid best, by evaluations used")
    print(f"{'method':9s}" + "".join(f"{b:>6d}" for b in range(1, budget + 1)) + "   mean evals  never")
    for m in methods:
        row = "".join(f"{v:6.2f}" for v in res["within"][m])
        print(f"{m:9s}{row}   {res['mean_evals_needed'][m]:10.2f}  {res['never_within'][m]:5.2f}")
    print(f"\nevaluations needed per task (mean over runs; {budget + 1} = '>{budget}')")
    print(f"{'task':11s}{'points':>7s}{'noise':>7s}" + "".join(f"{m:>9s}" for m in methods))
    for task, row in res["per_task"].items():
        cells = "".join(f"{row[m]:9.2f}" for m in methods)
        print(f"{task:11s}{row['points']:7d}{row['default_noise']:7.0%}{cells}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.autotune", description=__doc__.split("\n\n")[0])
    p.add_argument("--meta", default="data/autotune_meta.jsonl")
    p.add_argument("--budget", type=int, default=12)
    p.add_argument("--objective", choices=[k.value for k in ObjectiveKind], default="p95")
    p.add_argument("--slo", type=float, default=None, help="p95 SLO (s) for the throughput objective")
    p.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    p.add_argument("--tol", type=float, default=0.05)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--methods", default="default,random,gp,attmaml")
    p.add_argument("--meta-steps", type=int, default=AttMAMLConfig.meta_steps)
    p.add_argument("--no-residual-gp", action="store_true", help="AttMAML without its residual GP (ablation)")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    unknown = set(methods) - {"default", "random", "gp", "attmaml"}
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}")
    try:
        objective = Objective(ObjectiveKind(a.objective), a.slo, a.clock)
    except ValueError as e:
        raise SystemExit(f"--slo: {e}") from None
    import torch

    torch.set_num_threads(1)  # the meta-model's ops are tiny: more threads only add synchronisation
    records = load_meta(a.meta)
    if len(records) < 2:
        raise SystemExit(f"--meta: leave-one-task-out needs 2 or more tasks, {a.meta} has {len(records)}")
    t0 = time.monotonic()
    res = run(records, objective, a.budget, a.seeds, a.tol, methods, AttMAMLConfig(meta_steps=a.meta_steps),
              not a.no_residual_gp)
    print_report(res, methods)
    print(f"\n{len(records)} tasks, {a.seeds} seeds, {time.monotonic() - t0:.0f}s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
