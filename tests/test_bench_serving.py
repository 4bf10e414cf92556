"""bench.serving / bench.compare: metric functions on hand-computed timings, datasets, CLI errors, ratios and plots
on synthetic runs, and short end-to-end runs of every backend (pairserve launched by the benchmark, openai against
a pairserve server launched here, hf in-process) on the tiny model."""
from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest

from bench import compare
from bench.serving import loadgen as serving
from bench.serving.data import build_dataset, gsp_requests, random_requests
from bench.serving.metrics import RequestResult, compute_metrics, format_result_block, hit_rate_by_system

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")


def _results() -> list[RequestResult]:
    return [
        RequestResult(True, prompt_len=100, output_len=5, ttft=0.1, latency=0.5, itl=[0.1, 0.1, 0.1, 0.1],
                      cached_tokens=50, system="A"),
        RequestResult(True, prompt_len=200, output_len=3, ttft=0.2, latency=0.6, itl=[0.3, 0.1], cached_tokens=0,
                      system="B"),
        RequestResult(True, prompt_len=100, output_len=1, ttft=0.3, latency=0.3, cached_tokens=100, system="A"),
        RequestResult(True, prompt_len=100, output_len=4, ttft=0.4, latency=1.0, itl=[0.2, 0.2, 0.2],
                      cached_tokens=None, system="B"),
        RequestResult(False, prompt_len=999, output_len=99, ttft=9.0, latency=9.0, error="HTTP 500"),
    ]


def test_metrics_match_hand_computed_values():
    m = compute_metrics(_results(), duration_s=2.0)
    assert (m["completed"], m["failed"]) == (4, 1)  # the failed request counts nowhere else
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (500, 13)
    assert m["request_throughput"] == pytest.approx(2.0) and m["input_throughput"] == pytest.approx(250.0)
    assert m["output_throughput"] == pytest.approx(6.5) and m["total_throughput"] == pytest.approx(256.5)
    assert m["concurrency"] == pytest.approx((0.5 + 0.6 + 0.3 + 1.0) / 2.0)
    # TTFT [0.1, 0.2, 0.3, 0.4] s: median 0.25; p99 at rank 0.99 * 3 = 2.97 → 0.3 + 0.97 * 0.1; p95 → 0.385
    assert m["mean_ttft_ms"] == pytest.approx(250.0) and m["median_ttft_ms"] == pytest.approx(250.0)
    assert m["p99_ttft_ms"] == pytest.approx(397.0) and m["p95_ttft_ms"] == pytest.approx(385.0)
    # TPOT = (latency - ttft) / (output_len - 1): 0.4/4, 0.4/2, (1-output request excluded), 0.6/3
    assert m["mean_tpot_ms"] == pytest.approx(1000 * (0.1 + 0.2 + 0.2) / 3)
    assert m["median_tpot_ms"] == pytest.approx(200.0)
    # ITL: every gap of every successful request pooled: [.1,.1,.1,.1,.3,.1,.2,.2,.2]
    assert m["mean_itl_ms"] == pytest.approx(1000 * 1.4 / 9) and m["median_itl_ms"] == pytest.approx(100.0)
    assert m["max_itl_ms"] == pytest.approx(300.0)
    assert m["median_e2e_latency_ms"] == pytest.approx(550.0) and m["mean_e2e_latency_ms"] == pytest.approx(600.0)
    # hit rate over requests that reported cached tokens: (50 + 0 + 100) / (100 + 200 + 100)
    assert m["token_hit_rate"] == pytest.approx(150 / 400)
    assert m["token_hit_rate_by_system"] == pytest.approx({"A": 150 / 200, "B": 0.0})


def test_metrics_edge_cases():
    assert RequestResult(True, output_len=1, ttft=0.1, latency=0.1).tpot is None
    m = compute_metrics([RequestResult(True, prompt_len=10, output_len=1, ttft=0.2, latency=0.2)], 1.0)
    assert m["mean_tpot_ms"] == 0.0 and m["p99_itl_ms"] == 0.0 and m["max_itl_ms"] == 0.0  # empty lists → 0
    assert m["token_hit_rate"] is None  # no server said how many tokens were cached
    assert hit_rate_by_system([RequestResult(True, 10, 1, system="")]) == {}
    with pytest.raises(ValueError, match="duration_s"):
        compute_metrics([], 0.0)


def test_result_block_layout():
    m = compute_metrics(_results(), 2.0)
    text = format_result_block(m, "pairserve", math.inf, 4, notes=["hello"])
    lines = text.splitlines()
    assert "============ Serving Benchmark Result ============" in lines
    assert any(ln.startswith("Traffic request rate:") and ln.split()[-1] == "inf" for ln in lines)
    assert any(ln.startswith("Request throughput (req/s):") and ln.split()[-1] == "2.00" for ln in lines)
    assert any(ln.startswith("Token hit rate (cached/prompt):") and ln.split()[-1] == "37.50%" for ln in lines)
    for section in ("End-to-End Latency", "Time to First Token", "Inter-Token Latency", "Token Hit Rate by System"):
        assert any(section in ln and ln.startswith("-") for ln in lines), section
    assert lines[-2] == "=" * 50 and lines[-1] == "Note: hello"


