"""Plots of a `python -m bench.compare` result (matplotlib, Agg backend: no display needed). PNG files.

`write_plots(result, stem)` writes, next to the JSON (same stem):
- STEM_policies.png: request throughput and p95 E2E latency per entry (pairserve policies: no cache / radix /
  table / native, and the peers); bar = median over rounds, whisker = min..max over rounds;
- STEM_hit_rate.png: token hit rate per system (per GSP group, or one "all" group for random), one bar per entry
  (median over rounds); entries without cache accounting (None) are left out;
- STEM_latency_cdf.png: empirical CDFs of E2E latency and TTFT per entry, all rounds' requests pooled.
`result` is bench.compare's JSON object: {"entries": [names], "runs": [records with "entry", per-request
"e2e_latencies" / "ttfts", "request_throughput", "p95_e2e_latency_ms", "token_hit_rate" and optionally
"token_hit_rate_by_system"]}.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: benchmarks run headless

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

POLICY_LABELS = {"pairserve:none": "pairserve: no cache", "pairserve:radix": "pairserve: radix",
                 "pairserve:table": "pairserve: table", "pairserve:native": "pairserve: native"}


def label(entry: str) -> str:
    return POLICY_LABELS.get(entry, entry)


def _runs_of(result: dict, entry: str) -> list[dict]:
    return [r for r in result["runs"] if r["entry"] == entry and r["completed"] > 0]


def _bars(ax, entries: list[str], values: list[list[float]], ylabel: str, title: str) -> None:
    """Median bars with min..max whiskers; `values[i]` are entry i's per-round values."""
    x = np.arange(len(entries))
    med = [float(np.median(v)) if v else 0.0 for v in values]
    lo = [m - (min(v) if v else 0.0) for m, v in zip(med, values)]
    hi = [(max(v) if v else 0.0) - m for m, v in zip(med, values)]
    ax.bar(x, med, yerr=[lo, hi], capsize=4, color=[f"C{i}" for i in range(len(entries))])
    ax.set_xticks(x, [label(e) for e in entries], rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def plot_policies(result: dict, path: str) -> None:
    entries = result["entries"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    _bars(a, entries, [[r["request_throughput"] for r in _runs_of(result, e)] for e in entries],
          "requests / s", "Throughput (median over rounds)")
    _bars(b, entries, [[r["p95_e2e_latency_ms"] for r in _runs_of(result, e)] for e in entries],
          "ms", "p95 end-to-end latency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def hit_rates(result: dict) -> dict[str, dict[str, float]]:
    """{entry: {system: median hit rate over rounds}}, entries with no cache accounting omitted."""
    out: dict[str, dict[str, float]] = {}
    for e in result["entries"]:
        per_system: dict[str, list[float]] = {}
        for r in _runs_of(result, e):
            by = r.get("token_hit_rate_by_system") or {"all": r.get("token_hit_rate")}
            for s, v in by.items():
                if v is not None:
                    per_system.setdefault(s, []).append(v)
        if per_system:
            out[e] = {s: float(np.median(v)) for s, v in per_system.items()}
    return out


def plot_hit_rate(result: dict, path: str) -> None:
    rates = hit_rates(result)
    systems = list(dict.fromkeys(s for by in rates.values() for s in by))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(systems) * max(len(rates), 1)), 4))
    width = 0.8 / max(len(rates), 1)
    x = np.arange(len(systems))
    for i, (e, by) in enumerate(rates.items()):
        ax.bar(x + i * width, [by.get(s, 0.0) for s in systems], width, label=label(e))
    ax.set_xticks(x + width * (len(rates) - 1) / 2, systems, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("cached / prompt tokens")
    ax.set_title("Token hit rate per system")
    if rates:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency_cdf(result: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in zip(axes, ("e2e_latencies", "ttfts"), ("End-to-end latency", "Time to first token")):
        for i, e in enumerate(result["entries"]):
            xs = np.sort([1000.0 * v for r in _runs_of(result, e) for v in r.get(key, [])])
            if len(xs):
                ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", color=f"C{i}", label=label(e))
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{title} CDF (all rounds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(result: dict, stem: str) -> list[str]:
    """The three PNGs as STEM_policies.png, STEM_hit_rate.png, STEM_latency_cdf.png; returns their paths."""
    paths = [f"{stem}_policies.png", f"{stem}_hit_rate.png", f"{stem}_latency_cdf.png"]
    for fn, p in zip((plot_policies, plot_hit_rate, plot_latency_cdf), paths):
        fn(result, p)
    return paths
