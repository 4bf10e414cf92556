"""logparse.order.prefix_order: a permutation in which every shared example prefix is one contiguous run (the
DFS property), largest groups first, decode-heavy calls first among equal prompts."""
from __future__ import annotations

import random

import pytest

from logparse.order import prefix_order


def contiguous_for_every_prefix(keys, order):
    seq = [keys[i] for i in order]
    prefixes = {tuple(k[:j]) for k in keys for j in range(1, len(k) + 1)}
    for p in prefixes:
        pos = [n for n, k in enumerate(seq) if tuple(k[:len(p)]) == p]
        if pos != list(range(pos[0], pos[-1] + 1)):
            return False
    return True


def test_random_keys_group_every_prefix():
    rng = random.Random(0)
    for _ in range(30):
        keys = [tuple(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 40))]
        order = prefix_order(keys, [rng.random() for _ in keys])
        assert sorted(order) == list(range(len(keys)))
        assert contiguous_for_every_prefix(keys, order)


def test_arrival_interleaving_is_undone_and_ties_are_stable():
    keys = [("a", "x"), ("b", "y"), ("a", "x"), ("b", "y"), ("a", "z"), ("a", "x")]
    weights = [1, 1, 5, 1, 1, 1]
    # "a" holds 4 calls: first; inside it ("a","x") holds 3; decode-heavy (index 2) first, then by index
    assert prefix_order(keys, weights) == [2, 0, 5, 4, 1, 3]


def test_lengths_must_agree():
    with pytest.raises(ValueError):
        prefix_order([("a",)], [])
