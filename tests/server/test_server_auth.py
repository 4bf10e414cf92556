"""Keys, tenants and route classes over HTTP (server/auth.py): startup refusals, --api-key-file tenants whose ICL
examples never cross, the admin key, --metrics-public, and --isolate-prefix-cache between tenants."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import httpx

from logparse import build_stream, load_system, to_icl

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "loghub")
KEYS = {"key-a": "team-a", "key-b": "team-b", "key-b2": "team-b"}
ADMIN = "admin-key"
GREEDY = {"max_new_tokens": 2, "temperature": 0, "ignore_eos": True}


def _key_file(tmp_path, keys=KEYS) -> str:
    path = tmp_path / "keys.txt"
    path.write_text("# key tenant\n" + "".join(f"{k} {t}\n" for k, t in keys.items()))
    return str(path)


def _h(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _refused(tiny_model_dir, *flags: str) -> str:
    """Run the server with flags it must refuse before loading anything: exit 2, the reason on stderr."""
    r = subprocess.run([sys.executable, "-m", "server", "--model", tiny_model_dir, "--port", "1", *flags],
                       capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode == 2, (r.returncode, r.stderr)
    return r.stderr


def test_startup_refuses_empty_keys_and_duplicate_keys(tiny_model_dir, tmp_path):
    assert "api_key: must not be empty" in _refused(tiny_model_dir, "--api-key", "")
    assert "api_key: must not be empty" in _refused(tiny_model_dir, "--api-key", "   ")
    assert "admin_api_key: must not be empty" in _refused(tiny_model_dir, "--admin-api-key", " ")
    dup = tmp_path / "dup.txt"
    dup.write_text("k1 team-a\nk2 team-b\nk1 team-c\n")
    assert "line 3: duplicate key" in _refused(tiny_model_dir, "--api-key-file", str(dup))
    assert "also in --api-key-file" in _refused(tiny_model_dir, "--api-key-file", _key_file(tmp_path),
                                                "--api-key", "key-a")
    bad = tmp_path / "bad.txt"
    bad.write_text("only-a-key\n")
    assert "line 1: expected 'KEY TENANT'" in _refused(tiny_model_dir, "--api-key-file", str(bad))


def _audit(e: dict) -> str:
    return hashlib.sha256(f"{e['input']}\n{e['output']}".encode()).hexdigest()[:16]


def test_key_file_tenants_admin_key_and_probes(start_server, tmp_path):
    srv = start_server("--api-key-file", _key_file(tmp_path), "--admin-api-key", ADMIN, "--pair-policy", "native",
                       bearer="key-a")
    with httpx.Client(base_url=srv.url, timeout=60.0) as c:
        for path in ("/health", "/metrics", "/v1/models", "/get_server_info"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=_h("wrong")).status_code == 401, path
            for key in ("key-a", "key-b2", ADMIN):
                assert c.get(path, headers=_h(key)).status_code == 200, (path, key)
        info = c.get("/get_server_info", headers=_h(ADMIN)).json()["server_args"]
        assert "admin_api_key" not in info and "api_key" not in info
        for path, body in (("/flush_cache", None), ("/update_config", {"schedule_policy": "lpm"})):
            for key in ("key-a", "key-b"):
                r = c.post(path, json=body, headers=_h(key))
                assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", r.text
            assert c.post(path, json=body, headers=_h(ADMIN)).status_code == 200, path

        # Tenant A's examples (marked inputs) never reach tenant B, even when B's body names A's tenant.
        stream = build_stream(load_system(FIXTURES, "HDFS"))
        sent_a, sent_b = set(), set()
        for q in stream[:4]:
            icl = to_icl(q)
            icl["examples"] = [{"input": f"A {e['input']}", "output": e["output"]} for e in icl["examples"]]
            sent_a |= {_audit(e) for e in icl["examples"]}
            r = c.post("/generate", json={"icl": icl, "sampling_params": GREEDY}, headers=_h("key-a"))
            assert r.status_code == 200, r.text
        r = c.post("/generate", json={"icl": icl, "sampling_params": GREEDY, "tenant": "team-b"},
                   headers=_h("key-a"))
        assert r.status_code == 400 and r.json()["error"]["param"] == "tenant"
        for i, q in enumerate(stream[4:8]):
            icl = to_icl(q)
            sent_b |= {_audit(e) for e in icl["examples"]}
            body = {"messages": [], "icl": icl, "max_tokens": 2, "temperature": 0, "tenant": "team-a"}
            r = c.post("/v1/chat/completions", json=body, headers=_h("key-b" if i % 2 else "key-b2"))
            assert r.status_code == 200, r.text
            got = set(r.json()["choices"][0]["meta_info"]["icl_examples"])
            assert got <= sent_b and not got & sent_a, (got, sent_b)


def test_metrics_public_and_isolated_prefix_cache(start_server, tmp_path):
    srv = start_server("--api-key-file", _key_file(tmp_path), "--metrics-public", "--isolate-prefix-cache",
                       bearer="key-a")
    with httpx.Client(base_url=srv.url, timeout=60.0) as c:
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200
        assert c.get("/v1/models").status_code == 401
        # No admin key and tenants from a file: nobody may flush the shared cache.
        assert c.post("/flush_cache", headers=_h("key-a")).status_code == 403
        body = {"prompt": "the same shared system prompt for both teams " * 8, "max_tokens": 2}
        first = c.post("/v1/completions", json=body, headers=_h("key-a")).json()["usage"]
        again = c.post("/v1/completions", json=body, headers=_h("key-a")).json()["usage"]
        other = c.post("/v1/completions", json=body, headers=_h("key-b")).json()["usage"]
        assert first["prompt_tokens_details"]["cached_tokens"] == 0
        assert again["prompt_tokens_details"]["cached_tokens"] > 0  # A's own prefix is cached for A
        assert other["prompt_tokens_details"]["cached_tokens"] == 0  # ... and never for B
