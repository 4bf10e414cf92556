"""In-process units of the server: message wire format, CLI → ServerArgs, ValueError → OpenAI error mapping."""
from __future__ import annotations

import msgpack
import pytest

from server.cli import parse_server_args
from server.errors import from_value_error
from server.messages import (MESSAGE_TYPES, AbortReq, BatchTextOut, BatchTokenOut, ChildFailed, FlushCacheOut,
                             FlushCacheReq, GenerateReq, Ready, ShutdownReq, StatsOut, StatsReq, TextOut, TokenOut,
                             UpdateConfigOut, UpdateConfigReq, decode, encode)

SAMPLES = [
    GenerateReq("r1", [1, 2, 3], {"max_new_tokens": 4, "stop": ["\n"], "seed": None},
                {"head_ids": [1], "examples": [{"id": "e", "input": "i", "output": "o", "ids": [2]}],
                 "tail_ids": [3], "refine": "native"}),
    AbortReq("r1"), FlushCacheReq(3), StatsReq(4), ShutdownReq("bye"),
    BatchTokenOut([TokenOut("r1", [7], False, None, 3, 1, 0, None, {"stop": ["x"]}),
                   TokenOut("r2", [], True, {"type": "abort", "message": "m", "status_code": 400}, 2, 0, 0)]),
    BatchTextOut([TextOut("r1", "hé", [7], True, {"type": "stop", "matched": 2}, 3, 1, 2, {"icl_order": [1, 0]})]),
    Ready("scheduler", 123, {"context_len": 4096}), ChildFailed("detokenizer", 9, "boom"),
    StatsOut(0, {"num_running": 1}), FlushCacheOut(5, False, "busy"),
    UpdateConfigReq(6, {"schedule_policy": "fcfs"}), UpdateConfigOut(6, True, "", {"max_running_requests": 8}),
]


def test_samples_cover_every_message_type():
    assert {type(m).__name__ for m in SAMPLES} | {"TokenOut", "TextOut"} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", SAMPLES, ids=[type(m).__name__ for m in SAMPLES])
def test_roundtrip(msg):
    data = encode(msg)
    tag, fields = msgpack.unpackb(data, raw=False)  # plain msgpack: a tag and a map, nothing pickled
    assert tag == type(msg).__name__ and isinstance(fields, dict)
    assert decode(data) == msg


def test_nested_items_come_back_typed():
    out = decode(encode(SAMPLES[5]))
    assert all(isinstance(o, TokenOut) for o in out.outputs)


@pytest.mark.parametrize("data", [b"\xc1", msgpack.packb(["NoSuchType", {}]), msgpack.packb({"a": 1}),
                                  msgpack.packb(["AbortReq", {"rid": "x", "extra": 1}])])
def test_bad_bytes_raise_value_error(data):
    with pytest.raises(ValueError):
        decode(data)


def test_encode_refuses_non_messages():
    with pytest.raises(TypeError):
        encode({"rid": "x"})


def test_cli_flags_map_to_server_args():
    args = parse_server_args(["--model", "demo", "--disable-radix-cache", "--kv-cache-tokens", "512",
                              "--schedule-policy", "fcfs", "--mem-fraction", "0.5", "--api-key", "k"])
    assert args.model_path == "demo" and args.disable_radix_cache is True and args.kv_cache_tokens == 512
    assert args.schedule_policy == "fcfs" and args.mem_fraction == 0.5 and args.api_key == "k"
    defaults = parse_server_args([])
    assert defaults.host == "127.0.0.1" and defaults.port == 30000 and defaults.disable_radix_cache is False


def test_cli_trace_flags(capsys):
    args = parse_server_args(["--trace-file", "/tmp/live.jsonl", "--trace-block-size", "32"])
    assert args.trace_file == "/tmp/live.jsonl" and args.trace_block_size == 32
    assert parse_server_args([]).trace_file is None and parse_server_args([]).trace_block_size == 16
    with pytest.raises(SystemExit) as exc:
        parse_server_args(["--trace-file", "t.jsonl", "--trace-block-size", "0"])
    assert exc.value.code == 2 and "trace_block_size" in capsys.readouterr().err


def test_cli_rejects_bad_values_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_server_args(["--page-size", "0"])
    assert exc.value.code == 2 and "page_size" in capsys.readouterr().err


@pytest.mark.parametrize("message,openai,prompt_param,param,text", [
    ("sampling_params.max_new_tokens: must be >= 1 (got 0)", True, "prompt", "max_tokens", "max_tokens: must be"),
    ("sampling_params.top_p: must be in (0, 1] (got 2.0)", True, "prompt", "top_p", "top_p: must be"),
    ("prompt: 5000 tokens do not fit", True, "messages", "messages", "messages: 5000"),
    ("input_ids: token id out of range", True, "prompt", "prompt", "prompt: token"),
    ("sampling_params.top_p: must be in (0, 1] (got 2.0)", False, "prompt", "sampling_params.top_p",
     "sampling_params.top_p: must be"),
    ("something went wrong: badly", True, "prompt", None, "something went wrong"),
])
def test_value_errors_map_to_params(message, openai, prompt_param, param, text):
    err = from_value_error(ValueError(message), openai, prompt_param)
    assert err.status == 400 and err.param == param and err.message.startswith(text)
    assert err.body()["error"]["type"] == "invalid_request_error"
