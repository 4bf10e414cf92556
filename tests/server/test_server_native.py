"""The native routes: /generate (single, batch, streaming, ICL), /update_config, /get_server_info."""
from __future__ import annotations

import json

import pytest

ICL = {"instruction": "Turn each log message into its template.",
       "examples": [{"input": "disk 7 failed", "output": "disk <*> failed"},
                    {"input": "user bob logged in", "output": "user <*> logged in"},
                    {"input": "took 35 ms", "output": "took <*> ms"}],
       "query": "disk 9 failed"}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from engine.models.loader import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def test_generate_stream_text_matches_its_tokens(server, tokenizer):
    body = {"text": "The answer is", "sampling_params": {"max_new_tokens": 6, "ignore_eos": True}, "stream": True}
    frames = []
    with server.client() as c, c.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                frames.append(line[len("data: "):])
    assert frames[-1] == "[DONE]"
    last = json.loads(frames[-2])
    assert len(last["output_ids"]) == 6 and last["meta_info"]["finish_reason"]["type"] == "length"
    assert last["text"] == tokenizer.decode(last["output_ids"], skip_special_tokens=True)
    assert "".join(json.loads(f)["delta"] for f in frames[:-1]) == last["text"]


def test_generate_batch_matches_engine_shape(server):
    with server.client() as c:
        out = c.post("/generate", json={"text": ["one", "two"], "sampling_params": {"max_new_tokens": 2}}).json()
        single = c.post("/generate", json={"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 2}}).json()
    assert isinstance(out, list) and len(out) == 2
    for res in out + [single]:
        assert set(res) == {"text", "output_ids", "meta_info"}
        meta = res["meta_info"]
        keys = {"id", "prompt_tokens", "completion_tokens", "cached_tokens", "finish_reason", "e2e_latency"}
        assert keys <= meta.keys()
        assert meta["completion_tokens"] == len(res["output_ids"])
    assert single["meta_info"]["prompt_tokens"] == 3


def test_generate_icl_reports_the_refined_order(server):
    body = {"icl": {**ICL, "refine": "native"}, "sampling_params": {"max_new_tokens": 2, "ignore_eos": True}}
    with server.client() as c:
        first = c.post("/generate", json=body).json()
        again = c.post("/generate", json=body).json()
    for out in (first, again):
        meta = out["meta_info"]
        assert sorted(meta["icl_order"]) == [0, 1, 2] and 0 <= meta["icl_substituted"] <= 3
        assert meta["completion_tokens"] == 2
    assert again["meta_info"]["cached_tokens"] > again["meta_info"]["prompt_tokens"] // 2


def test_generate_rejects_a_malformed_icl(server):
    with server.client() as c:
        r = c.post("/generate", json={"icl": {**ICL, "examples": [{"input": "x"}]}})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("icl.examples[0]")
        assert c.post("/generate", json={"icl": ICL, "sampling_params": {"max_new_tokens": 1}}).status_code == 200


def test_chat_completions_take_icl_in_place_of_messages(server):
    """The same ICL request through the OpenAI chat route renders the same prompt as /generate's."""
    body = {"icl": {**ICL, "refine": "native"}, "max_tokens": 2, "ignore_eos": True}
    with server.client() as c:
        native = c.post("/generate", json={"icl": body["icl"], "sampling_params": {"max_new_tokens": 2}}).json()
        r = c.post("/v1/chat/completions", json={**body, "messages": []})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["usage"]["prompt_tokens"] == native["meta_info"]["prompt_tokens"]
        assert out["usage"]["prompt_tokens_details"]["cached_tokens"] > out["usage"]["prompt_tokens"] // 2
        meta = out["choices"][0]["meta_info"]
        assert sorted(meta["icl_order"]) == [0, 1, 2] and out["usage"]["completion_tokens"] == 2
        both = c.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "hi"}]})
        assert both.status_code == 400 and both.json()["error"]["param"] == "icl"
        bad = c.post("/v1/chat/completions", json={"icl": {**ICL, "query": 3}, "max_tokens": 1})
        assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("icl")


def test_update_config_changes_live_knobs(server):
    with server.client() as c:
        start = c.get("/get_server_info").json()["server_args"]
        r = c.post("/update_config", json={"max_running_requests": 8, "schedule_policy": "fcfs"})
        assert r.status_code == 200, r.text
        assert r.json()["max_running_requests"] == 8 and r.json()["schedule_policy"] == "fcfs"
        args = c.get("/get_server_info").json()["server_args"]
        assert args["max_running_requests"] == 8 and args["schedule_policy"] == "fcfs"
        bad = c.post("/update_config", json={"bogus": 1})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "bogus"
        too_many = c.post("/update_config", json={"max_running_requests": start["max_running_requests"] + 1})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_running_requests"
        ok = c.post("/generate", json={"text": "still fine", "sampling_params": {"max_new_tokens": 2}})
        assert ok.status_code == 200
        restore = {"max_running_requests": start["max_running_requests"], "schedule_policy": start["schedule_policy"]}
        assert c.post("/update_config", json=restore).status_code == 200
