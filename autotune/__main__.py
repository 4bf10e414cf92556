"""Tune a live engine's scheduling knobs on one Loghub system's log-parsing traffic.

    python -m autotune --task HDFS --budget 8 [--method attmaml|gp|random|default] [--server URL]
                       [--data /work/shared/data/loghub2k] [--meta data/autotune_meta.jsonl]

Without --server an in-process Engine (bench preset, or --model) serves the traffic. With --server URL the
traffic and knob changes go to a running server: `POST {URL}/generate` {"icl", "sampling_params"} and
`POST {URL}/update_config` {knob: value, ...} (both 200 on success; the server must have been started with
max_running_requests >= the searched maximum). --model must then name the served checkpoint's directory
(its tokenizer gives the oracle output lengths).

Each step applies one config live and measures a window (autotune.objective); the trajectory and the best
config (JSON) are printed. AttMAML meta-trains on the meta-data file's tasks other than the target (the target
is held out by default, so its own measurements never inform its search; --no-holdout puts it back, which only
makes sense for ablations) with attention towards the target's features, warm-starts from the most similar
tasks' best configs, then scores a 2000-point Latin hypercube by EI. `--api-key` is sent as a Bearer token to
a server started with one.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from autotune.baselines import DefaultProposer, GPProposer, RandomProposer
from autotune.data import bench_model_dir, load_meta
from autotune.knobs import SearchSpace, latin_hypercube
from autotune.objective import ClosedLoop, EngineTarget, Objective, ObjectiveKind, ServerTarget
from autotune.smbo import Step, attmaml_proposer, meta_tasks_from_tables, run_search
from autotune.workload import build_workload

METHODS = ("attmaml", "gp", "random", "default")


def make_proposer(method: str, space: SearchSpace, objective: Objective, features: np.ndarray, meta_path: str,
                  exclude: str | None, seed: int):
    default_u = space.encode(space.default_config())
    if method == "default":
        return DefaultProposer(default_u), [default_u]
    if method == "random":
        return RandomProposer(), [default_u]
    if method == "gp":
        return GPProposer(), [default_u]
    from autotune.attmaml import AttMAMLConfig

    records = meta_records(meta_path, exclude)
    tables = [(*r.table(space, objective), r.feature_vector()) for r in records]
    proposer = attmaml_proposer(meta_tasks_from_tables(tables), features, config=AttMAMLConfig(seed=seed))
    return proposer, [default_u] + proposer.warm_points  # warm points join the pool so they are hit exactly


def meta_records(meta_path: str, exclude: str | None) -> list:
    """The meta-training tasks: every record of the meta-data file but the target's (`exclude`); prints which."""
    records = load_meta(meta_path)
    kept = [r for r in records if r.system != exclude]
    held = f"target {exclude} held out" if exclude else "target included (--no-holdout)"
    print(f"meta-training on {len(kept)} of {len(records)} tasks in {meta_path} ({held})", flush=True)
    return kept


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autotune", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help="Loghub system, e.g. HDFS")
    p.add_argument("--budget", type=int, required=True, help="configs to evaluate")
    p.add_argument("--method", choices=METHODS, default="attmaml")
    p.add_argument("--server", default=None, help="URL of a running server (default: in-process engine)")
    p.add_argument("--data", default="/work/shared/data/loghub2k", help="Loghub-2k dir")
    p.add_argument("--meta", default="data/autotune_meta.jsonl", help="meta-data (python -m autotune.data)")
    p.add_argument("--holdout", action=argparse.BooleanOptionalAction, default=True,
                   help="leave the target's own record out of the meta-training set (default; --no-holdout keeps it)")
    p.add_argument("--api-key", default=None, help="with --server: sent as 'Authorization: Bearer KEY'")
    p.add_argument("--model", default="bench", help="'bench' or a checkpoint dir (with --server: its tokenizer)")
    p.add_argument("--objective", choices=[k.value for k in ObjectiveKind], default="p95")
    p.add_argument("--slo", type=float, default=None, help="p95 SLO (s) for --objective throughput")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None, help="default: cpu in-process, wall with --server")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--requests", type=int, default=400, help="stream prefix replayed (cycled)")
    p.add_argument("--kv-cache-tokens", type=int, default=16384)
    p.add_argument("--pool", type=int, default=2000, help="Latin-hypercube candidates scored per step")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    if a.budget < 1:
        raise SystemExit("--budget: must be >= 1")
    clock = a.clock or ("wall" if a.server else "cpu")
    if a.server and clock == "cpu":
        raise SystemExit("--clock: cpu measures this process, which does not run the server's engine")
    try:
        objective = Objective(ObjectiveKind(a.objective), a.slo, clock)
    except ValueError as e:
        raise SystemExit(f"--slo: {e}") from None
    space = SearchSpace()
    model_path = bench_model_dir() if a.model == "bench" else a.model
    cap = int(space.dims[space.names.index("max_running_requests")].high)
    engine = None
    if a.server:
        from engine.models.loader import load_tokenizer

        tokenizer = load_tokenizer(model_path)
        target = ServerTarget(a.server, api_key=a.api_key)
    else:
        from engine import Engine

        engine = Engine(model_path=model_path, kv_cache_tokens=a.kv_cache_tokens, max_running_requests=cap,
                        num_threads=1 if clock == "cpu" else None)
        tokenizer, target = engine.tokenizer, EngineTarget(engine)
    workload = build_workload(a.data, a.task, tokenizer, a.requests)
    print(f"task {a.task}: " + ", ".join(f"{k}={v:.3g}" for k, v in workload.features.items()))
    proposer, extra = make_proposer(a.method, space, objective, workload.feature_vector(), a.meta,
                                    a.task if a.holdout else None, a.seed)
    rng = np.random.default_rng(a.seed)
    pool = np.vstack([latin_hypercube(a.pool, len(space), rng), np.array(extra)])  # [pool + extra, d]
    loop = ClosedLoop(target, workload, a.concurrency)
    measured: list[dict] = []

    def evaluate(u: np.ndarray) -> tuple[float, np.ndarray]:
        cfg = space.decode(u)
        m = loop.measure(cfg, a.warmup, a.window)
        measured.append({"config": cfg, "metrics": m})
        return objective.loss(m), space.encode(cfg)

    def show(i: int, step: Step) -> None:
        m = measured[-1]["metrics"]
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in measured[-1]["config"].items()}
        print(f"[{i + 1}/{a.budget}] {objective.kind.value} ({clock} clock) {objective.value(m):.3f}, best "
              f"{objective.value_of_loss(step.best_loss):.3f} | wall: p95 {m['p95_s']:.2f}s "
              f"{m['throughput_rps']:.2f} req/s | {json.dumps(shown)}", flush=True)

    try:
        loop.measure(space.default_config(), 0, 2 * a.concurrency)  # priming: fill the cache, warm the engine
        steps = run_search(proposer, evaluate, pool, a.budget, rng, show)
    finally:
        loop.stop()
        target.close()
        if engine is not None:
            engine.shutdown()
    best = int(np.argmin([s.loss for s in steps]))
    print("best config:", json.dumps(measured[best]["config"]))
    print(f"best {objective.kind.value} ({clock} clock): {objective.value(measured[best]['metrics']):.3f}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