def test_arrivals_are_poisson_and_seeded():
    assert serving.arrival_offsets(3, math.inf, 0) == [0.0, 0.0, 0.0]
    a = serving.arrival_offsets(2000, 10.0, 7)
    assert a == serving.arrival_offsets(2000, 10.0, 7) and a[0] == 0.0 and a == sorted(a)
    assert a[-1] / (len(a) - 1) == pytest.approx(0.1, rel=0.1)  # mean gap 1 / rate


def test_interrupt_reports_completed_requests():
    class Runner:
        def run(self, requests, arrivals, max_concurrency, results, t0, on_done):
            results.append(RequestResult(True, prompt_len=4, output_len=2, ttft=0.01, latency=0.02))
            raise KeyboardInterrupt

    results, duration, interrupted = serving.run_once(Runner(), [None, None], [0.0, 0.0], None)
    assert interrupted and len(results) == 1 and duration > 0
    rec = serving.make_record(results, duration, interrupted, {"backend": "x"})
    assert rec["interrupted"] and rec["completed"] == 1


def test_datasets(tiny_model_dir):
    from engine.models.loader import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    fixed = random_requests(tok, 6, 20, 5, 1.0, seed=0)
    assert [(r.prompt_len, r.output_len, len(r.input_ids)) for r in fixed] == [(20, 5, 20)] * 6
    spread = random_requests(tok, 50, 20, 8, 0.5, seed=0)
    assert all(10 <= r.prompt_len <= 20 and 4 <= r.output_len <= 8 for r in spread)
    assert not set(tok.all_special_ids) & {t for r in spread for t in r.input_ids}
    words = random_requests(tok, 2, 20, 4, 1.0, seed=0, kind="words")
    assert all(r.text and r.prompt_len == len(tok.encode(r.text, add_special_tokens=False)) for r in words)
    gsp = gsp_requests(tok, 3, 4, 16, 4, 2, seed=0)
    groups = {r.system: r.input_ids[:16] for r in gsp}
    assert len(groups) == 3 and all(r.input_ids[:16] == groups[r.system] for r in gsp)
    args = SimpleNamespace(dataset="loghub", data=FIXTURES, systems="HDFS,Apache", num_prompts=5, seed=0)
    logs = build_dataset(args, tok)
    assert [r.system for r in logs] == ["HDFS", "Apache", "HDFS", "Apache", "HDFS"]
    assert all("refine" not in r.icl and len(r.messages) == 4 and r.output_len >= 1 for r in logs)
    with pytest.raises(ValueError, match="--random-range-ratio"):
        random_requests(tok, 2, 10, 2, 1.5, seed=0)
    with pytest.raises(ValueError, match="--systems"):
        build_dataset(SimpleNamespace(**{**vars(args), "systems": "Nope"}), tok)


def test_cli_errors_name_the_flag(capsys):
    for argv, flag in ((["--backend", "openai"], "--base-url"), (["--backend", "hf", "--num-prompts", "0"],
                       "--num-prompts"), (["--backend", "hf", "--request-rate", "0"], "--request-rate"),
                       (["--backend", "hf", "--dataset", "loghub"], "--data")):
        with pytest.raises(SystemExit):
            serving.parse_args(argv)
        assert flag in capsys.readouterr().err
    with pytest.raises(ValueError, match="--backends"):
        compare.parse_backends("hf,openai=http://x")
    with pytest.raises(ValueError, match="--backends"):
        compare.parse_backends("pairserve,openai")
    with pytest.raises(ValueError, match="--variants"):
        compare.parse_variants("radix,native", "random")
    assert compare.parse_backends("pairserve,hf,openai=http://h:1") == [
        ("pairserve", None), ("hf", None), ("openai", "http://h:1")]


def _synthetic_compare() -> dict:
    runs = []
    for rnd, (ps, hf) in enumerate(((2.0, 1.0), (3.0, 1.0), (2.0, 2.0))):
        for entry, tput in (("pairserve:radix", ps), ("hf", hf)):
            runs.append({"entry": entry, "round": rnd, "completed": 4, "request_throughput": tput,
                         "output_throughput": 10 * tput, "median_e2e_latency_ms": 100 / tput,
                         "p95_e2e_latency_ms": 200 / tput, "median_ttft_ms": 10.0, "p95_ttft_ms": 20.0,
                         "token_hit_rate": 0.5 if entry != "hf" else 0.0, "e2e_latencies": [0.1, 0.2],
                         "ttfts": [0.01, 0.02], "token_hit_rate_by_system": {"A": 0.4, "B": 0.6}})
    return {"entries": ["pairserve:radix", "hf"], "runs": runs}


