"""SGLang's native routes and sglang-router's worker contract against a real server subprocess (the tokenizer
is the reference for /tokenize; the seeded engine output for sampling_seed and /abort_request)."""
from __future__ import annotations

import json
import threading
import time

import pytest


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from engine.models.loader import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def test_model_info_under_both_names(server, tiny_model_dir):
    with server.client() as c:
        new, old = c.get("/model_info").json(), c.get("/get_model_info").json()
    assert new == old
    assert new["model_path"] == tiny_model_dir and new["tokenizer_path"] == tiny_model_dir
    assert new["is_generation"] is True and new["model_type"] == "qwen2"
    assert new["architectures"] == ["Qwen2ForCausalLM"] and new["max_model_len"] == 4096


def test_server_info_has_sglang_flat_keys(server, tiny_model_dir):
    with server.client() as c:
        info = c.get("/get_server_info").json()
        assert c.get("/server_info").json().keys() == info.keys()
    assert info["model_path"] == tiny_model_dir and info["served_model_name"] == server.model_name
    assert info["tp_size"] == 1 and info["dp_size"] == 1 and isinstance(info["version"], str)
    assert info["max_total_tokens"] == info["kv_capacity_tokens"] == 2048
    assert info["context_length"] == 4096
    assert info["max_running_requests"] == info["server_args"]["max_running_requests"]
    assert "api_key" not in info and "api_key" not in info["server_args"]
    assert {"num_running", "num_waiting", "pids"} <= info.keys()


def test_get_load_and_health_generate(server):
    with server.client() as c:
        load = c.get("/get_load").json()
        assert c.get("/health_generate").status_code == 200
    assert load == [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}] or (
        len(load) == 1 and set(load[0]) == {"dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"})


def test_models_and_version(server):
    with server.client() as c:
        models = c.get("/v1/models").json()["data"]
        version = c.get("/version").json()
    assert [m["id"] for m in models] == [server.model_name] and models[0]["max_model_len"] == 4096
    assert isinstance(version["version"], str) and version["version"]


