"""Grid sweep of engine settings × workloads on the REAL engine: one JSON record per cell, plus plots.

    python -m bench.sweep --config sweeps/NAME.yaml [--out results.jsonl] [--plot-dir DIR] [--limit-cells N]

Config (YAML; unknown keys are errors):
  name: str                   used in output file names
  model: tiny | bench | demo | PATH   (tiny/bench: a fresh deterministic checkpoint from engine.models.tiny)
  max_new_tokens: int         cap on each request's output (ignore_eos, so outputs have this length or the trace's)
  engine: {flag: value}       fixed ServerArgs flags for every cell
  grid:                       lists; every combination is one cell (request_rate is the workload's, req/s)
    kv_cache_tokens, radix_eviction_policy, schedule_policy, pair_policy, request_rate, + any other flag
  workloads: list of {name, kind: chat|shared|icl|loghub, n, seed, params: {generator kwargs}}
             loghub also takes data, systems, max_lines (InferLog ICL requests sent as `icl`, so PAIR applies)
Each cell replays each workload open-loop (requests submitted at their arrival times, scaled to the cell's
request_rate) through Engine.async_generate and records throughput, latency percentiles (from the scheduled
arrival to completion) and the engine's own cache counters (get_stats).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time

import numpy as np
import yaml

from bench.common.model_paths import resolve_model
from bench.tracegen import GENERATORS, loghub_queries

TOP_KEYS = {"name", "model", "max_new_tokens", "engine", "grid", "workloads"}
WORKLOAD_KEYS = {"name", "kind", "n", "seed", "params", "data", "systems", "max_lines"}
FIRST_ID = 50  # synthetic token ids are folded into [FIRST_ID, vocab) so any tokenizer accepts them


def load_config(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict):
        raise ValueError(f"config: {path} must hold a mapping")
    for key in set(cfg) - TOP_KEYS:
        raise ValueError(f"config.{key}: unknown key (expected {sorted(TOP_KEYS)})")
    for key in ("name", "grid", "workloads"):
        if key not in cfg:
            raise ValueError(f"config.{key}: missing")
    for i, w in enumerate(cfg["workloads"]):
        for key in set(w) - WORKLOAD_KEYS:
            raise ValueError(f"config.workloads[{i}].{key}: unknown key")
        if w.get("kind") not in (*GENERATORS, "loghub"):
            raise ValueError(f"config.workloads[{i}].kind: must be one of {[*GENERATORS, 'loghub']}")
    for key, values in cfg["grid"].items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"config.grid.{key}: must be a non-empty list")
    return cfg


def cells(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def build_workload(spec: dict, tokenizer, max_new_tokens: int) -> list[dict]:
    """Requests at rate 1 req/s: [{"t", "input_ids" | "icl", "max_new_tokens"}] in arrival order."""
    kind, seed, n = spec["kind"], spec.get("seed", 0), spec.get("n", 50)
    params = dict(spec.get("params") or {})
    if kind == "loghub":
        from logparse import to_icl

        out = []
        for t, _, query in loghub_queries(spec["data"], list(spec["systems"]), seed, rate=1.0,
                                          max_lines=spec.get("max_lines"), **params)[:n]:
            icl = to_icl(query)
            del icl["refine"]  # the cell's pair_policy decides
            out.append({"t": t, "icl": icl, "max_new_tokens": max_new_tokens})
        return out
    vocab = len(tokenizer)
    reqs = GENERATORS[kind](n, seed=seed, rate=1.0, **params)
    return [{"t": r.timestamp, "input_ids": [FIRST_ID + t % (vocab - FIRST_ID) for t in r.token_ids],
             "max_new_tokens": max(1, min(r.output_length, max_new_tokens))} for r in reqs]


async def _replay(engine, requests: list[dict], rate: float) -> list[float]:
    """Submit each request at t / rate seconds after the start; returns each request's latency (s)."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(req: dict) -> float:
        due = start + req["t"] / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        sp = {"max_new_tokens": req["max_new_tokens"], "temperature": 0, "ignore_eos": True}
        if "icl" in req:
            await engine.async_generate(icl=req["icl"], sampling_params=sp)
        else:
            await engine.async_generate(input_ids=req["input_ids"], sampling_params=sp)
        return loop.time() - due

    return list(await asyncio.gather(*(one(r) for r in requests)))


