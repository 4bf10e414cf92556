"""InferLog's table policy: each documented case on hand-made lists, LRU eviction, and invariants."""
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.pair.table import Example, MatchKind, TablePolicy


def ex(template: str, variant: str = "") -> Example:
    """An example whose input text is the template name plus a variant tag."""
    return Example(input=f"log {template}{variant}", output=template)


def templates(examples):
    return [e.output for e in examples]


def check_invariants(request, result):
    assert sorted(result.order) == list(range(len(request)))
    assert Counter(templates(result.examples)) == Counter(templates(request))
    for sent, i in zip(result.examples, result.order):
        assert sent.output == request[i].output
    assert result.substituted == sum(s.input != request[i].input for s, i in zip(result.examples, result.order))


def test_none_then_exact_repeat():
    policy = TablePolicy()
    request = [ex("A"), ex("B"), ex("C")]
    first = policy.refine(request)
    assert (first.kind, first.examples, first.order, first.substituted) == (MatchKind.NONE, request, [0, 1, 2], 0)
    again = policy.refine(list(request))
    assert (again.kind, again.examples, again.order, again.substituted) == (MatchKind.REPEAT, request, [0, 1, 2], 0)
    assert len(policy) == 1


def test_full_match_sends_past_list_verbatim():
    policy = TablePolicy()
    past = [ex("A", "1"), ex("B", "1"), ex("C", "1")]
    policy.refine(past)
    # Same templates, other inputs for A and C, another order.
    request = [ex("C", "2"), ex("A", "2"), ex("B", "1")]
    result = policy.refine(request)
    assert result.kind is MatchKind.FULL and result.score == 3
    assert result.examples == past
    assert result.order == [1, 2, 0]
    assert result.substituted == 2  # B kept its own input text
    check_invariants(request, result)
    assert len(policy) == 1  # the past list was refreshed, nothing new remembered


def test_partial_match_prefix_then_rest_in_request_order():
    policy = TablePolicy()
    policy.refine([ex("A", "1"), ex("B", "1"), ex("X"), ex("C", "1")])  # length 4, X is not in the request
    request = [ex("C", "2"), ex("D"), ex("B", "2"), ex("A", "2")]
    result = policy.refine(request)
    assert result.kind is MatchKind.PARTIAL and result.score == 2  # A, B reproduced; stops at X
    assert result.examples == [ex("A", "1"), ex("B", "1"), ex("C", "2"), ex("D")]
    assert result.order == [3, 2, 0, 1]
    assert result.substituted == 2
    check_invariants(request, result)
    assert policy.lists()[-1] == result.examples  # the new list is remembered, most recent


def test_best_score_wins_and_ties_go_to_most_recent():
    policy = TablePolicy()
    policy.refine([ex("A", "1"), ex("Z")])
    policy.refine([ex("B", "1"), ex("Y")])
    policy.refine([ex("Q"), ex("R")])
    # [A1, Z] and [B1, Y] both reproduce one leading example; [B1, Y] is more recent.
    tie = policy.refine([ex("A", "2"), ex("B", "2")])
    assert tie.score == 1 and tie.examples == [ex("B", "1"), ex("A", "2")]
    assert tie.order == [1, 0]
    # Now [B1, A2] (just remembered) reproduces 2 leading examples of a request [A, B]: it beats [A1, Z].
    best = policy.refine([ex("A", "3"), ex("B", "3")])
    assert best.kind is MatchKind.FULL and best.score == 2
    assert best.examples == [ex("B", "1"), ex("A", "2")]
    # All k reproduced from a LONGER past list is a partial match: its first k examples, remembered anew.
    policy.refine([ex("C", "1"), ex("D", "1"), ex("E")])
    longer = policy.refine([ex("D"), ex("C")])
    assert longer.kind is MatchKind.PARTIAL and longer.score == 2
    assert longer.examples == [ex("C", "1"), ex("D", "1")]


def test_multiset_aware_score():
    policy = TablePolicy()
    policy.refine([ex("A", "1"), ex("A", "2"), ex("B")])
    # The request has only one A: the second leading A of the past list is a miss.
    result = policy.refine([ex("B"), ex("A", "3")])
    assert result.score == 1
    assert result.examples == [ex("A", "1"), ex("B")]
    assert result.order == [1, 0]


def test_capacity_evicts_least_recently_used():
    policy = TablePolicy(capacity=2)
    a, b, c = [ex("A")], [ex("B")], [ex("C")]
    policy.refine(a)
    policy.refine(b)
    assert policy.refine(a).kind is MatchKind.REPEAT  # refresh a: b is now the oldest
    policy.refine(c)
    assert policy.lists() == [a, c]
    assert policy.refine(b).kind is MatchKind.NONE  # b was evicted
    assert policy.lists() == [c, b]
    with pytest.raises(ValueError, match="capacity"):
        TablePolicy(capacity=0)


def test_empty_request():
    policy = TablePolicy()
    result = policy.refine([])
    assert (result.examples, result.order, result.kind) == ([], [], MatchKind.NONE)
    assert len(policy) == 0


_example = st.builds(ex, st.sampled_from("ABCDE"), st.sampled_from(["", "1", "2"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_example, min_size=0, max_size=5), min_size=1, max_size=12), st.integers(1, 4))
def test_refinement_never_changes_template_multiset(requests, capacity):
    policy = TablePolicy(capacity=capacity)
    for request in requests:
        result = policy.refine(request)
        check_invariants(request, result)
        assert 0 <= result.score <= len(request)
        assert len(policy) <= capacity
        if result.kind in (MatchKind.NONE, MatchKind.REPEAT):
            assert result.examples == request and result.substituted == 0
