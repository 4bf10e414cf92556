"""pairserve as a worker behind the real sglang-router (PyPI `sglang-router`, Rust): it registers the worker
(health, /server_info, /model_info), forwards /generate with its own SGLang keys and chat bodies with messages
only, and PAIR stays reachable through InferLog-layout messages. The reference is the same request sent to the
worker directly."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("sglang_router")

ICL = {"instruction": "Turn each log message into its template.",
       "examples": [{"input": "disk 7 failed", "output": "disk <*> failed"},
                    {"input": "user bob logged in", "output": "user <*> logged in"},
                    {"input": "took 35 ms", "output": "took <*> ms"}],
       "query": "disk 9 failed"}
GREEDY = {"temperature": 0, "max_tokens": 4}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def routed(start_module_server, tmp_path_factory):
    """(router URL, worker handle): one pairserve (--pair-policy native) behind sglang-router cache_aware."""
    logs = tmp_path_factory.mktemp("router")
    worker = start_module_server("--pair-policy", "native")
    port = _free_port()
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", worker.url, "--policy",
           "cache_aware", "--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1",
           "--prometheus-port", str(_free_port()), "--log-level", "warn"]
    with open(logs / "router.log", "wb") as log:
        router = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # the router answers 503 until it has registered the worker
            assert router.poll() is None, (logs / "router.log").read_text()[-3000:]
            try:
                r = httpx.post(f"{url}/generate", json={"text": "ping", "sampling_params": {"max_new_tokens": 1}},
                               timeout=10)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the router never registered the worker"
            time.sleep(0.5)
        yield url, worker
    finally:
        router.terminate()
        try:
            router.wait(10)
        except subprocess.TimeoutExpired:
            router.kill()
            router.wait(10)


def test_router_discovers_the_worker_model(routed, tiny_model_dir):
    url, worker = routed
    info = httpx.get(f"{url}/get_model_info", timeout=10).json()
    assert info["model_path"] == tiny_model_dir and info["is_generation"] is True
    assert worker.model_name in [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]


def test_generate_through_the_router_matches_the_worker(routed):
    url, worker = routed
    body = {"text": "The answer is", "sampling_params": {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}}
    via = httpx.post(f"{url}/generate", json=body, timeout=60)
    direct = httpx.post(f"{worker.url}/generate", json=body, timeout=60)
    assert via.status_code == 200, via.text
    assert via.json()["output_ids"] == direct.json()["output_ids"]
    assert "ignoring unknown field" not in worker.log()  # every key the router adds is classified


def test_inferlog_chat_through_the_router_is_refined(routed):
    from engine.pair.render import render_messages

    url, worker = routed
    msgs = render_messages({**ICL, "refine": None})
    body = {"model": worker.model_name, "messages": msgs, **GREEDY}
    first = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert first.status_code == 200, first.text
    again = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    direct = httpx.post(f"{worker.url}/v1/chat/completions",
                        json={"model": worker.model_name, "messages": [], "icl": {**ICL, "refine": "native"},
                              **GREEDY}, timeout=60).json()
    for out in (first.json(), again):
        assert sorted(out["choices"][0]["meta_info"]["icl_order"]) == [0, 1, 2]
        assert out["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > again["usage"]["prompt_tokens"] // 2


def test_plain_chat_through_the_router_is_not_icl(routed):
    url, worker = routed
    body = {"model": worker.model_name, "messages": [{"role": "user", "content": "hi"}], **GREEDY}
    via = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    direct = httpx.post(f"{worker.url}/v1/chat/completions", json=body, timeout=60).json()
    assert "meta_info" not in via["choices"][0]
    assert via["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
