"""bench.logparse end to end on the Loghub fixtures with the tiny model: JSON fields, their consistency with each
other and with the per-request trace, and the CLI's variant parsing."""
from __future__ import annotations

import json
import os

import pytest

from bench.logparse.stream import Variant, main, parse_variants, pool_tokens
from bench.logparse.report import RequestRecord, format_pivot, format_table

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")
FIELDS = ("system", "requests", "throughput_rps", "mean_latency_s", "p95_latency_s", "p95_ttft_s", "token_hit_rate",
          "prefill_tokens_computed", "GA", "PA", "FGA", "FTA", "template_multiset_preserved", "ceiling_hit_rate")


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, trace_path = str(out / "r.json"), str(out / "t.jsonl")
    rows = main(["--data", FIXTURES, "--systems", "HDFS,Apache", "--limit", "20", "--model", tiny_model_dir,
                 "--dtype", "float32", "--pair", "native,table@6p,none@nocache", "--concurrency", "4",
                 "--json", json_path, "--trace-out", trace_path])
    with open(json_path) as f:
        report = json.load(f)
    with open(trace_path) as f:
        trace = [json.loads(line) for line in f]
    return rows, report, trace, tiny_model_dir


def test_json_records_are_complete_and_consistent(run):
    rows, report, _, _ = run
    assert report["results"] == json.loads(json.dumps(rows))
    assert report["args"]["limit"] == 20 and report["args"]["systems"] == ["HDFS", "Apache"]
    assert [(r["system"], r["variant"]) for r in rows] == [
        (s, v) for s in ("HDFS", "Apache") for v in ("native", "table@6p", "none@nocache")]
    for r in rows:
        assert all(name in r for name in FIELDS), sorted(set(FIELDS) - set(r))
        assert r["requests"] == 20 and r["refinements_audited"] == 20
        assert r["template_multiset_preserved"] is True
        demo_hits = r["token_hit_rate"] - r["hit_beyond_ceiling"]
        assert 0 <= demo_hits <= r["ceiling_hit_rate"] <= 1 and r["token_hit_rate"] <= 1
        assert r["throughput_rps"] > 0 and 0 < r["p95_ttft_s"] <= r["p95_latency_s"]
        assert all(0 <= r[m] <= 1 for m in ("GA", "PA", "FGA", "FTA"))
        if r["radix_cache"]:
            assert r["token_hit_rate"] > 0.5  # 20 requests over a 4-candidate pool share most of each prompt
        else:
            assert r["token_hit_rate"] == 0 and r["prefill_tokens_computed"] == r["prompt_tokens_total"]
            assert r["speedup_vs_nocache"] == 1.0
    small = [r for r in rows if r["variant"] == "table@6p"]
    assert all(r["kv_cache_tokens"] < r2["kv_cache_tokens"] for r, r2 in zip(small, rows[::3]))


def test_trace_adds_up_to_the_records(run):
    rows, _, trace, _ = run
    for r in rows:
        mine = [t for t in trace if (t["system"], t["variant"]) == (r["system"], r["variant"])]
        assert sorted(t["index"] for t in mine) == list(range(20))
        prompt = sum(t["prompt_tokens"] for t in mine)
        cached = sum(t["cached_tokens"] for t in mine)
        assert prompt == r["prompt_tokens_total"] and cached / prompt == pytest.approx(r["token_hit_rate"])
        # Every uncached prompt token is computed exactly once (ample pool: no retraction).
        assert r["prefill_tokens_computed"] == prompt - cached
        assert all(t["submit_s"] <= t["first_token_s"] <= t["end_s"] for t in mine)


def test_oracle_output_length_is_the_backticked_template(run):
    from engine.models.loader import load_tokenizer
    from logparse import build_stream, load_system

    rows, _, _, model_dir = run
    tok = load_tokenizer(model_dir)
    for system in ("HDFS", "Apache"):
        stream = build_stream(load_system(FIXTURES, system))[:20]
        want = sum(len(tok.encode(f"`{q.template}`", add_special_tokens=False)) for q in stream)
        assert all(r["completion_tokens_total"] == want for r in rows if r["system"] == system)


def test_tables_have_a_row_per_run_and_per_system(run):
    rows = run[0]
    assert len(format_table(rows).splitlines()) == 2 + len(rows)
    pivot = format_pivot(rows).splitlines()
    assert len(pivot) == 2 + 2 and "native / none@nocache" in pivot[0] and "hit table@6p" in pivot[0]
    hdfs = next(r for r in rows if r["system"] == "HDFS" and r["variant"] == "native")
    assert f"| HDFS | {hdfs['ceiling_hit_rate']:.3f} | {hdfs['token_hit_rate']:.3f} |" in pivot[2]


