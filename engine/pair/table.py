"""InferLog's table-based PAIR policy (the baseline the live-tree search in native.py is compared with).

The table remembers the example lists recently sent to the engine, least recently used first. A new
request's examples are matched against each remembered list by output template (an example's identity for
matching): a list scores the number of its LEADING examples the request can reproduce, counting each request
example at most once, stopping at the first example it cannot. The best list (ties: most recent) decides:

  REPEAT   same inputs and templates in the same order as a remembered list -> send unchanged, refresh it.
  FULL     a remembered list of the same length k is reproduced entirely -> send that list verbatim (its input
           texts, so its whole KV prefix is reusable), refresh it.
  PARTIAL  1..k-1 leading examples reproduced (or all k of a longer list) -> those remembered examples first,
           in remembered order with remembered inputs, then the request's other examples in their order;
           remember the new list.
  NONE     nothing reproduced -> send unchanged; remember it.

Refinement never changes the multiset of output templates; `order` maps each sent example back to the
request example with the same template that it stands for.
"""
from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Sequence

DEFAULT_TABLE_CAPACITY = 200


@dataclass(frozen=True)
class Example:
    """One ICL demonstration: `input` log text, `output` template (the identity PAIR matches on)."""

    input: str
    output: str
    id: Optional[str] = field(default=None, compare=False)


class MatchKind(enum.Enum):
    REPEAT = "repeat"
    FULL = "full"
    PARTIAL = "partial"
    NONE = "none"


@dataclass(frozen=True)
class Refinement:
    """What to send. examples[i] stands for the request's examples[order[i]] (same output template);
    `substituted` counts positions whose input text differs from that request example's; `score` is the
    number of leading examples reproduced from the best remembered list."""

    examples: list[Example]
    order: list[int]
    substituted: int
    kind: MatchKind
    score: int


_Key = tuple[tuple[str, str], ...]


def _key(examples: Sequence[Example]) -> _Key:
    return tuple((ex.input, ex.output) for ex in examples)


def _leading_score(past: Sequence[Example], available: Counter) -> int:
    remaining = Counter(available)
    score = 0
    for ex in past:
        if remaining[ex.output] <= 0:
            break
        remaining[ex.output] -= 1
        score += 1
    return score


def _assign(originals: Sequence[Example], sent_prefix: Sequence[Example]) -> list[int]:
    """For each example in `sent_prefix`, the index of an unused original with the same template,
    preferring one with the same input text (so unchanged examples are not counted as substituted)."""
    used = [False] * len(originals)
    order = []
    for ex in sent_prefix:
        exact = next(
            (i for i, o in enumerate(originals) if not used[i] and o.output == ex.output and o.input == ex.input),
            None,
        )
        if exact is None:
            exact = next(i for i, o in enumerate(originals) if not used[i] and o.output == ex.output)
        used[exact] = True
        order.append(exact)
    return order


class TablePolicy:
    """LRU table of recently sent example lists (at most `capacity`), refining requests as InferLog does."""

    def __init__(self, capacity: int = DEFAULT_TABLE_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._table: OrderedDict[_Key, list[Example]] = OrderedDict()  # oldest first
        self.counts: Counter[MatchKind] = Counter()

    def __len__(self) -> int:
        return len(self._table)

    def lists(self) -> list[list[Example]]:
        """The remembered lists, least recently used first (copies)."""
        return [list(v) for v in self._table.values()]

    def refine(self, examples: Sequence[Example]) -> Refinement:
        """Choose the example list to send for a request whose examples are `examples` (see module doc)."""
        originals = list(examples)
        k = len(originals)
        identity = list(range(k))
        if k == 0:
            return Refinement([], [], 0, MatchKind.NONE, 0)
        key = _key(originals)
        if key in self._table:
            self._table.move_to_end(key)
            return self._done(Refinement(originals, identity, 0, MatchKind.REPEAT, k))

        available = Counter(ex.output for ex in originals)
        best_key: Optional[_Key] = None
        best_score = 0
        for past_key in reversed(self._table):  # most recent first, so ties keep the most recent
            score = _leading_score(self._table[past_key], available)
            if score > best_score:
                best_key, best_score = past_key, score
                if score == k:
                    break  # nothing can beat a full reproduction; later lists are older
        if best_key is None:
            self._remember(key, originals)
            return self._done(Refinement(originals, identity, 0, MatchKind.NONE, 0))

        past = self._table[best_key]
        prefix = past[:best_score]
        order = _assign(originals, prefix)
        taken = set(order)
        order += [i for i in range(k) if i not in taken]
        sent = list(prefix) + [originals[i] for i in order[best_score:]]
        substituted = sum(ex.input != originals[i].input for ex, i in zip(sent, order))
        if best_score == k and len(past) == k:
            self._table.move_to_end(best_key)
            return self._done(Refinement(sent, order, substituted, MatchKind.FULL, best_score))
        self._remember(_key(sent), sent)
        return self._done(Refinement(sent, order, substituted, MatchKind.PARTIAL, best_score))

    def _remember(self, key: _Key, examples: list[Example]) -> None:
        if key in self._table:
            self._table.move_to_end(key)
            return
        self._table[key] = list(examples)
        while len(self._table) > self.capacity:
            self._table.popitem(last=False)

    def _done(self, refinement: Refinement) -> Refinement:
        self.counts[refinement.kind] += 1
        return refinement
