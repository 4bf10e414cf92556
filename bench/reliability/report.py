"""`python -m bench.reliability.report OUT.json`: the figures of one bench.reliability run as a Markdown table
(the block docs/reliability.md shows), one row per R line."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _r1(r: dict) -> str:
    c = r["counts"]
    return (f"{r['ops']:,} random ops ({c['admit']:,} admissions, {c['prefill_chunk']:,} prefill chunks, "
            f"{c['evict']:,} evictions, {c['flush']} flushes), integrity checked {c['checks']} times; "
            f"**{r['leaked_slots']} leaked slots**, {len(r['violations'])} violations")


def _r2(r: dict) -> str:
    return (f"{r['requests']:,} log-stream ICL requests at {r['concurrency']} in flight, {r['abandoned_by_client']} "
            f"abandoned mid-stream by the client: **lost {r['lost']}**; after the drain {r['kv_free_tokens']:,} free + "
            f"{r['kv_cached_tokens']:,} cached of {r['kv_capacity_tokens']:,} KV slots, {r['kv_locked_tokens']} locked; "
            f"RSS {r['rss_mb_at_mark']} MB after the first {r['rss_mark_after_requests']} → {r['rss_mb_at_end']} MB at the end "
            f"(**{r['rss_growth_mb']:+} MB**); {r['req_per_s']} req/s")


def _r3(r: dict) -> str:
    st, h = r["schemathesis"], r["hand_list"]
    cases = next((ln.strip() for ln in st["summary"] if "generated" in ln), "?")
    return (f"schemathesis on /openapi.json (positive mode, {st['max_examples']} examples per operation, check "
            f"not_a_server_error): {cases}, exit {st['exit_code']}; hand list: {h['cases']} malformed bodies, "
            f"**{h['server_errors']} 5xx**, {len(h['non_openai_4xx'])} 4xx not in OpenAI's shape, "
            f"{len(h['accepted_2xx'])} accepted; serves after: {h['serves_after']}")


def _r4(r: dict) -> str:
    ks, kd, st = r["kill_scheduler"], r["kill_detokenizer"], r["sigterm_under_load"]
    return (f"kill -9 scheduler: /health 503 after {ks['health_503_after_s']} s, exit {ks['exit_code']}, orphans "
            f"{ks['orphans'] or 'none'}; kill -9 detokenizer: 503 after {kd['health_503_after_s']} s, exit "
            f"{kd['exit_code']}, orphans {kd['orphans'] or 'none'}; SIGTERM with {st['in_flight']} in flight: "
            f"{st['finished_normally']} finished normally, a new request got {st['late_request_status']}, exit "
            f"{st['exit_code']}")


def _r5(r: dict) -> str:
    x = r["cross_tenant"]
    return (f"{r['routes']} routes × no / wrong / other tenant's / admin key: {r['checks']} checks, "
            f"**{len(r['mismatches'])} mismatches**; tenant B's {x['requests_b']} ICL requests after tenant A's "
            f"{x['requests_a']}: **{x['examples_from_a_in_b']} examples of A** in B's prompts")


ROWS = {"R1": ("fuzz", _r1), "R2": ("soak", _r2), "R3": ("bad input", _r3), "R4": ("faults", _r4),
        "R5": ("auth", _r5)}


def render(data: dict) -> str:
    lines = ["| line | check | ok | figures |", "|---|---|---|---|"]
    for key, (name, fmt) in ROWS.items():
        r = data.get(key)
        if r is None:
            continue
        figures = fmt(r) if "error" not in r else f"crashed: {r['error']}"
        lines.append(f"| {key} | {name} | {'yes' if r['ok'] else '**no**'} | {figures} ({r['seconds']} s) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())), end="")
