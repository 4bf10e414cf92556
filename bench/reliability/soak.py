"""R2: a soak of log-parsing ICL requests (streamed chat completions, two tenants alternating, native PAIR) at a
fixed number in flight, every tenth one abandoned by the client after its first content chunk.

Figures: `lost` — requests that did not end as they should (a kept stream without a finish_reason and [DONE], any
non-200 answer, an error frame, a transport error or timeout; an abandoned one that failed before its first
chunk); KV slots after the drain (every slot must be free or held by the cache, none locked); and the server's
RSS (main + scheduler + detokenizer) when the first 500 requests had completed against the end of the run."""
from __future__ import annotations

import asyncio
import json
import time

import httpx

from bench.reliability.server_proc import TENANT_KEYS, ServerProc, bearer
from bench.reliability.workload import log_stream_icls

ABORT_EVERY = 10  # request i is abandoned mid-stream when i % ABORT_EVERY == ABORT_EVERY - 1
RSS_MARK = 500


def rss_mark_at(requests: int) -> int:
    """After how many completed requests RSS is first read: 500, or a quarter of a shorter run."""
    return max(1, min(RSS_MARK, requests // 4))


async def _one(client: httpx.AsyncClient, i: int, icl: dict, key: str, max_tokens: int, abandon: bool,
               timeout_s: float) -> str:
    """'ok', 'abandoned' or 'lost: <why>'."""
    body = {"messages": [], "icl": icl, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=bearer(key)) as r:
                if r.status_code != 200:
                    return f"lost: status {r.status_code}: {(await r.aread())[:200]!r}"
                finish, done = None, False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    obj = json.loads(data)
                    if "error" in obj:
                        return f"lost: error frame {obj['error']}"
                    for ch in obj.get("choices", []):
                        if ch.get("delta", {}).get("content") and abandon:
                            return "abandoned"  # leaving the block closes the connection: the server aborts it
                        finish = ch.get("finish_reason") or finish
                if abandon:
                    return "ok"  # finished before the client could leave: a normal finish
                return "ok" if finish and done else f"lost: stream ended without finish ({finish}, {done})"
    except (httpx.HTTPError, TimeoutError) as e:
        return f"lost: {type(e).__name__}: {e}"


async def _soak(srv: ServerProc, n: int, concurrency: int, max_tokens: int, timeout_s: float) -> dict:
    icls = log_stream_icls(n)
    keys = list(TENANT_KEYS)
    sem = asyncio.Semaphore(concurrency)
    outcomes: list[str] = []
    rss_at_mark: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=srv.url, timeout=timeout_s, limits=limits) as client:
        async def run(i: int) -> None:
            async with sem:
                out = await _one(client, i, icls[i], keys[i % len(keys)], max_tokens,
                                 i % ABORT_EVERY == ABORT_EVERY - 1, timeout_s)
            outcomes.append(out)
            if len(outcomes) == rss_mark_at(n):
                rss_at_mark.update(srv.rss())

        start = time.perf_counter()
        await asyncio.gather(*(run(i) for i in range(n)))
        wall = time.perf_counter() - start
    return {"outcomes": outcomes, "rss_mark": rss_at_mark, "wall_s": wall}


def run_soak(srv: ServerProc, requests: int = 2000, concurrency: int = 64, max_tokens: int = 16,
             timeout_s: float = 600.0) -> dict:
    res = asyncio.run(_soak(srv, requests, concurrency, max_tokens, timeout_s))
    info = srv.wait_idle()
    rss_end = srv.rss()
    lost = [o for o in res["outcomes"] if o.startswith("lost")]
    free, evictable = info["kv_free_tokens"], info["cache_evictable_tokens"]
    capacity, cached = info["kv_capacity_tokens"], info["cache_tokens"]
    mark_total, end_total = sum(res["rss_mark"].values()), sum(rss_end.values())
    kv_ok = free + evictable == capacity and cached == evictable
    return {
        "requests": requests, "concurrency": concurrency, "max_tokens": max_tokens,
        "completed": sum(o == "ok" for o in res["outcomes"]),
        "abandoned_by_client": sum(o == "abandoned" for o in res["outcomes"]),
        "lost": len(lost), "lost_examples": lost[:3],
        "kv_capacity_tokens": capacity, "kv_free_tokens": free, "kv_cached_tokens": cached,
        "kv_locked_tokens": cached - evictable, "kv_free_or_cached": free + evictable == capacity,
        "rss_mark_after_requests": rss_mark_at(requests), "rss_mb_at_mark": round(mark_total / 2 ** 20, 1),
        "rss_mb_at_end": round(end_total / 2 ** 20, 1),
        "rss_growth_mb": round((end_total - mark_total) / 2 ** 20, 1),
        "rss_mb_by_process_at_end": {k: round(v / 2 ** 20, 1) for k, v in rss_end.items()},
        "wall_s": round(res["wall_s"], 1), "req_per_s": round(requests / res["wall_s"], 2),
        "ok": not lost and kv_ok,
    }
