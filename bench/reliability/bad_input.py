"""R3: malformed requests never get a 5xx, every 4xx is an OpenAI error object, and the server serves on.

Two sources: schemathesis, fuzzing every operation of the server's own OpenAPI document (GET /openapi.json,
fetched with a key) with its `not_a_server_error` check; and a hand list of malformed bodies (truncated JSON,
wrong types, huge n / max_tokens, NaN temperature, invalid UTF-8 and lone surrogates, a 10 MB prompt, unknown
model, bad icl shapes, bad roles ...), each followed by nothing but its own answer: a good request at the end
must still be served."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench.reliability.server_proc import ADMIN_KEY, TENANT_KEYS, ServerProc, bearer

C, CHAT, GEN = "/v1/completions", "/v1/chat/completions", "/generate"
KEY = next(iter(TENANT_KEYS))
EX = [{"input": "Received block blk_1 of size 9", "output": "Received block <*> of size <*>"}]
ICL = {"instruction": "Parse the log.", "query": "Received block blk_7 of size 42", "examples": EX}


def _chat(**kw) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw}


def hand_cases() -> list[tuple[str, str, bytes]]:
    """(name, path, raw body) — at least 40 malformed requests."""
    js = lambda obj: json.dumps(obj).encode()  # noqa: E731
    cases = [
        ("truncated_json", C, b'{"prompt": "hi", "max_tok'),
        ("empty_body", C, b""),
        ("json_array", C, b"[1, 2, 3]"),
        ("json_string", CHAT, b'"hello"'),
        ("json_null", GEN, b"null"),
        ("invalid_utf8", C, b'{"prompt": "\xff\xfe\xfd"}'),
        ("lone_surrogate_prompt", C, rb'{"prompt": "\ud800", "max_tokens": 2}'),
        ("lone_surrogate_chat", CHAT, rb'{"messages": [{"role": "user", "content": "x\udfff"}], "max_tokens": 2}'),
        ("nan_temperature", C, b'{"prompt": "hi", "temperature": NaN}'),
        ("infinity_top_p", C, b'{"prompt": "hi", "top_p": Infinity}'),
        ("deep_nesting", C, b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("prompt_10mb", C, js({"prompt": "x" * (10 * 2 ** 20), "max_tokens": 2})),
        ("prompt_number", C, js({"prompt": 5})),
        ("prompt_object", C, js({"prompt": {"a": 1}})),
        ("prompt_empty_list", C, js({"prompt": []})),
        ("prompt_ids_negative", C, js({"prompt": [-1, 2], "max_tokens": 2})),
        ("prompt_ids_huge", C, js({"prompt": [2 ** 40], "max_tokens": 2})),
        ("prompt_mixed_list", C, js({"prompt": ["a", 1]})),
        ("max_tokens_string", C, js({"prompt": "hi", "max_tokens": "12"})),
        ("max_tokens_huge", C, js({"prompt": "hi", "max_tokens": 10 ** 12})),
        ("max_tokens_float", C, js({"prompt": "hi", "max_tokens": 2.5})),
        ("max_tokens_negative", CHAT, js(_chat(max_tokens=-1))),
        ("n_huge", C, js({"prompt": "hi", "n": 10 ** 9, "max_tokens": 2})),
        ("n_bool", C, js({"prompt": "hi", "n": True})),
        ("temperature_string", C, js({"prompt": "hi", "temperature": "hot"})),
        ("temperature_negative", C, js({"prompt": "hi", "temperature": -0.5})),
        ("top_p_zero", CHAT, js(_chat(top_p=0))),
        ("top_k_string", C, js({"prompt": "hi", "top_k": "all"})),
        ("seed_huge", C, js({"prompt": "hi", "seed": 2 ** 80, "max_tokens": 2})),
        ("stop_number", C, js({"prompt": "hi", "stop": 3})),
        ("stop_empty_string", C, js({"prompt": "hi", "stop": [""]})),
        ("stop_token_ids_strings", C, js({"prompt": "hi", "stop_token_ids": ["a"]})),
        ("stop_token_ids_huge", C, js({"prompt": "hi", "stop_token_ids": [2 ** 70], "max_tokens": 2})),
        ("top_k_huge", C, js({"prompt": "hi", "top_k": 2 ** 70, "max_tokens": 2})),
        ("stream_string", C, js({"prompt": "hi", "stream": "yes"})),
        ("stream_options_list", CHAT, js(_chat(stream=True, stream_options=[1]))),
        ("logprobs_too_many", C, js({"prompt": "hi", "logprobs": 99})),  # completions take 0..20
        ("unknown_model", C, js({"model": "gpt-9", "prompt": "hi"})),
        ("messages_missing", CHAT, js({"max_tokens": 2})),
        ("messages_string", CHAT, js({"messages": "hi"})),
        ("message_no_role", CHAT, js({"messages": [{"content": "hi"}]})),
        ("message_unknown_role", CHAT, js({"messages": [{"role": "root", "content": "hi"}]})),
        ("message_content_number", CHAT, js({"messages": [{"role": "user", "content": 7}]})),
        ("message_image_part", CHAT, js({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
        ("icl_with_messages", CHAT, js({"icl": ICL, "messages": [{"role": "user", "content": "hi"}]})),
        ("icl_not_object", CHAT, js({"icl": [1, 2], "messages": []})),
        ("icl_no_examples", GEN, js({"icl": {**ICL, "examples": []}})),
        ("icl_example_missing_output", GEN, js({"icl": {**ICL, "examples": [{"input": "a"}]}})),
        ("icl_example_extra_key", GEN, js({"icl": {**ICL, "examples": [{**EX[0], "x": 1}]}})),
        ("icl_example_number", GEN, js({"icl": {**ICL, "examples": [{"input": 1, "output": "b"}]}})),
        ("icl_too_many_examples", GEN, js({"icl": {**ICL, "examples": EX * 65}})),
        ("icl_bad_refine", GEN, js({"icl": {**ICL, "refine": "magic"}})),
        ("icl_empty_query", GEN, js({"icl": {**ICL, "query": ""}})),
        ("icl_unknown_key", GEN, js({"icl": {**ICL, "tenant": "team-b"}})),
        ("generate_unknown_field", GEN, js({"text": "hi", "tenant": "team-b"})),
        ("generate_sampling_list", GEN, js({"text": "hi", "sampling_params": [1]})),
        ("generate_two_inputs", GEN, js({"text": "hi", "input_ids": [1, 2]})),
        ("update_config_unknown_knob", "/update_config", js({"warp_drive": 9})),
        ("update_config_bad_value", "/update_config", js({"max_running_requests": -4})),
    ]
    return cases


def _error_shape_ok(r: httpx.Response) -> bool:
    try:
        err = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return (isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}
            and isinstance(err["message"], str) and isinstance(err["type"], str))


def run_hand_list(srv: ServerProc) -> dict:
    results = []
    with httpx.Client(base_url=srv.url, timeout=120.0) as c:
        for name, path, body in hand_cases():
            key = ADMIN_KEY if path == "/update_config" else KEY
            try:
                r = c.post(path, content=body, headers={**bearer(key), "content-type": "application/json"})
                status, shape = r.status_code, r.status_code < 400 or _error_shape_ok(r)
            except httpx.HTTPError as e:
                status, shape = f"transport error: {e}", False
            results.append((name, status, shape))
        good = c.post(C, json={"prompt": "still serving", "max_tokens": 2}, headers=bearer(KEY))
    five = [(n, s) for n, s, _ in results if not isinstance(s, int) or s >= 500]
    bad_shape = [n for n, s, shape in results if isinstance(s, int) and 400 <= s < 500 and not shape]
    accepted = [n for n, s, _ in results if isinstance(s, int) and s < 400]
    return {"cases": len(results), "server_errors": len(five), "server_error_cases": five[:5],
            "non_openai_4xx": bad_shape, "accepted_2xx": accepted,
            "statuses": {n: s for n, s, _ in results}, "serves_after": good.status_code == 200}


def run_schemathesis(srv: ServerProc, max_examples: int, work_dir: Path, timeout_s: float = 1800.0) -> dict:
    """schemathesis against /openapi.json (admin key: every route), positive data, check not_a_server_error."""
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    report = work_dir / "schemathesis.junit.xml"
    cmd = [exe, "run", f"{srv.url}/openapi.json", "--header", f"Authorization: Bearer {ADMIN_KEY}",
           "--checks", "not_a_server_error", "--mode", "positive", "--max-examples", str(max_examples),
           "--phases", "examples,coverage,fuzzing", "--workers", "1", "--request-timeout", "300", "--seed", "0",
           "--report", "junit", "--report-junit-path", str(report), "--no-color"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=work_dir)  # its cache too
    out = proc.stdout + proc.stderr
    tests = failures = errors = None
    if report.exists():
        head = report.read_text(errors="replace")[:2000]
        import re
        m = re.search(r'<testsuites[^>]*tests="(\d+)"[^>]*failures="(\d+)"[^>]*errors="(\d+)"', head)
        if m is None:
            m = re.search(r'<testsuite[^>]*tests="(\d+)"[^>]*failures="(\d+)"[^>]*errors="(\d+)"', head)
        if m:
            tests, failures, errors = (int(x) for x in m.groups())
    return {"exit_code": proc.returncode, "operations": tests, "failures": failures, "errors": errors,
            "max_examples": max_examples, "summary": [ln for ln in out.splitlines() if ln.strip()][-6:]}


def run_bad_input(srv: ServerProc, schemathesis_examples: int = 50, work_dir: Path | None = None) -> dict:
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="pairserve-r3-"))
    st = run_schemathesis(srv, schemathesis_examples, work_dir)
    hand = run_hand_list(srv)
    ok = (st["exit_code"] == 0 and hand["server_errors"] == 0 and not hand["non_openai_4xx"]
          and not hand["accepted_2xx"] and hand["serves_after"] and len(hand_cases()) >= 40)
    return {"schemathesis": st, "hand_list": hand, "ok": ok}