def run_cell(model_path: str, engine_flags: dict, cell: dict, workload: list[dict]) -> dict:
    from engine import Engine

    flags = {**engine_flags, **{k: v for k, v in cell.items() if k != "request_rate"}}
    rate = float(cell.get("request_rate", 1.0))
    with Engine(model_path=model_path, **flags) as eng:
        t = time.perf_counter()
        latencies = asyncio.run(_replay(eng, workload, rate))
        wall = time.perf_counter() - t
        stats = eng.get_stats()
    lat = np.asarray(latencies)
    return {"requests": len(workload), "wall_s": wall, "throughput_rps": len(workload) / wall,
            "latency_p50_s": float(np.percentile(lat, 50)), "latency_p95_s": float(np.percentile(lat, 95)),
            "token_hit_rate": stats["token_hit_rate"],
            "prefill_tokens_computed": stats["prefill_tokens_computed_total"],
            "evicted_tokens": stats["evicted_tokens_total"], "retractions": stats["num_retractions_total"]}


def plot(records: list[dict], out_dir: str, name: str) -> list[str]:
    """Per workload: token hit rate and p95 latency vs kv_cache_tokens, one line per other-setting combo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    paths = []
    for workload in dict.fromkeys(r["workload"] for r in records):
        rows = [r for r in records if r["workload"] == workload and "error" not in r]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        series: dict[str, list] = {}
        for r in rows:
            label = "/".join(str(v) for k, v in r["cell"].items() if k != "kv_cache_tokens")
            series.setdefault(label, []).append(r)
        for label, rs in series.items():
            rs.sort(key=lambda r: r["cell"]["kv_cache_tokens"])
            kv = [r["cell"]["kv_cache_tokens"] for r in rs]
            axes[0].plot(kv, [r["token_hit_rate"] for r in rs], marker="o", label=label)
            axes[1].plot(kv, [r["latency_p95_s"] for r in rs], marker="o", label=label)
        for ax, ylabel in zip(axes, ("token hit rate", "p95 latency (s)")):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide
            ax.set_xlabel("kv_cache_tokens")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{name}: {workload}")
        fig.tight_layout()
        path = os.path.join(out_dir, f"sweep_{name}_{workload}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", default=None, help="JSONL of records (default: sweep_<name>.jsonl)")
    ap.add_argument("--plot-dir", default=".")
    ap.add_argument("--limit-cells", type=int, default=None, help="run only the first N cells (smoke runs)")
    a = ap.parse_args(argv)
    cfg = load_config(a.config)
    from engine.models.loader import load_tokenizer

    model_path = resolve_model(cfg.get("model", "tiny"))
    tokenizer = load_tokenizer(model_path)
    max_new = int(cfg.get("max_new_tokens", 16))
    workloads = {w.get("name", w["kind"]): build_workload(w, tokenizer, max_new) for w in cfg["workloads"]}
    out_path = a.out or f"sweep_{cfg['name']}.jsonl"
    records = []
    with open(out_path, "w", encoding="utf-8") as out:
        for cell in cells(cfg["grid"])[:a.limit_cells]:
            for wname, workload in workloads.items():
                record = {"sweep": cfg["name"], "workload": wname, "cell": cell}
                try:
                    record.update(run_cell(model_path, dict(cfg.get("engine") or {}), cell, workload))
                except ValueError as e:  # e.g. a pool too small for the longest request
                    record["error"] = str(e)
                records.append(record)
                out.write(json.dumps(record) + "\n")
                out.flush()
                print(json.dumps(record), flush=True)
    for path in plot(records, a.plot_dir, cfg["name"]):
        print("plot:", path)


if __name__ == "__main__":
    main()
