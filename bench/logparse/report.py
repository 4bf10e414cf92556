"""Per-request records of a log-parsing benchmark run and the per-run summary (`python -m bench.logparse`).

Definitions (tokens are the engine's prompt tokens, as sent, i.e. after any PAIR refinement):
- token_hit_rate = Σ cached_tokens / Σ prompt_tokens (cached_tokens is what the radix cache served at admission).
- ceiling_hit_rate = Σ ceiling_tokens / Σ prompt_tokens, where a request's ceiling_tokens are its tokens before
  the query text: instruction head + every example + the query-independent start of the tail (end of the
  examples turn, the assistant's acknowledgement, "Log message: `"). It is what an all-demonstrations-cached
  prompt reuses. Queries that share a textual prefix with an earlier query (e.g. "Receiving block blk_") hit a
  little past it; `hit_beyond_ceiling` measures that part (Σ max(0, cached - ceiling) / Σ prompt), so
  token_hit_rate - hit_beyond_ceiling ≤ ceiling_hit_rate always holds.
- template_multiset_preserved: every request's icl_order is a permutation of its examples, so the templates of
  the examples as sent (example i stands for the request's example icl_order[i]) are the request's multiset;
  and the engine-side audit of each refinement (examples actually sent vs the ones they stand for) found none
  that differed.
- GA / PA / FGA / FTA: logparse.evaluate on extract_template(output text, fallback=query) vs ground truth.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.pair.render import render_icl, validate_icl
from logparse import evaluate, extract_template

SENTINEL_QUERIES = ("\u00a7", "#")  # two, so one always starts differently from the real query


@dataclass
class RequestRecord:
    """One request of a run, filled in as it completes (times in seconds from the run's start)."""

    index: int
    line: int
    query: str
    template: str
    num_examples: int
    tail_fixed_tokens: int  # tail tokens that do not depend on the query text
    tail_tokens: int
    submit_s: float = math.nan
    first_token_s: float = math.nan
    end_s: float = math.nan
    text: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    icl_order: list[int] = field(default_factory=list)
    icl_substituted: int = 0
    rejected: str = ""  # the engine's error when it refused the request at submission

    @property
    def latency_s(self) -> float:
        return self.end_s - self.submit_s

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.submit_s

    @property
    def ceiling_tokens(self) -> int:
        return self.prompt_tokens - (self.tail_tokens - self.tail_fixed_tokens)

    def order_is_permutation(self) -> bool:
        return sorted(self.icl_order) == list(range(self.num_examples))

    def trace(self) -> dict:
        """The JSON-lines trace row for this request."""
        return {"index": self.index, "line": self.line, "submit_s": self.submit_s,
                "first_token_s": self.first_token_s, "end_s": self.end_s, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "completion_tokens": self.completion_tokens,
                "icl_order": self.icl_order, "icl_substituted": self.icl_substituted, "rejected": self.rejected}


class RefineAudit:
    """Wraps the scheduler's PAIR refiner and checks each refinement it makes: every example sent has the
    template of the request example it stands for, and the order is a permutation. Counts violations."""

    def __init__(self, refiner) -> None:
        self.calls = 0
        self.violations = 0
        self._inner = refiner.refine
        refiner.refine = self._refine  # instance attribute shadows the method for this engine only

    def _refine(self, tree, prompt, *args, **kwargs):  # the refiner's own signature (rid, default, tenant)
        res = self._inner(tree, prompt, *args, **kwargs)
        self.calls += 1
        sent = [ex.output for ex in res.examples]
        stood_for = [prompt.examples[i].output for i in res.order]
        if sorted(res.order) != list(range(len(prompt.examples))) or sent != stood_for:
            self.violations += 1
        return res


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_shape(tokenizer, icl: dict) -> tuple[int, int, int]:
    """(prompt tokens, query-independent tail tokens, all tail tokens) of the request as rendered (unrefined).

    The query-independent part is the common prefix of the tail rendered with the real query and with a
    sentinel query that starts with another character, so a token merging the opening backtick with the
    query's first character is not counted."""
    icl = validate_icl(icl)
    prompt = render_icl(tokenizer, icl)
    sentinel = SENTINEL_QUERIES[0] if not icl["query"].startswith(SENTINEL_QUERIES[0]) else SENTINEL_QUERIES[1]
    other = render_icl(tokenizer, {**icl, "query": sentinel}).tail_ids
    total = len(prompt.head_ids) + sum(len(ex.ids) for ex in prompt.examples) + len(prompt.tail_ids)
    return total, _common_prefix_len(prompt.tail_ids, other), len(prompt.tail_ids)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def summarize(records: list[RequestRecord], wall_s: float, prefill_tokens_computed: int, evicted_tokens: int,
              audit_violations: int) -> dict:
    """The per-run metrics listed in the module docstring, plus a few counts that explain them; requests the engine
    rejected are counted (`rejected`) and left out of every other metric."""
    assert records and all(not math.isnan(r.end_s) for r in records), "summarize needs finished requests"
    rejected = sum(1 for r in records if r.rejected)
    records = [r for r in records if not r.rejected]
    if not records:
        raise ValueError(f"all {rejected} requests were rejected by the engine")
    prompt = sum(r.prompt_tokens for r in records)
    cached = sum(r.cached_tokens for r in records)
    ceiling = sum(r.ceiling_tokens for r in records)
    beyond = sum(max(0, r.cached_tokens - r.ceiling_tokens) for r in records)
    latencies = np.array([r.latency_s for r in records])  # [n]
    ttfts = np.array([r.ttft_s for r in records])  # [n]
    preds = [extract_template(r.text, fallback=r.query) for r in records]
    accuracy = evaluate(preds, [r.template for r in records])
    return {
        "requests": len(records),
        "rejected": rejected,
        "wall_s": wall_s,
        "throughput_rps": _ratio(len(records), wall_s),
        "mean_latency_s": float(latencies.mean()),
        "p95_latency_s": float(np.percentile(latencies, 95)),
        "p95_ttft_s": float(np.percentile(ttfts, 95)),
        "token_hit_rate": _ratio(cached, prompt),
        "ceiling_hit_rate": _ratio(ceiling, prompt),
        "hit_beyond_ceiling": _ratio(beyond, prompt),
        "prefill_tokens_computed": prefill_tokens_computed,
        "prompt_tokens_total": prompt,
        "mean_prompt_tokens": prompt / len(records),
        "completion_tokens_total": sum(r.completion_tokens for r in records),
        "substituted_examples_total": sum(r.icl_substituted for r in records),
        "evicted_tokens": evicted_tokens,
        **accuracy,
        "template_multiset_preserved": audit_violations == 0 and all(r.order_is_permutation() for r in records),
    }


TABLE_COLUMNS = (
    ("system", "{}"), ("variant", "{}"), ("requests", "{}"), ("rejected", "{}"), ("throughput_rps", "{:.2f}"),
    ("speedup_vs_nocache", "{:.2f}x"), ("mean_latency_s", "{:.2f}"), ("p95_latency_s", "{:.2f}"),
    ("p95_ttft_s", "{:.2f}"), ("token_hit_rate", "{:.3f}"), ("ceiling_hit_rate", "{:.3f}"),
    ("prefill_tokens_computed", "{}"), ("GA", "{:.2f}"), ("PA", "{:.2f}"), ("template_multiset_preserved", "{}"),
)


def add_ratios(rows: list[dict]) -> None:
    """speedup_vs_nocache: a run's throughput over the same system's `none` run with the radix cache off."""
    base = {r["system"]: r["throughput_rps"] for r in rows if r["pair"] == "none" and not r["radix_cache"]}
    for r in rows:
        if r["system"] in base and base[r["system"]] > 0:
            r["speedup_vs_nocache"] = r["throughput_rps"] / base[r["system"]]


def format_table(rows: list[dict]) -> str:
    """Markdown table of the main columns (missing values print as '-')."""
    lines = ["| " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |",
             "|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        cells = [fmt.format(r[name]) if name in r else "-" for name, fmt in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str, args: dict, rows: list[dict]) -> None:
    """{"args", "results"} to `path`, replaced atomically so a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"args": args, "results": rows}, f, indent=2)
    os.replace(tmp, path)


def token_bound(fast: dict, slow: dict) -> float:
    """The throughput ratio `fast` / `slow` if forward time were proportional to the tokens each run computes:
    (slow's prefill tokens computed + its generated tokens) / (fast's + its generated); 0.0 where `fast` ran none."""
    return _ratio(slow["prefill_tokens_computed"] + slow["completion_tokens_total"],
                  fast["prefill_tokens_computed"] + fast["completion_tokens_total"])


def format_pivot(rows: list[dict]) -> str:
    """One line per system: the ceiling, each cache-on variant's token hit rate, then throughput ratios: each
    cache-on variant over the radix-cache-off `none` run, and table / native over `none` (same pool), then the
    token bound of each of those last ratios (`token_bound`)."""
    cached = list(dict.fromkeys(r["variant"] for r in rows if r["radix_cache"]))
    off = next((r["variant"] for r in rows if not r["radix_cache"]), None)
    ratios = [(v, off) for v in cached if off] + [(v, "none") for v in ("table", "native") if v in cached]
    by_system: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_system.setdefault(r["system"], {})[r["variant"]] = r
    bounds = [(v, "none") for v in ("table", "native") if v in cached and "none" in cached]
    head = (["system", "ceiling"] + [f"hit {v}" for v in cached] + [f"{a} / {b}" for a, b in ratios]
            + [f"token bound {a} / {b}" for a, b in bounds])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system, runs in by_system.items():
        cells = [system, f"{next(iter(runs.values()))['ceiling_hit_rate']:.3f}"]
        cells += [f"{runs[v]['token_hit_rate']:.3f}" if v in runs else "-" for v in cached]
        for a, b in ratios:
            ok = a in runs and b in runs and runs[b]["throughput_rps"] > 0
            cells.append(f"{runs[a]['throughput_rps'] / runs[b]['throughput_rps']:.2f}x" if ok else "-")
        for a, b in bounds:
            bound = token_bound(runs[a], runs[b]) if a in runs and b in runs else 0.0
            cells.append(f"{bound:.2f}x" if bound > 0 else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