def test_tokenize_and_detokenize_match_the_tokenizer(server, tokenizer):
    text = "The quick brown fox"
    msgs = [{"role": "user", "content": "hello there"}]
    with server.client() as c:
        for path in ("/tokenize", "/v1/tokenize"):
            r = c.post(path, json={"prompt": text}).json()
            assert r == {"tokens": tokenizer.encode(text, add_special_tokens=False),
                         "count": len(r["tokens"]), "max_model_len": 4096}
        chat = c.post("/tokenize", json={"messages": msgs}).json()
        rendered = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert chat["tokens"] == tokenizer.encode(rendered, add_special_tokens=False)
        back = c.post("/detokenize", json={"tokens": r["tokens"]}).json()
        assert back["text"] == back["prompt"] == tokenizer.decode(r["tokens"], skip_special_tokens=True)
        bad = c.post("/detokenize", json={"tokens": [10 ** 7]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
        neither = c.post("/tokenize", json={})
        assert neither.status_code == 400 and neither.json()["error"]["param"] == "prompt"


# What sglang-router 0.3.x adds to every /generate it forwards (non-optional fields of its GenerateRequest).
ROUTER_GENERATE_DEFAULTS = {"model": None, "return_text_in_logprobs": False, "stream": False, "log_metrics": True,
                            "return_hidden_states": False, "return_routed_experts": False, "background": False,
                            "no_logs": False, "return_bytes": False, "return_entropy": False}


def test_generate_takes_router_keys_rid_and_sampling_seed(server):
    sp = {"max_new_tokens": 5, "temperature": 1.0, "ignore_eos": True}
    with server.client() as c:
        seeded = c.post("/generate", json={"text": "Hello", "sampling_params": {**sp, "seed": 11}}).json()
        routed = c.post("/generate", json={**ROUTER_GENERATE_DEFAULTS, "text": "Hello", "rid": "my-req-1",
                                           "sampling_params": {**sp, "sampling_seed": 11}})
        assert routed.status_code == 200, routed.text
        assert routed.json()["output_ids"] == seeded["output_ids"]
        assert routed.json()["meta_info"]["id"] == "my-req-1"
        bg = c.post("/generate", json={"text": "Hello", "background": True})
        assert bg.status_code == 400 and bg.json()["error"]["param"] == "background"
        n2 = c.post("/generate", json={"text": "Hello", "sampling_params": {"n": 2}})
        assert n2.status_code == 400 and n2.json()["error"]["param"] == "sampling_params.n"
        batch = c.post("/generate", json={"text": ["a", "b"], "rid": ["r-a", "r-b"],
                                          "sampling_params": {"max_new_tokens": 1}}).json()
        assert [o["meta_info"]["id"] for o in batch] == ["r-a", "r-b"]


def test_unknown_generate_field_is_logged_with_the_request_id(server):
    with server.client() as c:
        r = c.post("/generate", json={"text": "hi", "rid": "rid-with-extra", "my_client_tag": 7,
                                      "sampling_params": {"max_new_tokens": 1}})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 5
    while "rid-with-extra" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(ln for ln in server.log().splitlines() if "rid-with-extra" in ln)
    assert "ignoring unknown field(s) my_client_tag" in line


def test_abort_request_ends_a_running_request(server):
    frames: list[dict] = []
    body = {"text": "a long one", "rid": "to-abort", "stream": True,
            "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}

    def read() -> None:
        with server.client() as c, c.stream("POST", "/generate", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    frames.append(json.loads(line[len("data: "):]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not frames:
        assert time.monotonic() < deadline, "no first frame"
        time.sleep(0.05)
    with server.client() as c:
        assert c.post("/abort_request", json={"rid": "to-abort"}).json() == {"aborted": 1}
        assert c.post("/abort_request", json={"rid": "to-abort"}).json() == {"aborted": 0}
        assert c.post("/abort_request", json={}).status_code == 400
    reader.join(30)
    assert not reader.is_alive()
    assert frames[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(frames[-1]["output_ids"]) < 2000
    server.wait_idle()


def test_a_draining_replica_answers_every_router_probe_with_503(tiny_model_dir):
    """In process: the app over a tokenizer manager that is shutting down (what fail_all leaves behind)."""
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from engine.config import ServerArgs
    from server.app import build_app
    from server.metrics import ServerMetrics

    args = ServerArgs(model_path=tiny_model_dir)
    from server.errors import APIError

    tm = SimpleNamespace(args=args, context_len=4096, metrics=ServerMetrics("tiny"),
                         unavailable=lambda: APIError(503, "the server is shutting down"))
    client = TestClient(build_app(tm, args, ("tiny",), {}, model_path=tiny_model_dir))
    for path in ("/health", "/health_generate", "/model_info", "/get_model_info", "/server_info",
                 "/get_server_info", "/get_load"):
        r = client.get(path)
        assert r.status_code == 503, path
        assert r.json()["error"]["message"] == "the server is shutting down"


def test_metrics_carry_sglang_names_beside_pairserve_ones(server):
    from prometheus_client.parser import text_string_to_metric_families

    with server.client() as c:
        r = c.post("/generate", json={"text": "count me", "sampling_params": {"max_new_tokens": 3}})
        assert r.status_code == 200
        text = c.get("/metrics").text
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("model_name") == server.model_name and set(s.labels) <= {"model_name", "le"}:
                samples[s.name + (f"@{s.labels['le']}" if "le" in s.labels else "")] = s.value
    pairs = {"sglang:prompt_tokens_total": "pairserve:prompt_tokens_total",
             "sglang:generation_tokens_total": "pairserve:generation_tokens_total",
             "sglang:time_to_first_token_seconds_count": "pairserve:time_to_first_token_seconds_count",
             "sglang:inter_token_latency_seconds_count": "pairserve:inter_token_latency_seconds_count",
             "sglang:e2e_request_latency_seconds_count": "pairserve:e2e_request_latency_seconds_count",
             "sglang:num_running_reqs": "pairserve:num_requests_running",
             "sglang:num_queue_reqs": "pairserve:num_requests_waiting",
             "sglang:token_usage": "pairserve:kv_cache_usage_perc"}
    for sg, ours in pairs.items():
        assert samples[sg] == samples[ours], sg
    assert samples["sglang:e2e_request_latency_seconds_count"] >= 1 and samples["sglang:num_requests_total"] >= 1
    assert samples["sglang:max_total_num_tokens"] == 2048
    hit = samples["pairserve:prefix_cache_hits_total"] / max(samples["pairserve:prefix_cache_queries_total"], 1)
    assert samples["sglang:cache_hit_rate"] == pytest.approx(hit)
    assert samples["sglang:cached_tokens_total"] >= 0 and "sglang:num_used_tokens" in samples
