"""Train the learned eviction policy for the radix cache (bench/cachesim/learned.py): predict each leaf's time to next reuse, evict the farthest.

Model: gradient-boosted trees (scikit-learn GradientBoostingRegressor) on y = log1p(t / tpr), where t is the
time from now to the next request that looks up the leaf's first block and tpr the trace's mean time per
request so far (so the model carries over to other request rates). Features of a leaf:
  segment_end      1 if the node ends an ICL example (the tree's segment_ends), else 0
  log_hits         log1p(hit_count)
  log_start        log1p(tokens above the node: its parent's depth)
  log_length       log1p(tokens in the node)
  log_popularity   log(1e-4 + requests carrying the node's most popular example id / requests so far)
  log_age          log1p((now - last_access) / tpr)
Priority (lower is evicted first): -(predicted time of next use). A prediction is cached per node and redone
only when the node is accessed again or its age crosses a power of two (in requests), so a node is scored
O(log age) times between accesses instead of at every eviction.

Priorities can decrease (age and popularity move), so the policy does not declare `monotone`: trees rank
every leaf per evict() with it. It needs a ReplayContext (simulated clock, example popularity, requests so far),
which only bench.cachesim.replay has, so it is registered with the engine's policy registry only on request:
`register_learned_policy(model)` makes `CacheReplay(trace, cap, "learned")` (and `bench.cachesim --policy
learned`) work; an engine tree asked for `learned` raises ValueError (it has no replay context).

The trained model is saved as JSON (the trees' arrays) and evaluated in pure Python, so replays need
neither scikit-learn nor joblib. Training (scikit-learn needed):
    python -m bench.learned_policy --trace TRAIN.jsonl [--trace TRAIN2.jsonl] --block-size 16 \
        --capacity 2%,10% --out MODEL.json
samples leaves ranked by LRU replays of each training trace at those capacities (at eviction time, when
the decision is made), labelled from that trace's future.
"""
from __future__ import annotations

import argparse
import bisect
import json
import math
import random
from collections import defaultdict
from typing import Sequence

from bench.cachesim.learned import FEATURES, TreeEnsemble, age_bucket, node_features, time_per_request
from bench.cachesim.replay import CacheReplay, ReplayContext
from bench.cachesim.simulate import footprint_tokens, load_units, parse_capacities
from bench.cachesim.units import UnitTrace
from engine.radix_cache import TreeNode


class SampleRecorder:
    """LRU that records (features, first unit, now, tpr) for a fraction of the leaves it ranks (once per
    node, access and age bucket, like the learned policy's predictions). Not declared monotone on purpose:
    samples are drawn from every leaf ranked at every eviction, which only the full-heap path does."""

    name = "lru"

    def __init__(self, ctx: ReplayContext, rate: float, limit: int, seed: int):
        self.ctx, self.rate, self.limit = ctx, rate, limit
        self._rng = random.Random(seed)
        self._seen: set[tuple[int, float, int]] = set()
        self.samples: list[tuple[list[float], int, float, float]] = []

    def priority(self, node: TreeNode) -> tuple:
        if len(self.samples) < self.limit:
            now = self.ctx.clock()
            tpr = time_per_request(self.ctx)
            age = max(now - node.last_access, 0.0) / tpr
            key = (node.node_id, node.last_access, age_bucket(age))
            if key not in self._seen:
                self._seen.add(key)
                if self._rng.random() < self.rate:
                    self.samples.append((node_features(node, self.ctx, age), node.key[0], now, tpr))
        return (node.last_access,)


def label_samples(trace: UnitTrace, samples) -> list[float]:
    """log1p(wait / tpr) per sample: wait from the sample's time to the next request that looks up its unit;
    a unit never looked up again waits until one trace duration past the end."""
    wanted = {unit for _, unit, _, _ in samples}
    uses: dict[int, list[float]] = defaultdict(list)
    for req in trace.requests:
        for unit in req.units[:req.matchable]:
            if unit in wanted:
                uses[unit].append(req.timestamp)
    start, end = trace.requests[0].timestamp, trace.requests[-1].timestamp
    labels = []
    for _, unit, now, tpr in samples:
        times = uses.get(unit, [])
        i = bisect.bisect_right(times, now)
        nxt = times[i] if i < len(times) else end + (end - start)
        labels.append(math.log1p(max(nxt - now, 0.0) / tpr))
    return labels


