"""logparse.order: prefix_order is a permutation in which every shared example prefix is one contiguous run (the
DFS property), largest groups first, decode-heavy calls first among equal prompts; prefix_keys predicts the prompt
prefix the engine builds (as sent without PAIR, popularity-sorted templates with it); the parser submits each wave
in that order and nothing but the order changes."""
from __future__ import annotations

import os
import random

import pytest

from logparse.cli import oracle_calls
from logparse.order import prefix_keys, prefix_order
from logparse.parser import ParserOptions


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


# --- prefix_keys: the prompt prefix the engine will build -------------------------------------------------------

def ex(inp, tpl):
    return (inp, tpl)


def test_keys_without_pair_are_the_examples_as_sent():
    calls = [(ex("x1", "A"), ex("y1", "B")), (ex("y1", "B"), ex("x1", "A"))]
    assert prefix_keys(calls, "none") == [tuple(c) for c in calls]


@pytest.mark.parametrize("refine", ["native", "table"])
def test_keys_with_pair_sort_templates_by_popularity_ties_in_call_order(refine):
    # A is carried 4 times, B 3, C and D once each
    calls = [(ex("c", "C"), ex("b1", "B"), ex("a1", "A")),
             (ex("b2", "B"), ex("a2", "A")),
             (ex("a3", "A"), ex("d", "D"), ex("b3", "B")),
             (ex("a4", "A"),)]
    assert prefix_keys(calls, refine) == [("A", "B", "C"), ("A", "B"), ("A", "B", "D"), ("A",)]
    calls = [(ex("d", "D"), ex("c", "C"))]  # equal popularity: the call's own (kNN) order stays
    assert prefix_keys(calls, refine) == [("D", "C")]


def test_pair_keys_group_calls_whose_prompts_pair_will_share():
    # Calls 0 and 2 carry the same templates (other inputs, another kNN order): PAIR lays both out as A, B, ... and
    # substitutes one input for the other, so their prompts share a prefix; as sent they share nothing.
    calls = [(ex("b1", "B"), ex("a1", "A")),
             (ex("c1", "C"), ex("d1", "D")),
             (ex("a2", "A"), ex("b2", "B")),
             (ex("c2", "C"), ex("a3", "A"))]
    w = [1.0] * 4
    assert prefix_order(prefix_keys(calls, "native"), w) == [0, 2, 3, 1]  # A,B | A,B | A,C | C,D
    assert prefix_order(prefix_keys(calls, "none"), w) == [0, 1, 2, 3]  # nothing shared as sent: first-seen order
    order = prefix_order(prefix_keys(calls, "native"), w)
    assert abs(order.index(0) - order.index(2)) == 1


def test_random_pair_keys_keep_the_dfs_property_and_are_a_permutation():
    rng = random.Random(1)
    for _ in range(20):
        calls = [tuple(ex(f"in{rng.randint(0, 9)}", rng.choice("ABCDE")) for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(1, 30))]
        keys = prefix_keys(calls, "native")
        assert [sorted(k) for k in keys] == [sorted(t for _, t in c) for c in calls]  # the same templates
        order = prefix_order(keys, [1.0] * len(calls))
        assert sorted(order) == list(range(len(calls))) and contiguous_for_every_prefix(keys, order)


# --- the parser submits each wave in the planned order; only the schedule changes ------------------------------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")


def test_parser_submits_the_wave_in_the_order_of_the_engines_prompts():
    log = os.path.join(FIXTURES, "Proxifier", "Proxifier_2k.log")
    base = [log, "--model", f"oracle:{log}_structured_corrected.csv"]
    arrival = oracle_calls([*base, "--order", "arrival"])
    assert [c.line_id for c in arrival] == sorted(c.line_id for c in arrival)  # one wave holds every call here
    weights = [len(c.content) for c in arrival]
    plans = {}
    for refine in ("native", "none"):
        plans[refine] = oracle_calls([*base, "--order", "prefix", "--refine", refine])
        expect = prefix_order(prefix_keys([c.examples for c in arrival], refine), weights)
        assert plans[refine] == [arrival[i] for i in expect]  # same calls, same examples: only the order differs
    assert plans["native"] != plans["none"] and plans["native"] != arrival  # the file tells the three apart


def test_parser_options_check_refine():
    with pytest.raises(ValueError, match="refine"):
        ParserOptions(refine="bogus")
