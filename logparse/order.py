"""Submission order of a wave's LLM calls.

`arrival`: file order (LineId).

`prefix` (the whole-file plan, after BatchLLM): every call's prompt is instruction + its examples in order + the
query, so calls that share their first j examples share a prompt prefix. The calls are put in a prefix tree keyed
by their example sequence and emitted by a depth-first walk: a subtree's calls go out back to back, so a shared
prefix is prefilled once and stays hot in the radix cache while every call that needs it runs, even when the KV
pool cannot hold every system's examples at once. At each node the children are visited largest subtree first
(the widest sharing first, ties in order of first appearance), and the calls that end at a node (same examples)
go decode-heavy first: longest expected answer (the query's length stands for it) first, ties by LineId, so long
decodes start early and overlap the prefills of the calls after them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

ORDERS = ("prefix", "arrival")


@dataclass
class _Node:
    first: int  # position of the first call that reaches this node (tie-break)
    size: int = 0  # calls in this subtree
    children: dict[Hashable, "_Node"] = field(default_factory=dict)
    ending: list[int] = field(default_factory=list)  # calls whose key ends here


def prefix_order(keys: Sequence[Sequence[Hashable]], decode_weights: Sequence[float]) -> list[int]:
    """Indices of the calls in DFS prefix order; `keys[i]` is call i's example sequence, `decode_weights[i]` its
    expected answer length."""
    if len(keys) != len(decode_weights):
        raise ValueError("keys and decode_weights differ in length")
    root = _Node(first=0)
    for i, key in enumerate(keys):
        node = root
        node.size += 1
        for item in key:
            child = node.children.get(item)
            if child is None:
                child = node.children[item] = _Node(first=i)
            node = child
            node.size += 1
        node.ending.append(i)
    out: list[int] = []
    stack = [root]
    while stack:
        node = stack.pop()
        out.extend(sorted(node.ending, key=lambda i: (-decode_weights[i], i)))
        kids = sorted(node.children.values(), key=lambda n: (-n.size, n.first))
        stack.extend(reversed(kids))  # the first kid is popped (walked) first
    return out