def collect_samples(trace: UnitTrace, capacities: Sequence[int], rate: float = 0.05, limit: int = 60000,
                    seed: int = 0) -> tuple[list[list[float]], list[float]]:
    xs, ys = [], []
    for i, cap in enumerate(capacities):
        recorders = []

        def make(ctx, i=i):
            recorders.append(SampleRecorder(ctx, rate, limit // len(capacities), seed + i))
            return recorders[-1]

        CacheReplay(trace, cap, make).run(progress=True, desc=f"samples@{cap}")
        samples = recorders[0].samples
        xs += [s[0] for s in samples]
        ys += label_samples(trace, samples)
    return xs, ys


def train(xs, ys, n_estimators: int = 60, max_depth: int = 4, seed: int = 0) -> dict:
    """Fit on 80% of the samples, report R^2 on the other 20%; returns the JSON-ready model."""
    import numpy as np
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    fit, val = perm[:cut], perm[cut:]
    offset = float(y[fit].mean())
    lr = 0.1
    gbr = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=max_depth, learning_rate=lr,
                                    subsample=0.8, init="zero", random_state=seed)
    gbr.fit(x[fit], y[fit] - offset)
    trees = []
    for est in gbr.estimators_[:, 0]:
        t = est.tree_
        trees.append({"feature": [int(f) for f in t.feature], "threshold": [float(v) for v in t.threshold],
                      "left": [int(v) for v in t.children_left], "right": [int(v) for v in t.children_right],
                      "value": [float(v) for v in t.value[:, 0, 0]]})
    pred = gbr.predict(x[val]) + offset
    r2 = 1.0 - float(((pred - y[val]) ** 2).sum() / max(((y[val] - y[val].mean()) ** 2).sum(), 1e-12))
    model = {"features": list(FEATURES), "offset": offset, "learning_rate": lr, "trees": trees,
             "meta": {"samples": len(y), "validation_r2": r2, "n_estimators": n_estimators, "max_depth": max_depth,
                      "feature_importances": dict(zip(FEATURES, map(float, gbr.feature_importances_)))}}
    ens = TreeEnsemble(model)
    worst = max(abs(ens.predict(row) - p) for row, p in zip(x[val][:200].tolist(), pred[:200]))
    assert worst < 1e-6, f"pure-Python evaluation disagrees with sklearn by {worst}"
    return model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Train the learned eviction policy on one or more traces.")
    ap.add_argument("--trace", action="append", required=True, help="repeat to train on several traces")
    ap.add_argument("--format", default="pairserve", choices=["pairserve", "mooncake"])
    ap.add_argument("--block-size", type=int, default=None, help="default: the trace's own (see bench.cachesim)")
    ap.add_argument("--capacity", default="5%,20%", help="LRU replays to sample from: tokens or %% of footprint")
    ap.add_argument("--sample-rate", type=float, default=0.05)
    ap.add_argument("--max-samples", type=int, default=60000, help="per trace")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    xs, ys = [], []
    for path in a.trace:
        trace = load_units(path, a.format, a.block_size, "none")
        caps = parse_capacities(a.capacity, footprint_tokens(trace))
        x, y = collect_samples(trace, caps, a.sample_rate, a.max_samples, a.seed)
        print(f"{path}: {len(y)} samples at capacities {caps}", flush=True)
        xs += x
        ys += y
    model = train(xs, ys, seed=a.seed)
    model["meta"].update(train_traces=a.trace, block_size=trace.block_size, capacities=a.capacity)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(model, f, separators=(",", ":"))
    print(json.dumps(model["meta"], indent=1))


if __name__ == "__main__":
    main()
