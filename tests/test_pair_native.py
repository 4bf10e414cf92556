"""Native PAIR on a hand-built radix tree: deepest cached path, substitution, canonical order, keep_last,
and (hypothesis) the template multiset and cached-path depth over random trees and requests."""
from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.pair.native import ExampleRegistry, NativePolicy
from engine.pair.render import IclExample, IclPrompt, example_id
from engine.radix_cache import RadixCache

HEAD = tuple(range(1, 9))  # instruction + header tokens
TAIL = (7, 7, 7)
MSG, SEP, END = 900, 901, 902  # "Log message: `", "`\nLog template: `", "`\n"


def ex(inp: str, template: str) -> IclExample:
    """An example whose tokens spell its input and template, framed like a real example block."""
    ids = (MSG, *(1000 + ord(c) for c in inp), SEP, *(2000 + ord(c) for c in template), END)
    return IclExample(example_id(inp, template), inp, template, ids)


def prompt(examples, head=HEAD) -> IclPrompt:
    return IclPrompt(tuple(head), tuple(examples), TAIL, "native")


class Cache:
    """A radix tree plus the example registry, filled the way the scheduler fills them."""

    def __init__(self, page_size: int = 1):
        self.tree = RadixCache(page_size, lambda slots: None)
        self.registry = ExampleRegistry()
        self.page_size = page_size
        self._next_slot = page_size

    def insert(self, examples, head=HEAD) -> None:
        # As KVManager._insert: the assembled ids, boundaries at segment starts, example ids at their ends.
        ids, boundaries, seg_ids = prompt(examples, head).assemble(examples)
        slots = list(range(self._next_slot, self._next_slot + len(ids)))
        self._next_slot += -(-len(ids) // self.page_size) * self.page_size
        self.tree.insert(ids, slots, boundaries, dict(seg_ids))
        for e in examples:
            self.registry.add(e)

    def policy(self, keep_last: bool = False) -> NativePolicy:
        return NativePolicy(self.registry, keep_last=keep_last)

    def cached_example_depth(self, examples, head=HEAD) -> int:
        """Tokens of the longest prefix of whole segments (head, examples) the tree holds for this order."""
        ids, boundaries, _ = prompt(examples, head).assemble(examples)
        matched = self.tree.match_prefix(ids).matched_len
        return max((b for b in boundaries if b <= matched), default=0)


def check_refinement(request, result) -> None:
    sent = result.examples
    assert sorted(result.order) == list(range(len(request)))
    assert Counter(e.output for e in sent) == Counter(e.output for e in request)
    for e, i in zip(sent, result.order):
        assert e.output == request[i].output
    assert result.substituted == sum(e.id != request[i].id for e, i in zip(sent, result.order))


A, B, C, D, E = (ex(f"log {n}", f"tpl {n}") for n in "abcde")


def test_follows_the_deepest_cached_path():
    cache = Cache()
    cache.insert([A, B, C])
    cache.insert([A, D])
    request = [E, B, A]
    r = cache.policy().refine(cache.tree, prompt(request))
    check_refinement(request, r)
    assert [e.id for e in r.examples] == [A.id, B.id, E.id]
    assert r.order == [2, 1, 0] and r.cached_examples == 2 and r.substituted == 0
    assert cache.cached_example_depth(r.examples) == len(HEAD) + len(A.ids) + len(B.ids)


def test_depth_counts_tokens_not_examples():
    long_ex = ex("a much longer log line with many characters in it", "long <*>")
    s1, s2 = ex("s1", "short one"), ex("s2", "short two")
    cache = Cache()
    cache.insert([long_ex])
    cache.insert([s1, s2])
    assert len(long_ex.ids) > len(s1.ids) + len(s2.ids)
    r = cache.policy().refine(cache.tree, prompt([s1, s2, long_ex]))
    assert r.examples[0].id == long_ex.id and r.cached_examples == 1


def test_ties_go_to_the_hotter_path():
    x, y = ex("log x", "tpl x"), ex("log y", "tpl y")
    assert len(x.ids) == len(y.ids)
    cache = Cache()
    cache.insert([x])
    cache.insert([y])
    for hot in (y, x, x):  # y hit once, then x twice: x ends hotter
        cache.tree.match_prefix(list(HEAD + hot.ids), record_hit=True)
    r = cache.policy().refine(cache.tree, prompt([y, x]))
    assert r.examples[0].id == x.id and r.order == [1, 0]


def test_substitutes_a_cached_example_with_the_same_template():
    cached = ex("x one", "tpl x")
    mine = ex("x two", "tpl x")
    cache = Cache()
    cache.insert([cached, B])
    request = [B, mine]
    r = cache.policy().refine(cache.tree, prompt(request))
    check_refinement(request, r)
    assert [e.id for e in r.examples] == [cached.id, B.id]
    assert r.order == [1, 0] and r.substituted == 1 and r.cached_examples == 2
    assert cache.cached_example_depth(r.examples) == len(HEAD) + len(cached.ids) + len(B.ids)


def test_substitution_points_at_an_original_with_that_template_and_prefers_exact():
    cached = ex("x one", "tpl x")
    cache = Cache()
    cache.insert([cached])
    two = [ex("x two", "tpl x"), ex("x three", "tpl x"), C]
    r = cache.policy().refine(cache.tree, prompt(two))
    check_refinement(two, r)
    assert r.examples[0].id == cached.id and r.order[0] == 0 and r.substituted == 1
    exact = [ex("x two", "tpl x"), cached, C]
    r = cache.policy().refine(cache.tree, prompt(exact))
    check_refinement(exact, r)
    assert r.examples[0].id == cached.id and r.order[0] == 1 and r.substituted == 0


def test_no_substitution_by_a_much_longer_cached_input():
    """HDFS-style: a cached example of the same template but a far longer input would grow the prompt more than it
    saves; up to twice the request's own block it is still used, and of two candidates the shorter wins."""
    mine = ex("delete b1", "delete <*>")
    huge = ex("delete " + " ".join(f"b{i}" for i in range(40)), "delete <*>")
    close = ex("delete b22", "delete <*>")
    cache = Cache()
    cache.insert([huge])
    r = cache.policy().refine(cache.tree, prompt([B, mine]))
    assert r.substituted == 0 and r.cached_examples == 0 and [e.id for e in r.examples] == [B.id, mine.id]
    cache.insert([close])
    r = cache.policy().refine(cache.tree, prompt([B, mine]))
    check_refinement([B, mine], r)
    assert r.examples[0].id == close.id and r.substituted == 1 and r.cached_examples == 1


def test_canonical_order_without_a_cached_head():
    cache = Cache()
    cache.insert([A, B], head=(50, 51, 52))  # another instruction: nothing below our head
    policy = cache.policy()
    first = policy.refine(cache.tree, prompt([C, A, B, D]))
    second = policy.refine(cache.tree, prompt([D, B, C, A]))
    assert first.cached_examples == second.cached_examples == 0
    # equal popularity: the request's own (kNN) order stands
    assert [e.id for e in first.examples] == [e.id for e in (C, A, B, D)] and first.order == [0, 1, 2, 3]
    assert [e.id for e in second.examples] == [e.id for e in (D, B, C, A)] and second.order == [0, 1, 2, 3]
    cache.registry.count_use([C, C, C])  # C's template is now the most used: it leads
    third = policy.refine(cache.tree, prompt([A, B, C, D]))
    assert third.examples[0].id == C.id and third.order[0] == 2


def test_keep_last_keeps_the_most_similar_example_last():
    cache = Cache()
    cache.insert([C])
    request = [A, B, C]
    free = cache.policy().refine(cache.tree, prompt(request))
    assert free.examples[0].id == C.id
    pinned = cache.policy(keep_last=True).refine(cache.tree, prompt(request))
    check_refinement(request, pinned)
    assert pinned.examples[-1].id == C.id and pinned.order[-1] == 2 and pinned.cached_examples == 0


def test_no_tree_means_canonical_order_only():
    request = [B, A]
    r = NativePolicy(ExampleRegistry()).refine(None, prompt(request))
    check_refinement(request, r)
    assert r.cached_examples == 0 and r.substituted == 0


# --- random trees -------------------------------------------------------------------------------------
POOL = [ex(f"line {i} {'v' * (i % 3)}", f"tpl {i % 4}") for i in range(10)]  # 4 templates, 10 examples
FRESH = [ex(f"fresh {i}", f"tpl {i % 4}") for i in range(4)]  # never cached: only substitutable
pool_example = st.sampled_from(POOL)
example_list = st.lists(pool_example, min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(page_size=st.sampled_from([1, 4]), cached=st.lists(example_list, max_size=6),
       request=st.lists(st.sampled_from(POOL + FRESH), min_size=1, max_size=5), keep_last=st.booleans(),
       hits=st.lists(st.integers(0, 5), max_size=6))
def test_random_trees_keep_templates_and_reach_the_deepest_path(page_size, cached, request, keep_last, hits):
    cache = Cache(page_size)
    for examples in cached:
        cache.insert(examples)
    for which in hits:  # some paths hotter than others
        if which < len(cached):
            ids, _, _ = prompt(cached[which]).assemble(cached[which])
            cache.tree.match_prefix(ids, record_hit=True)
    r = cache.policy(keep_last).refine(cache.tree, prompt(request))
    check_refinement(request, r)
    if keep_last and len(request) > 1:
        assert r.examples[-1] is request[-1] and r.order[-1] == len(request) - 1
    if page_size != 1:
        return  # unaligned segment ends round down to a page: depths below are exact only for page 1
    head_and_path = len(HEAD) + sum(len(e.ids) for e in r.examples[: r.cached_examples])
    if r.cached_examples:
        assert cache.cached_example_depth(r.examples) >= head_and_path
    # No reordering of the request's own examples caches more whole examples than the refinement.
    fixed_tail = [request[-1]] if keep_last and len(request) > 1 else []
    movable = request[: len(request) - len(fixed_tail)]
    best = max(cache.cached_example_depth(list(p) + fixed_tail) for p in itertools.permutations(movable))
    assert cache.cached_example_depth(r.examples) >= best