def test_variant_parsing_and_pool_sizes():
    assert parse_variants("none,native@40p,table@nocache,native@5000", "ample") == [
        Variant("none", "ample"), Variant("native", "40p"), Variant("table", "nocache"), Variant("native", "5000")]
    assert [v.name for v in parse_variants("table", "nocache")] == ["table@nocache"]
    for bad in ("magic", "native@", "native@-3", "native@xp"):
        with pytest.raises(ValueError, match="--pair"):
            parse_variants(bad, "ample")
    records = [RequestRecord(i, i, "q", "t", 5, 3, 10, prompt_tokens=100 * (i + 1)) for i in range(4)]  # mean 250
    assert pool_tokens(Variant("native", "4p"), records, [10] * 4, 2, 10**9) == 1000
    assert pool_tokens(Variant("native", "1p"), records, [10] * 4, 2, 10**9) == 411  # never below one request
    assert pool_tokens(Variant("none", "ample"), records, [10] * 4, 2, 10**9) == 1000 + 40 + 2 * 411
    assert pool_tokens(Variant("none", "ample"), records, [10] * 4, 2, 500) == 500


def test_requests_the_engine_refuses_are_counted_and_left_out():
    """A prompt longer than the model's context is refused at submission (ValueError): the run goes on, and the
    summary counts it as rejected instead of serving it or failing the run."""
    from bench.logparse.stream import run_closed_loop
    from bench.logparse.report import summarize

    class FakeEngine:
        def generate(self, icl, sampling_params):
            if icl["query"] == "too long":
                raise ValueError("icl: 5090 tokens do not fit the context length 4096")
            meta = {"completion_tokens": 1, "finish_reason": {"type": "length"}, "prompt_tokens": 10,
                    "cached_tokens": 4, "icl_order": [0], "icl_substituted": 0, "first_token_latency": 0.25}
            return {"text": "`a <*>`", "meta_info": meta}

    queries = ["a 1", "too long", "a 2"]
    records = [RequestRecord(i, i, q, "a <*>", 1, 2, 3, prompt_tokens=10) for i, q in enumerate(queries)]
    wall = run_closed_loop(FakeEngine(), [{"query": q} for q in queries], [{}] * 3, records, 2, "test")
    assert [bool(r.rejected) for r in records] == [False, True, False]
    assert "context length" in records[1].rejected and records[1].trace()["rejected"] == records[1].rejected
    assert records[0].first_token_s == records[0].submit_s + 0.25  # TTFT: the engine's first_token_latency
    row = summarize(records, wall, 12, 0, 0)
    assert row["requests"] == 2 and row["rejected"] == 1
    assert row["prompt_tokens_total"] == 20 and row["token_hit_rate"] == 0.4 and row["GA"] == 1.0
    with pytest.raises(ValueError, match="all 1 requests were rejected"):
        summarize(records[1:2], wall, 0, 0, 0)


def test_token_bound_column_beside_native_over_none():
    from bench.logparse.report import token_bound

    def row(variant, rps, prefill):
        return {"system": "S", "variant": variant, "pair": variant, "radix_cache": True, "throughput_rps": rps,
                "token_hit_rate": 0.9, "ceiling_hit_rate": 0.95, "prefill_tokens_computed": prefill,
                "completion_tokens_total": 100}

    none, native = row("none", 10.0, 500), row("native", 12.0, 200)
    assert token_bound(native, none) == pytest.approx(600 / 300)
    pivot = format_pivot([none, native]).splitlines()
    assert pivot[0].endswith("| native / none | token bound native / none |")
    assert pivot[2].endswith("| 1.20x | 2.00x |")
    assert "token bound" not in format_pivot([native])  # no `none` run: no bound to show


def test_dummy_quantized_weights_reach_the_engine(tiny_model_dir, monkeypatch):
    """--load-format / --quantization are handed to the engine as its flags of the same names, and the run serves
    every request with them."""
    import engine

    flags = []

    class SpyEngine(engine.Engine):
        def __init__(self, **kw):
            flags.append(kw)
            super().__init__(**kw)

    monkeypatch.setattr(engine, "Engine", SpyEngine)
    rows = main(["--data", FIXTURES, "--systems", "Apache", "--limit", "4", "--model", tiny_model_dir, "--dtype",
                 "float32", "--load-format", "dummy", "--quantization", "int8", "--pair", "none", "--concurrency",
                 "2"])
    assert [(f["load_format"], f["quantization"]) for f in flags] == [("dummy", "int8")]
    assert rows[0]["requests"] == 4 and rows[0]["rejected"] == 0
