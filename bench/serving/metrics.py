"""Serving-benchmark metrics with SGLang / vLLM bench_serving's definitions, and its printed result block.

Per request (`RequestResult`, times in seconds, measured by the client):
- ttft: request sent → first chunk that carries generated text.
- itl: the gaps between consecutive text-carrying chunks after the first (one entry per chunk, not per token:
  a chunk holding several tokens is one gap, as in bench_serving).
- latency (E2E): request sent → stream finished.
- tpot = (latency - ttft) / (output_len - 1), only for requests with output_len > 1.
Per run (`compute_metrics`, over successful requests only; `duration_s` = first send → last completion):
- request / input / output / total token throughput = completed, Σ prompt_len, Σ output_len, and the sum of the
  two, each divided by duration_s;
- concurrency = Σ latency / duration_s (the mean number of requests in flight);
- token hit rate = Σ cached_tokens / Σ prompt_len over requests whose server reported cached tokens (None when
  none did: a server without prefix-cache accounting has no hit rate, not a hit rate of 0);
- mean / median / std / p95 / p99 (numpy's linear-interpolation percentiles) of ttft, tpot, itl and E2E, in ms,
  and max itl. An empty list gives 0 for every statistic, as bench_serving does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

STATS = ("mean", "median", "std", "p95", "p99")


@dataclass
class RequestResult:
    """One request's outcome. prompt_len / output_len are the server's usage counts when it reports them."""

    success: bool
    prompt_len: int = 0
    output_len: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    cached_tokens: int | None = None  # None: the server did not say
    send_time: float = 0.0  # seconds since the run started (for timelines)
    system: str = ""  # workload group: Loghub system, GSP group, or "" for random
    error: str = ""

    @property
    def tpot(self) -> float | None:
        return (self.latency - self.ttft) / (self.output_len - 1) if self.output_len > 1 else None


def summarize(values: Sequence[float], prefix: str, scale: float = 1000.0) -> dict[str, float]:
    """{f"{stat}_{prefix}": value * scale} for the STATS; zeros for an empty list (bench_serving's `or 0`)."""
    arr = np.asarray(values if len(values) else [0.0], dtype=np.float64) * scale
    return {f"mean_{prefix}": float(arr.mean()), f"median_{prefix}": float(np.median(arr)),
            f"std_{prefix}": float(arr.std()), f"p95_{prefix}": float(np.percentile(arr, 95)),
            f"p99_{prefix}": float(np.percentile(arr, 99))}


def token_hit_rate(results: Iterable[RequestResult]) -> float | None:
    """Σ cached / Σ prompt over successful requests with a reported cached count; None if there are none."""
    known = [r for r in results if r.success and r.cached_tokens is not None]
    prompt = sum(r.prompt_len for r in known)
    if not known or prompt == 0:
        return None
    return sum(r.cached_tokens for r in known) / prompt


def hit_rate_by_system(results: Sequence[RequestResult]) -> dict[str, float | None]:
    """token_hit_rate per `system` label, in first-seen order (empty labels are skipped)."""
    systems = list(dict.fromkeys(r.system for r in results if r.system))
    return {s: token_hit_rate(r for r in results if r.system == s) for s in systems}


def compute_metrics(results: Sequence[RequestResult], duration_s: float) -> dict:
    """The run's metrics (module docstring). Raises ValueError on a non-positive duration."""
    if not duration_s > 0:
        raise ValueError(f"duration_s: must be > 0 (got {duration_s})")
    ok = [r for r in results if r.success]
    total_input = sum(r.prompt_len for r in ok)
    total_output = sum(r.output_len for r in ok)
    ttfts = [r.ttft for r in ok]
    e2e = [r.latency for r in ok]
    tpots = [t for t in (r.tpot for r in ok) if t is not None]
    itls = [x for r in ok for x in r.itl]
    out = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration_s,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration_s,
        "input_throughput": total_input / duration_s,
        "output_throughput": total_output / duration_s,
        "total_throughput": (total_input + total_output) / duration_s,
        "concurrency": sum(e2e) / duration_s,
        "token_hit_rate": token_hit_rate(ok),
        "cached_tokens": sum(r.cached_tokens or 0 for r in ok),
    }
    out.update(summarize(ttfts, "ttft_ms"))
    out.update(summarize(tpots, "tpot_ms"))
    out.update(summarize(itls, "itl_ms"))
    out["max_itl_ms"] = 1000.0 * max(itls, default=0.0)
    out.update(summarize(e2e, "e2e_latency_ms"))
    by_system = hit_rate_by_system(ok)
    if by_system:
        out["token_hit_rate_by_system"] = by_system
    return out


def _line(label: str, value, fmt: str = "") -> str:
    if value is None:
        text = "n/a"
    elif isinstance(value, float) and not fmt:
        text = f"{value:.2f}"
    else:
        text = format(value, fmt)
    return f"{label:<40} {text:<10}"


def _rule(title: str, fill: str) -> str:
    return f"{title:{fill}^50}"


def _stat_lines(m: dict, title: str, label: str, key: str) -> list[str]:
    """A bench_serving latency section: its rule, then Mean / Median / P95 / P99 of `key` in ms."""
    stats = (("Mean", "mean"), ("Median", "median"), ("P95", "p95"), ("P99", "p99"))
    return [_rule(title, "-"), *(_line(f"{name} {label} (ms):", m[f"{stat}_{key}_ms"]) for name, stat in stats)]


def format_result_block(m: dict, backend: str, request_rate: float, max_concurrency: int | None,
                        notes: Sequence[str] = ()) -> str:
    """bench_serving's printed layout (the same labels and order), plus a token hit rate line and any notes."""
    rate = "inf" if math.isinf(request_rate) else request_rate
    hit = m.get("token_hit_rate")
    lines = [
        "", _rule(" Serving Benchmark Result ", "="),
        _line("Backend:", backend),
        _line("Traffic request rate:", rate),
        _line("Max request concurrency:", max_concurrency if max_concurrency else "not set"),
        _line("Successful requests:", m["completed"]),
        _line("Benchmark duration (s):", m["duration_s"]),
        _line("Total input tokens:", m["total_input_tokens"]),
        _line("Total generated tokens:", m["total_output_tokens"]),
        _line("Request throughput (req/s):", m["request_throughput"]),
        _line("Input token throughput (tok/s):", m["input_throughput"]),
        _line("Output token throughput (tok/s):", m["output_throughput"]),
        _line("Total token throughput (tok/s):", m["total_throughput"]),
        _line("Concurrency:", m["concurrency"]),
        _line("Token hit rate (cached/prompt):", None if hit is None else f"{100 * hit:.2f}%"),
        *_stat_lines(m, "End-to-End Latency", "E2E Latency", "e2e_latency"),
        *_stat_lines(m, "Time to First Token", "TTFT", "ttft"),
        *_stat_lines(m, "Time per Output Token (excl. 1st token)", "TPOT", "tpot"),
        *_stat_lines(m, "Inter-Token Latency", "ITL", "itl"),
        _line("Max ITL (ms):", m["max_itl_ms"]),
    ]
    by_system = m.get("token_hit_rate_by_system") or {}
    if len(by_system) > 1:
        lines.append(_rule("Token Hit Rate by System", "-"))
        lines += [_line(f"{s}:", None if v is None else f"{100 * v:.2f}%") for s, v in by_system.items()]
    if m.get("failed"):
        lines.append(_line("Failed requests:", m["failed"]))
    lines.append("=" * 50)
    lines += [f"Note: {n}" for n in notes]
    return "\n".join(lines)
