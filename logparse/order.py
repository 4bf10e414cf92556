"""Submission order of a wave's LLM calls.

`arrival`: file order (LineId).

`prefix` (the whole-file plan, after BatchLLM): every call's prompt is instruction + its examples + the query, so
calls whose prompts start with the same j examples share a prompt prefix. `prefix_keys` says which example
sequence each prompt will start with (below); the calls are put in a prefix tree keyed by those sequences and
emitted by a depth-first walk (`prefix_order`): a subtree's calls go out back to back, so a shared prefix is
prefilled once and stays hot in the radix cache while every call that needs it runs, even when the KV pool cannot
hold every system's examples at once. At each node the children are visited largest subtree first (the widest
sharing first, ties in order of first appearance), and the calls that end at a node (same examples) go
decode-heavy first: longest expected answer (the query's length stands for it) first, ties by LineId, so long
decodes start early and overlap the prefills of the calls after them.

The key is the prompt the ENGINE will build, not the example list the parser sends. With `refine none` the engine
keeps the list as sent (the kNN order, most similar last): the key is that sequence of (input, template) pairs.
With PAIR (`native`, the default, or `table`) the engine reorders each request's examples at admission and may
substitute a cached example of the same template for the request's own: native puts the cached path first and
then the rest in order of template popularity (most used first, ties in the request's order); table reuses the
leading templates of a list it sent before. Either way prompts converge on shared prefixes of TEMPLATES sorted by
popularity, so the key is the call's example templates sorted by how often the wave's calls carry each (most
first, ties in the call's own order). Replaying the parser's waves on the 12 Loghub-2k files through the engine's
radix cache and native PAIR (bench.cachesim's replay, a pool of 6 mean prompts, 16 in flight), the mean token hit
rate was 0.486 in arrival order, 0.522 with the kNN-order key and 0.552 with this one; the engine's measurement is
in docs/logparse.md.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Hashable, Sequence

ORDERS = ("prefix", "arrival")
Example = tuple[str, str]  # (input log, template)


def prefix_keys(examples: Sequence[Sequence[Example]], refine: str) -> list[tuple[Hashable, ...]]:
    """The example sequence each call's prompt is expected to start with, for `prefix_order` (module docstring):
    `refine == "none"`: the examples as sent; otherwise (PAIR refines them) each call's templates sorted by the
    number of times the calls in `examples` carry the template (most first, ties in the call's own order)."""
    if refine == "none":
        return [tuple(exs) for exs in examples]
    popularity = Counter(t for exs in examples for _, t in exs)
    return [tuple(t for _, t in sorted(((-popularity[t], pos), t) for pos, (_, t) in enumerate(exs)))
            for exs in examples]


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
