"""The learned eviction policy's model and policy: predict each leaf's time to next reuse, evict the farthest.

The model format, features and training are described in bench/learned_policy.py (the training command);
this module is what replays need: `TreeEnsemble` evaluates a saved model in pure Python, `LearnedPolicy`
ranks leaves with it, `register_learned_policy(model)` makes `CacheReplay(trace, cap, "learned")` (and
`bench.cachesim --policy learned`) work. An engine tree asked for `learned` raises ValueError: it has no
replay context.
"""
from __future__ import annotations

import json
import math
from array import array
from typing import Sequence

from bench.cachesim.replay import ReplayContext
from engine.radix_cache import TreeNode, register_eviction_policy

FEATURES = ("segment_end", "log_hits", "log_start", "log_length", "log_popularity", "log_age")


def time_per_request(ctx: ReplayContext) -> float:
    return max(ctx.clock() - ctx.start_time, 1e-9) / max(ctx.requests_seen(), 1)


def node_features(node: TreeNode, ctx: ReplayContext, age_requests: float) -> list[float]:
    bs = ctx.block_size
    popularity = max((ctx.example_popularity[s] for s in node.segment_ends), default=0)
    return [1.0 if node.segment_ends else 0.0, math.log1p(node.hit_count),
            math.log1p(node.parent.depth_tokens * bs), math.log1p(len(node.key) * bs),
            math.log(1e-4 + popularity / max(ctx.requests_seen(), 1)), math.log1p(age_requests)]


def age_bucket(age_requests: float) -> int:
    return int(math.log2(1.0 + age_requests))


class TreeEnsemble:
    """Sum of regression trees (sklearn's layout: a node goes left when x[feature] <= threshold, compared in
    float32 as sklearn does) times learning_rate, plus offset."""

    def __init__(self, model: dict):
        if model.get("features") != list(FEATURES):
            raise ValueError(f"model.features: expected {list(FEATURES)}, got {model.get('features')}")
        self.offset = float(model["offset"])
        self.learning_rate = float(model["learning_rate"])
        self.trees = [(t["feature"], t["threshold"], t["left"], t["right"], t["value"]) for t in model["trees"]]
        self.meta = model.get("meta", {})

    @classmethod
    def load(cls, path: str) -> "TreeEnsemble":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    def predict(self, x: Sequence[float]) -> float:
        x = array("f", x)  # float32 rounding, as sklearn's trees compare
        total = 0.0
        for feature, threshold, left, right, value in self.trees:
            i = 0
            while left[i] >= 0:
                i = left[i] if x[feature[i]] <= threshold[i] else right[i]
            total += value[i]
        return self.offset + self.learning_rate * total


class LearnedPolicy:
    """EvictionPolicy for bench.cachesim.replay (pass `LearnedPolicy.factory(model)` as the replay's policy)."""

    name = "learned"

    def __init__(self, model: TreeEnsemble, ctx: ReplayContext):
        self.model, self.ctx = model, ctx
        # node_id -> (last_access, hit_count, valid until, priority): valid until the age bucket changes
        self._cache: dict[int, tuple[float, int, float, tuple]] = {}
        self._cache_limit = 2 * ctx.capacity_blocks + 1024  # live nodes never exceed the pool's blocks
        self._now, self._tpr = float("nan"), 1.0

    @classmethod
    def factory(cls, model: TreeEnsemble):
        """policy_context -> LearnedPolicy; ValueError naming radix_eviction_policy without a ReplayContext."""
        def make(ctx):
            if not isinstance(ctx, ReplayContext):
                raise ValueError("radix_eviction_policy: 'learned' needs a bench.cachesim.replay.ReplayContext "
                                 "(it runs in the simulator's replays only, not in the engine)")
            return cls(model, ctx)

        return make

    def priority(self, node: TreeNode) -> tuple:
        # Called for every evictable leaf on every evict(): the cached path must stay cheap.
        now = self.ctx.clock()
        if now != self._now:
            self._now, self._tpr = now, time_per_request(self.ctx)
        entry = self._cache.get(node.node_id)
        if entry is not None and entry[0] == node.last_access and entry[1] == node.hit_count and now < entry[2]:
            return entry[3]
        if len(self._cache) > self._cache_limit:
            self._cache.clear()  # dead nodes' entries; live ones are recomputed on demand
        tpr = self._tpr
        age = max(now - node.last_access, 0.0) / tpr
        log_wait = self.model.predict(node_features(node, self.ctx, age))
        valid_until = node.last_access + (2.0 ** (age_bucket(age) + 1) - 1.0) * tpr
        entry = (node.last_access, node.hit_count, valid_until, (-(now + math.expm1(max(log_wait, 0.0)) * tpr),))
        self._cache[node.node_id] = entry
        return entry[3]


def register_learned_policy(model: TreeEnsemble) -> None:
    """Register (or re-register) the name `learned` for `model` with engine.radix_cache's policy registry."""
    register_eviction_policy(LearnedPolicy.name, LearnedPolicy.factory(model), replace=True)
