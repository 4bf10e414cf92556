"""Waiting-queue orderings (fcfs, lpm = longest cached prefix first with aging, dfs-weight), request priorities
on top of them (enable_priority_scheduling), and in-batch dedup.

A policy returns the waiting requests in admission order. LPM alone starves cache-cold requests under a
steady stream of hot ones; the aging term adds `waited_s / lpm_aging_seconds` of a full hit to a request's
score, so after a few seconds of waiting anything outranks a fresh hot request.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

from engine.scheduler.request import Req

IN_BATCH_DEDUP_MIN = 32  # defer a request whose uncached prefix shares this many tokens with one admitted now

MatchFn = Callable[[Req], tuple[int, object]]  # req -> (cached prefix length, radix node or None)


def order_waiting(policy: str, waiting: list[Req], match: MatchFn, now: float, aging_s: float,
                  priority_aging_s: float | None = None) -> list[Req]:
    """Admission order. With `priority_aging_s` (priority scheduling on), requests go by effective priority
    first (`effective_priority`: higher first) and by the policy's order within one level."""
    order = _by_policy(policy, waiting, match, now, aging_s)
    if priority_aging_s is None:
        return order
    return sorted(order, key=lambda r: -effective_priority(r, now, priority_aging_s))  # stable: keeps the policy


def effective_priority(req: Req, now: float, priority_aging_s: float) -> int:
    """The request's priority plus one level per `priority_aging_s` seconds waited since it arrived, so a
    low-priority request under a steady stream of higher ones is admitted within (gap × priority_aging_s)
    seconds instead of starving. Whole levels keep the policy's order (e.g. LPM) among equal priorities."""
    return req.priority + int(max(now - req.arrival_time, 0.0) // priority_aging_s)


def _by_policy(policy: str, waiting: list[Req], match: MatchFn, now: float, aging_s: float) -> list[Req]:
    if policy == "fcfs" or len(waiting) <= 1:
        return sorted(waiting, key=lambda r: r.arrival_time)
    if policy == "lpm":
        return _lpm(waiting, match, now, aging_s)
    if policy == "dfs-weight":
        return _dfs_weight(waiting, match)
    raise ValueError(f"schedule_policy: unknown policy {policy!r}")


def shares_uncached_prefix(ids: list[int], cached_len: int, peers: list[Req]) -> bool:
    """Whether ids[cached_len:] starts with at least IN_BATCH_DEDUP_MIN tokens that a peer admitted in the same
    step will compute: deferring the request one step lets it hit the cache there instead of computing them twice."""
    for peer in peers:
        other = peer.fill_ids
        n, limit = cached_len, min(len(ids), len(other))
        while n < limit and ids[n] == other[n]:
            n += 1
        if n - cached_len >= IN_BATCH_DEDUP_MIN:
            return True
    return False


def _lpm(waiting: list[Req], match: MatchFn, now: float, aging_s: float) -> list[Req]:
    def score(r: Req) -> tuple[float, float]:
        hit = match(r)[0] / max(r.seq_len, 1)
        age = (now - r.arrival_time) / aging_s if aging_s > 0 else 0.0
        return (-(hit + age), r.arrival_time)

    return sorted(waiting, key=score)


def _dfs_weight(waiting: list[Req], match: MatchFn) -> list[Req]:
    """Group by the radix node each request's cached prefix ends at; heaviest subtrees first (SGLang's dfs-weight).

    Requests under the same node run together, so one cached path serves a whole group before eviction can
    take it. Weight of a node = waiting requests that end at it or below it.
    """
    by_node: dict[object, list[Req]] = defaultdict(list)
    for r in waiting:
        by_node[match(r)[1]].append(r)
    weight: dict[object, int] = defaultdict(int)
    children: dict[object, list[object]] = defaultdict(list)
    roots: list[object] = []
    for node, reqs in by_node.items():
        n, first = node, True
        while n is not None:
            weight[n] += len(reqs)
            parent = getattr(n, "parent", None)
            if first or n not in children[parent]:
                if parent is None:
                    if n not in roots:
                        roots.append(n)
                elif n not in children[parent]:
                    children[parent].append(n)
            first = False
            n = parent
    order: list[Req] = list(by_node.get(None, []))
    stack = sorted(roots, key=lambda x: weight[x])
    while stack:
        node = stack.pop()
        order.extend(sorted(by_node.get(node, []), key=lambda r: r.arrival_time))
        stack.extend(sorted(children.get(node, []), key=lambda x: weight[x]))
    return order