def test_compare_ratios_and_plots(tmp_path):
    result = _synthetic_compare()
    r = compare.ratios(result["runs"], result["entries"])["pairserve:radix / hf"]
    assert r["rounds"] == 3 and r["request_throughput"] == pytest.approx(2.0)  # median of 2, 3, 1
    assert r["p95_e2e_latency_ms"] == pytest.approx(0.5) and r["median_ttft_ms"] == pytest.approx(1.0)
    s = compare.summarize(result["runs"], result["entries"])
    assert s["pairserve:radix"]["request_throughput"] == 2.0 and s["hf"]["token_hit_rate"] == 0.0
    assert "2.00x" in compare.format_tables(s, {"pairserve:radix / hf": r})
    from bench.common.plots import write_plots

    paths = write_plots(result, str(tmp_path / "cmp"))
    assert [os.path.basename(p) for p in paths] == ["cmp_policies.png", "cmp_hit_rate.png", "cmp_latency_cdf.png"]
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in paths)


COMMON = ["--num-prompts", "6", "--max-concurrency", "3", "--dtype", "float32", "--seed", "3"]
RANDOM = ["--dataset", "random", "--random-input-len", "24", "--random-output-len", "4", "--random-range-ratio",
          "0.5"]


def _check_record(path: str, backend: str, expect_output: int | None) -> dict:
    with open(path) as f:
        rec = [json.loads(line) for line in f if json.loads(line)["backend"] == backend][-1]
    assert rec["completed"] == rec["num_prompts"] == 6 and rec["failed"] == 0 and not rec["interrupted"]
    assert rec["total_output_tokens"] > 0 and rec["total_input_tokens"] > 0
    assert rec["total_output_tokens"] == sum(rec["output_lens"])
    if expect_output is not None:  # ignore_eos: exactly the requested lengths
        assert rec["total_output_tokens"] == expect_output
    assert rec["token_hit_rate"] is not None and 0.0 <= rec["token_hit_rate"] <= 1.0
    assert len(rec["ttfts"]) == len(rec["e2e_latencies"]) == 6
    assert all(0 < t <= e for t, e in zip(rec["ttfts"], rec["e2e_latencies"]))
    assert rec["request_throughput"] * rec["duration_s"] == pytest.approx(6)
    assert 0 < rec["concurrency"] <= 3 + 1e-6
    assert rec["median_ttft_ms"] <= rec["p99_ttft_ms"] and rec["mean_tpot_ms"] > 0
    return rec


def _expected_output(tiny_model_dir) -> int:
    from engine.models.loader import load_tokenizer

    return sum(r.output_len for r in random_requests(load_tokenizer(tiny_model_dir), 6, 24, 4, 0.5, seed=3))


def test_hf_backend_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = str(tmp_path / "hf.jsonl")
    serving.main(["--backend", "hf", "--model", tiny_model_dir, *RANDOM, *COMMON, "--output-file", out])
    printed = capsys.readouterr().out
    assert "Serving Benchmark Result" in printed and "generate_batch" in printed
    rec = _check_record(out, "hf", _expected_output(tiny_model_dir))
    assert rec["token_hit_rate"] == 0.0  # padded generate caches nothing across requests
    assert rec["workload"]["random_input_len"] == 24 and rec["workload"]["random_range_ratio"] == 0.5


def test_pairserve_backend_launches_its_server(tiny_model_dir, tmp_path):
    out = str(tmp_path / "ps.jsonl")
    serving.main(["--backend", "pairserve", "--model", tiny_model_dir, "--dataset", "gsp", "--gsp-num-groups", "2",
                  "--gsp-system-prompt-len", "32", "--gsp-question-len", "4", "--gsp-output-len", "3",
                  "--request-rate", "50", *COMMON, "--output-file", out])
    rec = _check_record(out, "pairserve", 6 * 3)
    assert rec["token_hit_rate"] > 0  # 6 prompts in 2 groups share 32-token system prompts
    assert set(rec["token_hit_rate_by_system"]) == {"group0", "group1"}


def test_openai_backend_against_a_pairserve_server(tiny_model_dir, tmp_path):
    from bench.serving.backends import LaunchedServer

    out = str(tmp_path / "oa.jsonl")
    with LaunchedServer(tiny_model_dir, ["--kv-cache-tokens", "8192", "--dtype", "float32"]) as srv:
        serving.main(["--backend", "openai", "--base-url", srv.base_url + "/v1", "--model", tiny_model_dir,
                      *RANDOM, *COMMON, "--output-file", out])
        serving.main(["--backend", "openai", "--base-url", srv.base_url, "--model", tiny_model_dir, "--dataset",
                      "loghub", "--data", FIXTURES, "--systems", "HDFS,Apache", *COMMON, "--output-file", out])
    with open(out) as f:
        assert [json.loads(line)["dataset"] for line in f] == ["random", "loghub"]
    _check_record(out, "openai", None)  # the loghub (chat) run: oracle lengths
    with open(out) as f:
        first = json.loads(f.readline())
    assert first["total_output_tokens"] == _expected_output(tiny_model_dir)
