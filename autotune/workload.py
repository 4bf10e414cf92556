"""The tuned workload: one Loghub system's log-parsing ICL request stream, and the features that describe it.

Requests follow InferLog's stream (logparse.build_stream: DPP pool, 5 nearest examples, most similar last).
A workload is the stream's first `n_requests` queries shuffled with a fixed seed, so that every measurement
window of a replay that cycles through it sees the same mix (line order has bursts of one template, which
would make consecutive windows of one config differ by more than configs do).
Output lengths are the oracle ones: max_new_tokens = the token length of the ground-truth template in
backticks, with ignore_eos and temperature 0, so every configuration generates exactly the same tokens and
only scheduling differs. The `icl` body carries no "refine" key, so the engine's live `pair_policy` knob
decides how PAIR refines it.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from logparse import build_stream, load_system, to_icl

DEFAULT_REQUESTS = 400
SHUFFLE_SEED = 0
FEATURE_NAMES: tuple[str, ...] = (
    "log_templates",  # ln(1 + distinct ground-truth templates among the queries)
    "template_entropy",  # Shannon entropy (nats) of the queries' template distribution
    "mean_prompt_tokens",  # unrefined ICL prompt length, in hundreds of tokens
    "mean_output_tokens",  # oracle output length, in tens of tokens
    "demo_reuse_rate",  # 1 - distinct example blocks / example slots
    "demo_set_reuse_rate",  # 1 - distinct example sets (order ignored) / requests
)


@dataclass(frozen=True)
class WorkloadRequest:
    icl: dict[str, Any]
    sampling_params: dict[str, Any]
    prompt_tokens: int  # of the unrefined assembly (PAIR may change it at admission)
    template: str  # the query's ground truth, whose token length is max_new_tokens


@dataclass(frozen=True)
class Workload:
    system: str
    requests: tuple[WorkloadRequest, ...]
    features: dict[str, float]

    def feature_vector(self) -> np.ndarray:
        return np.array([self.features[n] for n in FEATURE_NAMES], dtype=np.float64)


def oracle_sampling(tokenizer, template: str) -> dict[str, Any]:
    n_tokens = len(tokenizer.encode(f"`{template}`", add_special_tokens=False))
    return {"max_new_tokens": max(n_tokens, 1), "temperature": 0.0, "ignore_eos": True}


def _prompt_tokens(tokenizer, icl: dict) -> int:
    from engine.pair.render import render_icl, validate_icl

    prompt = render_icl(tokenizer, validate_icl(icl))
    return len(prompt.assemble(prompt.examples)[0])


def build_workload(data_dir: str, system: str, tokenizer, n_requests: int = DEFAULT_REQUESTS) -> Workload:
    """`system`'s stream prefix of `n_requests` queries, shuffled, as engine requests; features describe them."""
    if n_requests < 1:
        raise ValueError(f"n_requests: must be >= 1 (got {n_requests})")
    queries = build_stream(load_system(data_dir, system))[:n_requests]
    if not queries:
        raise ValueError(f"system {system!r}: no log lines under {data_dir!r}")
    queries = [queries[i] for i in np.random.default_rng(SHUFFLE_SEED).permutation(len(queries))]
    requests = []
    for q in queries:
        icl = to_icl(q)
        del icl["refine"]  # let the live pair_policy knob choose
        requests.append(WorkloadRequest(icl, oracle_sampling(tokenizer, q.template), _prompt_tokens(tokenizer, icl),
                                        q.template))
    features = task_features([q.template for q in queries], [q.examples for q in queries],
                             [r.prompt_tokens for r in requests],
                             [r.sampling_params["max_new_tokens"] for r in requests])
    return Workload(system, tuple(requests), features)


def task_features(templates: list[str], examples: list[tuple], prompt_tokens: list[int],
                  output_tokens: list[int]) -> dict[str, float]:
    """FEATURE_NAMES for a stream prefix: its queries' templates, their example tuples, and token counts."""
    if not templates or not (len(templates) == len(examples) == len(prompt_tokens) == len(output_tokens)):
        raise ValueError("templates: need one or more queries with parallel examples and token counts")
    counts = Counter(templates)
    probs = np.array(list(counts.values()), dtype=np.float64) / len(templates)
    slots = [ex for exs in examples for ex in exs]
    return {
        "log_templates": math.log1p(len(counts)),
        "template_entropy": float(-(probs * np.log(probs)).sum()),
        "mean_prompt_tokens": float(np.mean(prompt_tokens)) / 100.0,
        "mean_output_tokens": float(np.mean(output_tokens)) / 10.0,
        "demo_reuse_rate": 1.0 - len(set(slots)) / max(len(slots), 1),
        "demo_set_reuse_rate": 1.0 - len({frozenset(exs) for exs in examples}) / len(examples),
    }
