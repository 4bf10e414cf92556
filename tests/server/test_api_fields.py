"""The no-silent-ignore rule (server/api_fields.py): every request field of OpenAI's completions and
chat.completions (enumerated from the `openai` package's types, so a field OpenAI adds fails here until it is
classified) and of SGLang's /generate is honored, a documented no-op, or refused with 400 naming it; fields no
API knows are logged as ignored. Refusals and no-ops are checked against a real server."""
from __future__ import annotations

import time

import pytest
from openai.types import completion_create_params as completion_types
from openai.types.chat import completion_create_params as chat_types

from server.api_fields import (CHAT_FIELDS, COMPLETION_FIELDS, GENERATE_FIELDS, HONORED, NOOP, REFUSED,
                               SAMPLING_PARAM_FIELDS)

NOT_NEUTRAL = {"pairserve-test": 1}  # no field's neutral value: every REFUSED field must refuse it
# sglang-router 0.3.x GenerateRequest and SamplingParams fields (its protocols/generate.rs, sampling_params.rs)
ROUTER_GENERATE = ("text", "model", "input_ids", "input_embeds", "image_data", "video_data", "audio_data",
                   "sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num", "token_ids_logprob",
                   "return_text_in_logprobs", "stream", "log_metrics", "return_hidden_states",
                   "return_routed_experts", "modalities", "session_params", "lora_path", "lora_id",
                   "custom_logit_processor", "bootstrap_host", "bootstrap_port", "bootstrap_room",
                   "bootstrap_pair_key", "data_parallel_rank", "background", "conversation_id", "priority",
                   "extra_key", "no_logs", "custom_labels", "return_bytes", "return_entropy", "rid")
ROUTER_SAMPLING = ("temperature", "max_new_tokens", "top_p", "top_k", "frequency_penalty", "presence_penalty",
                   "repetition_penalty", "stop", "ignore_eos", "skip_special_tokens", "json_schema", "regex", "ebnf",
                   "min_p", "min_new_tokens", "stop_token_ids", "no_stop_trim", "n", "sampling_seed")


def _openai_fields(module) -> set[str]:
    out: set[str] = set()
    for cls in (module.CompletionCreateParamsStreaming, module.CompletionCreateParamsNonStreaming):
        out |= set(cls.__required_keys__) | set(cls.__optional_keys__)
    return out


@pytest.mark.parametrize("module,table", [(completion_types, COMPLETION_FIELDS), (chat_types, CHAT_FIELDS)],
                         ids=["completions", "chat"])
def test_every_openai_field_is_classified(module, table):
    fields = _openai_fields(module)
    assert {"model", "stream", "temperature"} <= fields  # the enumeration works
    missing = sorted(fields - set(table))
    assert not missing, f"unclassified OpenAI fields: {missing}"


def test_every_sglang_generate_field_is_classified():
    assert not sorted(set(ROUTER_GENERATE) - set(GENERATE_FIELDS))
    assert not sorted(set(ROUTER_SAMPLING) - set(SAMPLING_PARAM_FIELDS))


@pytest.mark.parametrize("table", [COMPLETION_FIELDS, CHAT_FIELDS, GENERATE_FIELDS, SAMPLING_PARAM_FIELDS])
def test_statuses_are_known_and_noops_say_why(table):
    for name, field in table.items():
        assert field.status in (HONORED, NOOP, REFUSED), name
        if field.status != HONORED:
            assert field.why, name
        assert field.accepts(None, {}), name  # null is always "not set"


def _refused(table) -> list[str]:
    return sorted(k for k, f in table.items() if f.status == REFUSED)


def _noops(table) -> list[str]:
    return sorted(k for k, f in table.items() if f.status == NOOP)


ROUTES = [("/v1/completions", {"prompt": "hi", "max_tokens": 2, "temperature": 0}, COMPLETION_FIELDS),
          ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                    "temperature": 0}, CHAT_FIELDS),
          ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 2, "temperature": 0}},
           GENERATE_FIELDS)]


@pytest.mark.parametrize("path,base,table", ROUTES, ids=["completions", "chat", "generate"])
def test_refused_fields_answer_400_naming_the_field(server, path, base, table):
    with server.client() as c:
        for key in _refused(table):
            r = c.post(path, json={**base, key: NOT_NEUTRAL})
            assert r.status_code == 400, (key, r.text)
            assert r.json()["error"]["param"] == key and key in r.json()["error"]["message"]
        for key in _refused(SAMPLING_PARAM_FIELDS) if path == "/generate" else ():
            r = c.post(path, json={**base, "sampling_params": {**base["sampling_params"], key: NOT_NEUTRAL}})
            assert r.status_code == 400 and r.json()["error"]["param"] == f"sampling_params.{key}", (key, r.text)
        assert c.post(path, json=base).status_code == 200


@pytest.mark.parametrize("path,base,table", ROUTES, ids=["completions", "chat", "generate"])
def test_noop_fields_leave_the_output_unchanged(server, path, base, table):
    with server.client() as c:
        ref = c.post(path, json=base).json()
        for key in _noops(table):
            r = c.post(path, json={**base, key: "tag"})
            assert r.status_code == 200, (key, r.text)
            out = r.json()
            if path == "/generate":
                assert out["output_ids"] == ref["output_ids"], key
            else:
                assert out["choices"] == ref["choices"], key


def test_neutral_values_of_refused_fields_pass(server):
    """What clients and routers send by default (e.g. logprobs false, n 1 in sampling_params) is accepted."""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": False, "tools": [],
            "response_format": {"type": "text"}, "frequency_penalty": 0, "echo": False, "background": False,
            "return_hidden_states": False, "data_parallel_rank": 0}
    with server.client() as c:
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        assert c.post("/generate", json={"text": "hi", "background": False, "return_logprob": False,
                                         "sampling_params": {"max_new_tokens": 1, "n": 1,
                                                             "spaces_between_special_tokens": True}}).status_code == 200


def test_unknown_fields_are_logged_with_the_request_id(server):
    with server.client() as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                                                 "my_vendor_field": True, "rid": "fields-unknown-1"})
    assert r.status_code == 200 and r.json()["id"] == "fields-unknown-1"
    deadline = time.monotonic() + 5
    while "fields-unknown-1" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "request fields-unknown-1: ignoring unknown field(s) my_vendor_field" in server.log()


def test_max_completion_tokens_is_honored_on_completions(server):
    body = {"prompt": "Count:", "max_completion_tokens": 3, "ignore_eos": True}
    with server.client() as c:
        r = c.post("/v1/completions", json=body).json()
        clash = c.post("/v1/completions", json={**body, "max_tokens": 5})
    assert r["usage"]["completion_tokens"] == 3
    assert clash.status_code == 400 and clash.json()["error"]["param"] == "max_completion_tokens"


def test_the_docs_table_is_generated_from_the_code():
    from pathlib import Path

    from server.api_fields import markdown_tables

    doc = Path(__file__).resolve().parents[2] / "docs" / "api-fields.md"
    assert doc.read_text() == markdown_tables(), "regenerate: python -m server.api_fields > docs/api-fields.md"
