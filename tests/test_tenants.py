"""Tenant scoping in the engine: PAIR's examples never cross tenants (native and table, on a fixture log stream,
checked through meta_info.icl_examples against what each tenant sent), icl_examples is the documented hash, and
with isolate_prefix_cache a tenant never gets cached tokens from another tenant's prompts."""
from __future__ import annotations

import hashlib
import os

import pytest

from logparse import build_stream, load_system, to_icl

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")
GREEDY = {"max_new_tokens": 2, "temperature": 0, "ignore_eos": True}


def audit(inp: str, out: str) -> str:
    return hashlib.sha256(f"{inp}\n{out}".encode()).hexdigest()[:16]


def two_tenant_streams(refine: str, n: int = 8):
    """Tenant A's and tenant B's requests on one system's log stream. A's example inputs carry a marker, so an
    example A sent can stand in (same template) for one of B's but is never one B sent itself."""
    stream = build_stream(load_system(FIXTURES, "HDFS"))
    a, b = [], []
    for q in stream[:n]:
        icl = to_icl(q, refine=refine)
        a.append({**icl, "examples": [{"input": f"A {e['input']}", "output": e["output"]} for e in icl["examples"]]})
    for q in stream[n:2 * n]:
        b.append(to_icl(q, refine=refine))
    return a, b


def run_tenants(eng, a_reqs, b_reqs, tenant_a: str, tenant_b: str) -> tuple[set[str], set[str], list[list[str]]]:
    """A's requests first, then B's (sequentially); → (hashes A sent, hashes B sent, B's icl_examples)."""
    sent_a = {audit(e["input"], e["output"]) for icl in a_reqs for e in icl["examples"]}
    for icl in a_reqs:
        eng.generate(icl=icl, sampling_params=GREEDY, tenant=tenant_a)
    sent_b: set[str] = set()
    got_b = []
    for icl in b_reqs:
        sent_b |= {audit(e["input"], e["output"]) for e in icl["examples"]}
        meta = eng.generate(icl=icl, sampling_params=GREEDY, tenant=tenant_b)["meta_info"]
        assert sorted(meta["icl_order"]) == list(range(len(icl["examples"])))
        assert len(meta["icl_examples"]) == len(icl["examples"])
        assert set(meta["icl_examples"]) <= sent_b | sent_a  # the audit hash is the documented one
        got_b.append(meta["icl_examples"])
    return sent_a, sent_b, got_b


@pytest.mark.parametrize("refine", ["native", "table"])
def test_tenant_b_never_gets_an_example_of_tenant_a(refine, tiny_model_dir, make_engine):
    a_reqs, b_reqs = two_tenant_streams(refine)
    # Control: one shared tenant. PAIR substitutes A's examples into B's prompts, so the check below can fail.
    eng = make_engine(tiny_model_dir, kv_cache_tokens=16384)
    sent_a, sent_b, got_b = run_tenants(eng, a_reqs, b_reqs, "team", "team")
    assert sent_a.isdisjoint(sent_b)
    assert any(set(g) & sent_a for g in got_b), "the control run substituted nothing: the test would prove nothing"
    eng.flush_cache()

    eng2 = make_engine(tiny_model_dir, kv_cache_tokens=16384)
    sent_a, sent_b, got_b = run_tenants(eng2, a_reqs, b_reqs, "team-a", "team-b")
    for g in got_b:
        assert set(g) <= sent_b and not set(g) & sent_a


def test_icl_examples_hash_each_example_of_the_final_prompt(tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir)
    icl = to_icl(build_stream(load_system(FIXTURES, "Spark"))[0], refine="none")
    meta = eng.generate(icl=icl, sampling_params=GREEDY)["meta_info"]
    assert meta["icl_examples"] == [audit(e["input"], e["output"]) for e in icl["examples"]]
    with pytest.raises(ValueError, match="tenant"):
        eng.generate("hello", GREEDY, tenant="")


@pytest.mark.parametrize("isolate", [True, False])
def test_isolated_prefix_cache_never_serves_another_tenants_tokens(isolate, tiny_model_dir, make_engine):
    """B sends exactly A's requests after A. Isolated, B's history is its own, so each B request gets exactly the
    cached tokens A's copy got (from A's own earlier prompts); shared, B hits A's whole prompts instead."""
    stream = build_stream(load_system(FIXTURES, "HDFS"))
    icls = [to_icl(q, refine="none") for q in stream[:6]]
    eng = make_engine(tiny_model_dir, kv_cache_tokens=16384, isolate_prefix_cache=isolate)
    cached_a = [eng.generate(icl=icl, sampling_params=GREEDY, tenant="a")["meta_info"]["cached_tokens"]
                for icl in icls]
    outs_b = [eng.generate(icl=icl, sampling_params=GREEDY, tenant="b")["meta_info"] for icl in icls]
    cached_b = [m["cached_tokens"] for m in outs_b]
    if isolate:
        assert cached_b == cached_a and cached_b[0] == 0
    else:
        assert all(cb >= m["prompt_tokens"] - 1 for cb, m in zip(cached_b, outs_b))
        assert all(cb > ca for cb, ca in zip(cached_b, cached_a))


def test_lone_surrogate_is_a_value_error_naming_the_field(tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir)
    with pytest.raises(ValueError, match="^prompt: not valid Unicode"):
        eng.generate("ok \ud800", GREEDY)
    icl = {"instruction": "x", "query": "q", "examples": [{"input": "a\udc00", "output": "b"}]}
    with pytest.raises(ValueError, match=r"^icl.examples\[0\].input: not valid Unicode"):
        eng.generate(icl=icl, sampling_params=GREEDY)
    assert eng.generate("ok", GREEDY)["meta_info"]["completion_tokens"] == 2
