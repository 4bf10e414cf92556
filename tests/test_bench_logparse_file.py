"""bench.logparse_file on the Loghub fixtures: per-system rows from python -m logparse's summaries, consistent with
each other (no-cache calls = lines, the oracle's GA), the table, the JSON and the plot."""
from __future__ import annotations

import json
import os

from bench.logparse_file.__main__ import main, table

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")


def test_oracle_rows_table_json_and_plot(tmp_path):
    out, png = str(tmp_path / "r.json"), str(tmp_path / "p.png")
    rows = main(["--data", FIXTURES, "--systems", "HDFS,Proxifier", "--engine-model", "none", "--json", out,
                 "--plot", png])
    assert [r["system"] for r in rows] == ["HDFS", "Proxifier"]
    for r in rows:
        assert r["lines"] == 40 == r["oracle_calls_nocache"] and r["oracle_calls_cache"] < 40
        assert r["call_reduction"] == 40 / r["oracle_calls_cache"] and r["oracle_GA"] == 1.0
    with open(out) as f:
        report = json.load(f)
    assert report["rows"] == json.loads(json.dumps(rows)) and report["totals"]["min_oracle_GA"] == 1.0
    assert os.path.getsize(png) > 0 and "| HDFS | 40 |" in table(rows)


def test_order_runs_through_the_engine(tmp_path, tiny_model_dir):
    rows = main(["--data", FIXTURES, "--systems", "HDFS", "--engine-model", tiny_model_dir, "--engine-limit", "20",
                 "--dtype", "float32", "--concurrency", "4"])
    r = rows[0]
    for order in ("arrival", "prefix"):
        assert 0 <= r[f"{order}_hit_rate"] <= 1 and r[f"{order}_wall_s"] > 0 and r[f"{order}_calls"] >= 1
    assert r["kv_cache_tokens"] == max(int(r["mean_prompt_tokens"] * 6), 256)
    # the pool is sized from the prompts as rendered before any engine runs: the engine's own count agrees (the
    # fixture's 4 candidates are every call's examples, so PAIR substitutes none)
    assert r["arrival_prompt_tokens"] == round(r["mean_prompt_tokens"] * r["arrival_calls"])
    assert 0 <= r["prefix_cached_tokens"] <= r["prefix_prompt_tokens"] and r["example_tokens"] > 0
