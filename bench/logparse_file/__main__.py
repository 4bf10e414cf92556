"""`python -m logparse` over Loghub-2k files: what the template cache and the whole-file order buy.

    python -m bench.logparse_file --data DIR [--systems all|HDFS,Spark] [--limit 0] [--engine-model bench]
        [--engine-limit 0] [--kv-prompts 6] [--concurrency 16] [--demo-limit 200] [--demo-nocache-limit 0]
        [--json OUT] [--plot OUT.png]

Per system, every run goes through `logparse.cli.run` (the product itself) on `<S>/<S>_2k.log` with `--format
loghub`, and reads its summary.json:
1. pure oracle (`--model oracle:CSV`, no engine), first `--limit` lines: LLM calls with the template cache (whole-file
   order) and without it (`--no-cache`: one call per line), GA / PA with the cache;
2. order (`--model oracle:CSV --oracle-engine ENGINE_MODEL`, first `--engine-limit` lines): each call goes through
   the engine's icl path with the right answer's length, under a KV pool of `--kv-prompts` mean prompts' worth
   of tokens (the mean over the run's calls as sent, counted in the engine's tokenizer before anything runs, via
   `logparse.cli.oracle_calls`; `example_tokens`, the tokens of the calls' distinct examples, says whether the
   pool could hold them all: with 6 it cannot on 9 of the 12 Loghub systems), `--order arrival` then `--order
   prefix`, each on a fresh engine; token hit rate, wall seconds, LLM calls per second;
3. the demo model (SmolLM2-135M) on the first `--demo-limit` lines, with the cache (and, if
   `--demo-nocache-limit` > 0, without it on that many lines): LLM calls, GA / PA (the floor: a 135M model).
Prints a markdown table; `--json` keeps every summary; `--plot` draws calls per line and the orders' hit rates.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile

from bench.common.model_paths import resolve_model
from logparse import LOGHUB_SYSTEMS, list_systems
from logparse.backends import icl_body
from logparse.cli import oracle_calls
from logparse.cli import run as logparse_run

ROUND = 4


def parse_summary(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="logparse-bench-") as out:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = logparse_run([*args, "--out", out, "--no-progress"])
        if rc != 0:
            raise RuntimeError(f"logparse {' '.join(args)} exited {rc}: {err.getvalue().strip()}")
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)


def prompt_sizes(args: list[str], engine_dir: str) -> tuple[float, int]:
    """(mean prompt tokens, tokens of the distinct examples) of the calls `python -m logparse args` makes, as the
    parser sends them (PAIR may substitute an example of the same template later), in the engine's tokenizer and
    chat template. Nothing runs."""
    from engine.models.loader import load_tokenizer
    from engine.pair.render import SegmentEncoder, render_icl

    tokenizer = load_tokenizer(engine_dir)
    encoder = SegmentEncoder(tokenizer)
    calls = oracle_calls(args)
    total, examples = 0, {}
    for call in calls:
        prompt = render_icl(tokenizer, icl_body(call, "none"), encoder)
        total += len(prompt.head_ids) + sum(len(ex.ids) for ex in prompt.examples) + len(prompt.tail_ids)
        examples.update((ex.id, len(ex.ids)) for ex in prompt.examples)
    return total / max(len(calls), 1), sum(examples.values())


def run_system(a, system: str, engine_dir: str | None) -> dict:
    log = os.path.join(a.data, system, f"{system}_2k.log")
    gt = log + "_structured_corrected.csv"
    base = [log, "--format", "loghub", "--concurrency", str(a.concurrency)]
    oracle = [*base, "--model", f"oracle:{gt}"]
    row: dict = {"system": system}
    lim = ["--limit", str(a.limit)]
    cached = parse_summary([*oracle, *lim])
    nocache = parse_summary([*oracle, *lim, "--no-cache"])
    row.update(lines=cached["lines"], templates=cached["templates"], oracle_calls_cache=cached["llm_calls"],
               oracle_calls_nocache=nocache["llm_calls"], oracle_GA=cached["GA"], oracle_PA=cached["PA"],
               call_reduction=nocache["llm_calls"] / max(cached["llm_calls"], 1))
    if engine_dir is not None:
        lim = ["--limit", str(a.engine_limit)]
        eng = [*oracle, *lim, "--oracle-engine", engine_dir, "--dtype", a.dtype]
        # size the pool from the calls' mean prompt, then compare the orders under it
        mean_prompt, example_tokens = prompt_sizes([*oracle, *lim], engine_dir)
        kv = max(int(mean_prompt * a.kv_prompts), 256)
        for order in ("arrival", "prefix"):
            s = parse_summary([*eng, "--order", order, "--kv-cache-tokens", str(kv)])
            row[f"{order}_hit_rate"] = s["token_hit_rate"]
            row[f"{order}_wall_s"] = s["wall_seconds"]
            row[f"{order}_calls"] = s["llm_calls"]
            row[f"{order}_calls_per_s"] = s["llm_calls"] / s["wall_seconds"] if s["wall_seconds"] else None
            row[f"{order}_prompt_tokens"] = s["prompt_tokens"]
            row[f"{order}_cached_tokens"] = s["cached_tokens"]
        row["mean_prompt_tokens"] = mean_prompt
        row["example_tokens"] = example_tokens  # what a pool must hold to keep every example the calls use
        row["kv_cache_tokens"] = kv
        row["order_speedup"] = row["arrival_wall_s"] / row["prefix_wall_s"] * row["prefix_calls"] / row["arrival_calls"]
        row["order_hit_gain_points"] = 100 * (row["prefix_hit_rate"] - row["arrival_hit_rate"])
    if a.demo_limit:
        demo = [*base, "--model", "demo", "--ground-truth", gt, "--dtype", a.dtype]
        s = parse_summary([*demo, "--limit", str(a.demo_limit)])
        row.update(demo_lines=s["lines"], demo_calls_cache=s["llm_calls"], demo_GA=s["GA"], demo_PA=s["PA"],
                   demo_wall_s=s["wall_seconds"], demo_hit_rate=s["token_hit_rate"])
        if a.demo_nocache_limit:
            s = parse_summary([*demo, "--limit", str(a.demo_nocache_limit), "--no-cache"])
            row.update(demo_nocache_lines=s["lines"], demo_calls_nocache=s["llm_calls"], demo_nocache_GA=s["GA"],
                       demo_nocache_PA=s["PA"], demo_nocache_wall_s=s["wall_seconds"])
    return row


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.{ROUND}g}" if isinstance(v, float) else str(v)


COLUMNS = ("system", "lines", "templates", "oracle_calls_nocache", "oracle_calls_cache", "call_reduction", "oracle_GA",
           "kv_cache_tokens", "example_tokens", "arrival_calls", "arrival_hit_rate", "prefix_hit_rate", "arrival_wall_s", "prefix_wall_s",
           "order_speedup",
           "demo_lines", "demo_calls_cache", "demo_GA", "demo_PA", "demo_calls_nocache", "demo_nocache_GA")


def table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(out)


def totals(rows: list[dict]) -> dict:
    n = len(rows)
    out = {"mean_call_reduction": sum(r["call_reduction"] for r in rows) / n,
           "total_call_reduction": sum(r["oracle_calls_nocache"] for r in rows) / sum(r["oracle_calls_cache"] for r in rows),
           "mean_oracle_GA": sum(r["oracle_GA"] for r in rows) / n, "min_oracle_GA": min(r["oracle_GA"] for r in rows)}
    if all("order_speedup" in r for r in rows):
        out["mean_arrival_hit_rate"] = sum(r["arrival_hit_rate"] for r in rows) / n
        out["mean_prefix_hit_rate"] = sum(r["prefix_hit_rate"] for r in rows) / n
        out["sum_wall_arrival_over_prefix"] = sum(r["arrival_wall_s"] for r in rows) / sum(r["prefix_wall_s"] for r in rows)
        for order in ("arrival", "prefix"):  # over every call of every system
            out[f"all_{order}_hit_rate"] = (sum(r[f"{order}_cached_tokens"] for r in rows)
                                            / max(sum(r[f"{order}_prompt_tokens"] for r in rows), 1))
            out[f"all_{order}_calls_per_s"] = (sum(r[f"{order}_calls"] for r in rows)
                                               / sum(r[f"{order}_wall_s"] for r in rows))
    if all("demo_GA" in r for r in rows):
        out["mean_demo_GA"] = sum(r["demo_GA"] for r in rows) / n
        out["mean_demo_PA"] = sum(r["demo_PA"] for r in rows) / n
    return out


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["system"] for r in rows]
    x = np.arange(len(rows))
    has_order = all("prefix_hit_rate" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_order else 1, figsize=(13 if has_order else 7, 4), squeeze=False)
    ax = axes[0][0]
    ax.bar(x - 0.2, [r["oracle_calls_nocache"] / r["lines"] for r in rows], 0.4, label="no cache")
    ax.bar(x + 0.2, [r["oracle_calls_cache"] / r["lines"] for r in rows], 0.4, label="template cache (oracle)")
    if all("demo_calls_cache" in r for r in rows):
        ax.plot(x + 0.2, [r["demo_calls_cache"] / r["demo_lines"] for r in rows], "k^", label="template cache (demo)")
    ax.set_yscale("log")
    ax.set_ylabel("LLM calls per line")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.legend(fontsize=8)
    ax.set_title("LLM calls with and without the template cache")
    if has_order:
        ax = axes[0][1]
        ax.bar(x - 0.2, [r["arrival_hit_rate"] for r in rows], 0.4, label="arrival order")
        ax.bar(x + 0.2, [r["prefix_hit_rate"] for r in rows], 0.4, label="whole-file prefix order")
        ax.set_ylabel("token hit rate")
        ax.set_ylim(0, 1)
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.legend(fontsize=8)
        ax.set_title("Order under a small KV pool (oracle answers, engine prefill)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="Loghub-2k dir (one sub-dir per system, with the raw .log)")
    ap.add_argument("--systems", default="all")
    ap.add_argument("--limit", type=int, default=0, help="oracle runs: first N lines (0: all)")
    ap.add_argument("--engine-model", default="bench", help="engine for the order runs: bench | tiny | demo | DIR | none")
    ap.add_argument("--engine-limit", type=int, default=0, help="order runs: first N lines (0: all)")
    ap.add_argument("--kv-prompts", type=float, default=6.0, help="order runs: KV pool in mean prompts")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--demo-limit", type=int, default=0, help="demo-model runs: first N lines (0: skip)")
    ap.add_argument("--demo-nocache-limit", type=int, default=0, help="demo-model run without cache (0: skip)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    a = ap.parse_args(argv)
    available = list_systems(a.data)
    a.system_list = [s for s in LOGHUB_SYSTEMS if s in available] if a.systems == "all" else a.systems.split(",")
    missing = [s for s in a.system_list if s not in available
               or not os.path.isfile(os.path.join(a.data, s, f"{s}_2k.log"))]
    if missing:
        ap.error(f"--systems: {missing} have no <S>_2k.log + structured CSV under {a.data}")
    return a


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    engine_dir = None if a.engine_model == "none" else resolve_model(a.engine_model)
    rows = []
    for system in a.system_list:
        row = run_system(a, system, engine_dir)
        rows.append(row)
        print(json.dumps({k: round(v, ROUND) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"args": {k: v for k, v in vars(a).items()}, "rows": rows, "totals": totals(rows)}, f,
                          indent=1)
    print()
    print(table(rows))
    print()
    print(json.dumps({k: round(v, ROUND) for k, v in totals(rows).items()}))
    if a.plot:
        plot(rows, a.plot)
    return rows


if __name__ == "__main__":
    main()
