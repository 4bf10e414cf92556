"""bench.scaleout end to end on the tiny model: 2 replicas behind the real sglang-router, both policies."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("sglang_router")

FIXTURES = Path(__file__).parent / "fixtures" / "loghub"


def test_scaleout_through_the_real_router_writes_the_contract(tiny_model_dir, tmp_path):
    from bench.scaleout.__main__ import main

    out = tmp_path / "scaleout.json"
    result = main(["--replicas", "2", "--policy", "cache_aware,round_robin", "--data", str(FIXTURES),
                   "--systems", "HDFS,Apache,BGL", "--limit", "6", "--num-requests", "15", "--model", tiny_model_dir,
                   "--kv-cache-tokens", "3000", "--concurrency", "3", "--num-threads", "1", "--output-len", "3",
                   "--log-dir", str(tmp_path / "logs"), "--output-file", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [r["policy"] for r in result["runs"]] == ["cache_aware", "round_robin"]
    assert set(result["ratios"]) == {"cache_aware"}
    for run in result["runs"]:
        for key in ("token_hit_rate", "request_throughput", "p50_latency", "p95_latency", "completed", "icl_refined"):
            assert key in run, key
        assert run["completed"] == 15 and run["failed"] == 0
        assert run["icl_refined"] == 15  # PAIR's meta_info came back through the router on every response
        assert 0 < run["token_hit_rate"] < 1 and run["p50_latency"] <= run["p95_latency"]
        assert len(run["replicas"]) == 2 and sum(r["requests"] for r in run["replicas"]) == 15
        assert all(r["url"].startswith("http://127.0.0.1:") for r in run["replicas"])
    rr = result["runs"][1]["replicas"]
    assert [r["requests"] for r in rr] in ([8, 7], [7, 8])  # round robin alternates


def test_single_policy_writes_one_run_object(tiny_model_dir, tmp_path):
    from bench.scaleout.__main__ import main

    out = tmp_path / "one.json"
    main(["--replicas", "1", "--policy", "random", "--data", str(FIXTURES), "--systems", "HDFS", "--limit", "3",
          "--model", tiny_model_dir, "--kv-cache-tokens", "3000", "--concurrency", "2", "--num-threads", "1",
          "--output-len", "2", "--log-dir", str(tmp_path / "logs"), "--output-file", str(out)])
    run = json.loads(out.read_text())
    assert run["policy"] == "random" and run["completed"] == 3 and run["replicas"][0]["requests"] == 3


def test_bad_policy_is_an_error(tmp_path):
    from bench.scaleout.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--policy", "nearest", "--data", str(FIXTURES), "--output-file", str(tmp_path / "x")])
