"""R5: every route without a key, with a wrong key, with a tenant's key and with the admin key (a server with a key
file of two tenants and an admin key, no --metrics-public), against the expected status; and the cross-tenant
check over HTTP: tenant B's ICL requests never receive an example that only tenant A sent (meta_info.icl_examples
against what B sent), even when B's body tries to name A's tenant."""
from __future__ import annotations

import hashlib

import httpx

from bench.reliability.server_proc import ADMIN_KEY, TENANT_KEYS, ServerProc, bearer
from bench.reliability.workload import log_stream_icls

KEY_A, KEY_B = list(TENANT_KEYS)
ROUTES = [  # (method, path, body, class)
    ("GET", "/health", None, "tenant"), ("GET", "/metrics", None, "tenant"), ("GET", "/v1/models", None, "tenant"),
    ("GET", "/get_server_info", None, "tenant"), ("GET", "/stats", None, "tenant"),
    ("GET", "/openapi.json", None, "tenant"),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}, "tenant"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, "tenant"),
    ("POST", "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 2}}, "tenant"),
    ("POST", "/update_config", {"schedule_policy": "lpm"}, "admin"),
    ("POST", "/flush_cache", None, "admin"),
]


def _audit(e: dict) -> str:
    return hashlib.sha256(f"{e['input']}\n{e['output']}".encode()).hexdigest()[:16]


def cross_tenant(c: httpx.Client, n: int = 12) -> dict:
    """A sends n log-stream requests with marked example inputs, then B sends the next n (same templates)."""
    icls = log_stream_icls(2 * n)
    sent_a, sent_b, crossed = set(), set(), 0
    for icl in icls[:n]:
        icl = {**icl, "examples": [{"input": f"[team-a] {e['input']}", "output": e["output"]} for e in icl["examples"]]}
        sent_a |= {_audit(e) for e in icl["examples"]}
        c.post("/generate", json={"icl": icl, "sampling_params": {"max_new_tokens": 2}}, headers=bearer(KEY_A))
    served = 0
    for icl in icls[n:]:
        sent_b |= {_audit(e) for e in icl["examples"]}
        body = {"messages": [], "icl": icl, "max_tokens": 2, "tenant": "team-a"}  # 'tenant' in a body is ignored
        r = c.post("/v1/chat/completions", json=body, headers=bearer(KEY_B))
        if r.status_code == 200:
            served += 1
            got = set(r.json()["choices"][0]["meta_info"]["icl_examples"])
            crossed += len(got - sent_b)
    return {"requests_a": n, "requests_b": n, "served_b": served, "examples_from_a_in_b": crossed,
            "ok": served == n and crossed == 0}


def run_auth(srv: ServerProc) -> dict:
    expect = {"none": {"tenant": 401, "admin": 401}, "wrong": {"tenant": 401, "admin": 401},
              "tenant_b": {"tenant": 200, "admin": 403}, "admin": {"tenant": 200, "admin": 200}}
    keys = {"none": None, "wrong": "not-a-key", "tenant_b": KEY_B, "admin": ADMIN_KEY}
    mismatches, checked = [], 0
    with httpx.Client(base_url=srv.url, timeout=120.0) as c:
        for method, path, body, cls in ROUTES:
            for who, key in keys.items():
                r = c.request(method, path, json=body, headers=bearer(key))
                checked += 1
                want = expect[who][cls]
                if r.status_code != want:
                    mismatches.append(f"{method} {path} as {who}: {r.status_code}, expected {want}")
                elif r.status_code >= 400 and set(r.json().get("error", {})) != {"message", "type", "param", "code"}:
                    mismatches.append(f"{method} {path} as {who}: error body not in OpenAI's shape")
        cross = cross_tenant(c)
    return {"routes": len(ROUTES), "checks": checked, "mismatches": mismatches, "cross_tenant": cross,
            "ok": not mismatches and cross["ok"]}
