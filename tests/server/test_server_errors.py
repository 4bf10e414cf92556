"""Every error answer is an OpenAI error object with the right status and param, and the server keeps serving
after each one (every case is followed by a successful request)."""
from __future__ import annotations

import httpx
import pytest

COMPLETIONS, CHAT, GENERATE = "/v1/completions", "/v1/chat/completions", "/generate"
OK = {"prompt": "still serving", "max_tokens": 2}
KV_POOL_TOKENS = 2048  # conftest's --kv-cache-tokens
CONTEXT_LEN = 4096  # the tiny preset's max_position_embeddings


def _chat(**kw):
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw}


# (id, path, json body, status, param)
CASES = [
    ("max_tokens_wrong_type", COMPLETIONS, {"prompt": "hi", "max_tokens": "abc"}, 400, "max_tokens"),
    ("temperature_wrong_type", COMPLETIONS, {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("stream_wrong_type", COMPLETIONS, {"prompt": "hi", "stream": "yes"}, 400, "stream"),
    ("prompt_wrong_type", COMPLETIONS, {"prompt": {"text": "hi"}}, 400, "prompt"),
    ("prompt_missing", COMPLETIONS, {"max_tokens": 2}, 400, "prompt"),
    ("n_zero", COMPLETIONS, {"prompt": "hi", "n": 0}, 400, "n"),
    ("prompt_ids_over_context", COMPLETIONS, {"prompt": [5] * (CONTEXT_LEN + 10)}, 400, "prompt"),
    ("prompt_text_over_context", COMPLETIONS, {"prompt": "lazy dog " * CONTEXT_LEN}, 400, "prompt"),
    ("chat_over_context", CHAT, {"messages": [{"role": "user", "content": "lazy dog " * CONTEXT_LEN}]}, 400,
     "messages"),
    ("messages_not_a_list", CHAT, {"messages": "hi"}, 400, "messages"),
    ("message_without_role", CHAT, {"messages": [{"content": "hi"}]}, 400, "messages"),
    ("max_tokens_zero", COMPLETIONS, {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens_negative", CHAT, _chat(max_tokens=-3), 400, "max_tokens"),
    ("max_tokens_over_context", COMPLETIONS, {"prompt": "hi", "max_tokens": CONTEXT_LEN}, 400, "max_tokens"),
    ("temperature_negative", COMPLETIONS, {"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ("top_p_zero", CHAT, _chat(top_p=0), 400, "top_p"),
    ("top_p_above_one", COMPLETIONS, {"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ("empty_stop_string", COMPLETIONS, {"prompt": "hi", "stop": [""]}, 400, "stop"),
    ("seed_wrong_type", COMPLETIONS, {"prompt": "hi", "seed": "x"}, 400, "seed"),
    ("logprobs_unsupported", COMPLETIONS, {"prompt": "hi", "logprobs": 2}, 400, "logprobs"),
    ("unknown_model", COMPLETIONS, {"model": "gpt-4o", "prompt": "hi"}, 404, "model"),
    ("unknown_model_chat", CHAT, _chat(model="nope"), 404, "model"),
    # Fits the context but not the KV pool: rejected by the scheduler process, not the front end.
    ("prompt_over_kv_pool", COMPLETIONS, {"prompt": [5] * (KV_POOL_TOKENS + 500), "max_tokens": 2}, 400, None),
    ("generate_bad_temperature", GENERATE, {"text": "hi", "sampling_params": {"temperature": -2}}, 400,
     "sampling_params.temperature"),
    ("generate_unknown_sampling_key", GENERATE, {"text": "hi", "sampling_params": {"foo": 1}}, 400,
     "sampling_params.foo"),
    ("generate_no_prompt", GENERATE, {"sampling_params": {}}, 400, "text"),
    ("generate_token_out_of_vocab", GENERATE, {"input_ids": [10 ** 6]}, 400, "input_ids"),
    ("generate_stream_batch", GENERATE, {"text": ["a", "b"], "stream": True}, 400, "stream"),
]


def _assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def _assert_serving(c: httpx.Client) -> None:
    r = c.post(COMPLETIONS, json=OK)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


@pytest.fixture(scope="module")
def c(server):
    with server.client() as client:
        yield client


@pytest.mark.parametrize("path,body,status,param", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_request_then_serving(c, path, body, status, param):
    _assert_error(c.post(path, json=body), status, param)
    _assert_serving(c)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"], ids=["broken", "array", "binary"])
def test_body_not_a_json_object(c, content):
    _assert_error(c.post(COMPLETIONS, content=content, headers={"content-type": "application/json"}), 400)
    _assert_serving(c)


def test_body_over_limit_is_413(c):
    big = b'{"prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    _assert_error(c.post(COMPLETIONS, content=big), 413)
    _assert_serving(c)


def test_unknown_route_is_404_error_object(c):
    _assert_error(c.get("/v1/nope"), 404)
    _assert_serving(c)


def test_api_key_required_everywhere_but_health(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as anon:
        assert anon.get("/health").status_code == 200
        _assert_error(anon.get("/v1/models"), 401)
        _assert_error(anon.get("/metrics"), 401)
        _assert_error(anon.get("/get_server_info"), 401)
        _assert_error(anon.post(COMPLETIONS, json=OK), 401)
        _assert_error(anon.post(COMPLETIONS, json=OK, headers={"Authorization": "Bearer wrong"}), 401)
        _assert_error(anon.post(GENERATE, json={"text": "hi"}, headers={"Authorization": "Basic test-key"}), 401)
    with server.client() as c:
        _assert_serving(c)


def test_flush_cache_refused_while_busy(server, c):
    body = {"prompt": "keep me busy", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with server.client() as busy, busy.stream("POST", COMPLETIONS, json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # keep a reference: a dropped iterator closes the connection, i.e. aborts
        next(line for line in lines if line.startswith("data: "))
        _assert_error(c.post("/flush_cache"), 400)
    server.wait_idle()
    assert c.post("/flush_cache").json() == {"success": True}
    info = server.info()
    assert info["cache_tokens"] == 0 and info["kv_free_tokens"] == info["kv_capacity_tokens"]
