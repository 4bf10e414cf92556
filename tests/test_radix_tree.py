"""Hand-made cases for engine.radix_cache: matching, page alignment, locks, eviction order, segments, reset."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import EVICTION_POLICIES
from engine.radix_cache import RadixCache, eviction_policy_names
from engine.slot_allocator import SlotAllocator

REPO_ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 1.0


def make_tree(page_size: int = 1, policy: str = "lru", num_slots: int = 256):
    alloc = SlotAllocator(num_slots, page_size)
    freed: list[list[int]] = []

    def free(slots: list[int]) -> None:
        freed.append(list(slots))
        alloc.free(slots)

    clock = FakeClock()
    tree = RadixCache(page_size, free, eviction_policy=policy, clock=clock)
    return tree, alloc, freed, clock


def insert_fresh(tree: RadixCache, alloc: SlotAllocator, key: list[int], **kw) -> tuple[int, list[int]]:
    """Inserts `key` with fresh slots like a scheduler would: frees the duplicates of the cached part."""
    slots = alloc.alloc(alloc.pages_for(len(key)) * alloc.page_size)
    present_len = tree.insert(key, slots[: len(key)], **kw)
    aligned_len = len(key) - len(key) % tree.page_size
    alloc.free(slots[:present_len] + slots[aligned_len:])
    return present_len, slots


def check(tree: RadixCache, alloc: SlotAllocator) -> None:
    tree.check_integrity(alloc.free_slot_set(), alloc.num_slots)
    tree.check_slot_conservation(alloc.free_slot_set(), [], range(alloc.page_size, alloc.num_slots))


def test_import_does_not_pull_torch():
    code = "import sys, engine.radix_cache; assert 'torch' not in sys.modules, 'radix_cache imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_policy_names_match_config_and_unknown_policy_is_rejected():
    assert eviction_policy_names()[:3] == EVICTION_POLICIES  # the built-ins; others may be registered
    with pytest.raises(ValueError, match="radix_eviction_policy"):
        RadixCache(1, lambda slots: None, eviction_policy="mru")


def test_insert_returns_already_present_length_and_takes_only_the_suffix():
    tree, alloc, _, _ = make_tree()
    empty = tree.match_prefix([1, 2, 3])
    assert (empty.matched_len, empty.slots, empty.last_node) == (0, [], tree.root)
    present_len, first_slots = insert_fresh(tree, alloc, [1, 2, 3, 4])
    assert present_len == 0 and tree.total_size() == 4
    present_len, second_slots = insert_fresh(tree, alloc, [1, 2, 3, 4, 5, 6])
    assert present_len == 4 and tree.total_size() == 6
    result = tree.match_prefix([1, 2, 3, 4, 5, 6, 7])
    assert result.matched_len == 6
    assert result.slots == first_slots + second_slots[4:]
    assert tree.insert([1, 2, 3], result.slots[:3]) == 3
    with pytest.raises(ValueError, match="slots"):
        tree.insert([1, 2, 3], [7, 8])
    check(tree, alloc)


def test_match_ending_inside_a_node_splits_it():
    tree, alloc, _, _ = make_tree()
    _, slots = insert_fresh(tree, alloc, [1, 2, 3, 4, 5, 6])
    result = tree.match_prefix([1, 2, 3, 9])
    assert result.matched_len == 3 and result.slots == slots[:3]
    head = result.last_node
    assert head.key == [1, 2, 3] and head.parent is tree.root
    (tail,) = head.children.values()
    assert tail.key == [4, 5, 6] and tail.value == slots[3:]
    assert tree.path_key(tail) == [1, 2, 3, 4, 5, 6] and tree.node_depth_tokens(tail) == 6
    assert tree.total_size() == 6
    check(tree, alloc)


def test_page_size_four_ignores_partial_pages():
    tree, alloc, _, _ = make_tree(page_size=4)
    present_len, slots = insert_fresh(tree, alloc, list(range(1, 11)))  # 10 tokens: 8 cached
    assert present_len == 0 and tree.total_size() == 8
    # A mismatch inside the second page leaves only the first page matched, and the node split there.
    result = tree.match_prefix([1, 2, 3, 4, 5, 6, 9, 9, 9])
    assert result.matched_len == 4 and result.slots == slots[:4]
    assert result.last_node.key == [1, 2, 3, 4]
    # The key's own partial page never matches.
    assert tree.match_prefix([1, 2, 3, 4, 5, 6, 7]).matched_len == 4
    assert tree.match_prefix([1, 2, 3]).matched_len == 0
    # Re-inserting 11 tokens: 8 present, nothing new (the partial page is not cached).
    assert insert_fresh(tree, alloc, list(range(1, 12)))[0] == 8
    assert tree.total_size() == 8
    check(tree, alloc)


def test_lock_and_unlock_keep_sizes_exact():
    tree, alloc, _, _ = make_tree()
    insert_fresh(tree, alloc, [1, 2, 3, 4, 5, 6])
    insert_fresh(tree, alloc, [1, 2, 7, 8])
    assert (tree.evictable_size, tree.protected_size) == (8, 0)
    deep = tree.match_prefix([1, 2, 3, 4, 5, 6]).last_node
    tree.lock(deep)
    assert (tree.evictable_size, tree.protected_size) == (2, 6)
    other = tree.match_prefix([1, 2, 7, 8]).last_node
    tree.lock(other)
    assert (tree.evictable_size, tree.protected_size) == (0, 8)
    # Splitting a locked node moves no tokens between the two sizes.
    mid = tree.match_prefix([1, 2, 3, 4]).last_node
    assert mid.lock_ref == 1 and (tree.evictable_size, tree.protected_size) == (0, 8)
    tree.unlock(deep)
    assert (tree.evictable_size, tree.protected_size) == (4, 4)
    tree.unlock(other)
    assert (tree.evictable_size, tree.protected_size) == (8, 0)
    with pytest.raises(AssertionError):
        tree.unlock(other)
    check(tree, alloc)


@pytest.mark.parametrize("policy, order", [("lru", [(1, 1), (3, 3), (2, 2)]), ("lfu", [(2, 2), (3, 3), (1, 1)])])
def test_eviction_order_follows_policy(policy, order):
    tree, alloc, freed, clock = make_tree(policy=policy)
    # [1,1]: 3 hits, least recent; [3,3]: 2 hits; [2,2]: 1 hit, most recent.
    for key, hits in (([1, 1], 3), ([3, 3], 2), ([2, 2], 1)):
        insert_fresh(tree, alloc, key)
        for _ in range(hits):
            clock.tick()
            tree.match_prefix(key, record_hit=True)
    slot_to_key = {s: tuple(n.key) for n in tree.root.children.values() for s in n.value}
    assert tree.evict(1) == 2  # whole nodes only
    assert tree.evict(4) == 4
    assert [slot_to_key[group[0]] for group in freed] == order
    assert tree.total_size() == 0 and tree.evicted_tokens_total == 6
    check(tree, alloc)


def test_probe_matches_do_not_count_hits():
    tree, alloc, _, clock = make_tree()
    insert_fresh(tree, alloc, [1, 2, 3, 4])
    clock.tick()
    probe = tree.match_prefix([1, 2])
    assert probe.last_node.hit_count == 0 and probe.last_node.last_access == 1.0
    assert tree.hit_tokens_total == 0 and tree.query_tokens_total == 0
    hit = tree.match_prefix([1, 2, 3, 9], record_hit=True)
    assert hit.last_node.hit_count == 1 and hit.last_node.parent.hit_count == 1
    assert (tree.hit_tokens_total, tree.query_tokens_total) == (3, 4)
    # The split head inherits its old hits and gains this one; the tail keeps its own.
    head = tree.match_prefix([1, 9], record_hit=True).last_node
    assert head.hit_count == 2 and next(iter(head.children.values())).hit_count == 1


def test_locked_nodes_are_never_evicted_and_parents_follow_children():
    tree, alloc, freed, _ = make_tree()
    insert_fresh(tree, alloc, [1, 2, 3, 4])
    insert_fresh(tree, alloc, [1, 2, 5, 6])
    insert_fresh(tree, alloc, [7, 8, 9])
    kept = tree.match_prefix([1, 2, 3, 4]).last_node
    tree.lock(kept)
    assert tree.evict(100) == 5  # [5,6] and [7,8,9]; [1,2] is locked through its child
    assert tree.match_prefix([1, 2, 3, 4]).matched_len == 4
    assert tree.evict(100) == 0
    tree.unlock(kept)
    # Evicting [3,4] makes [1,2] a leaf, and it goes in the same call.
    assert tree.evict(3) == 4 and tree.total_size() == 0
    assert sorted(len(group) for group in freed) == [2, 2, 2, 3]
    check(tree, alloc)


def test_boundaries_create_node_ends_rounded_to_pages():
    tree, alloc, _, _ = make_tree(page_size=4)
    insert_fresh(tree, alloc, list(range(12)), boundaries=[5, 9, 100, 0])
    second = tree.root.children[(0, 1, 2, 3)].children[(4, 5, 6, 7)]
    assert second.key == [4, 5, 6, 7] and second.children[(8, 9, 10, 11)].key == [8, 9, 10, 11]
    check(tree, alloc)


def test_boundaries_split_existing_nodes():
    tree, alloc, _, _ = make_tree()
    insert_fresh(tree, alloc, [1, 2, 3, 4, 5, 6])
    assert insert_fresh(tree, alloc, [1, 2, 3, 4, 5, 6], boundaries=[3], segment_ids={5: "ex"})[0] == 6
    first = tree.root.children[(1,)]
    second = first.children[(4,)]
    assert (first.key, second.key, second.children[(6,)].key) == ([1, 2, 3], [4, 5], [6])
    assert second.segment_ends == {"ex"} and not first.segment_ends
    check(tree, alloc)


INSTR = [100, 101]
EX1, EX2, EX3 = [10, 11, 12], [20, 21], [10, 11, 13]


def _icl_insert(tree, alloc, examples: list[tuple[str, list[int]]], query: list[int]) -> None:
    key, segment_ids = list(INSTR), {len(INSTR): "instr"}
    for segment_id, tokens in examples:
        key += tokens
        segment_ids[len(key)] = segment_id
    insert_fresh(tree, alloc, key + query, segment_ids=segment_ids)


def test_segment_successors_from_a_branching_node():
    tree, alloc, _, _ = make_tree()
    _icl_insert(tree, alloc, [("e1", EX1), ("e2", EX2)], [1, 1])
    _icl_insert(tree, alloc, [("e2", EX2)], [2, 2])
    _icl_insert(tree, alloc, [("e3", EX3)], [3, 3])  # shares [10, 11] with e1: an unmarked node between
    _icl_insert(tree, alloc, [], [4, 4, 4])  # query right after the instruction: no segment below it
    (instr_edge,) = tree.segment_successors(tree.root)
    assert (instr_edge.segment_id, instr_edge.tokens) == ("instr", INSTR)
    edges = {e.segment_id: e for e in tree.segment_successors(instr_edge.end_node)}
    assert sorted(edges) == ["e1", "e2", "e3"]
    for segment_id, tokens in (("e1", EX1), ("e2", EX2), ("e3", EX3)):
        edge = edges[segment_id]
        assert edge.tokens == tokens and edge.num_tokens == len(tokens)
        assert tree.path_key(edge.end_node) == INSTR + tokens
        assert segment_id in edge.end_node.segment_ends
    tree.match_prefix(INSTR + EX1 + [9], record_hit=True)
    after_e1 = tree.segment_successors(edges["e1"].end_node)
    assert [(e.segment_id, e.tokens, e.hit_count) for e in after_e1] == [("e2", EX2, 0)]
    assert tree.segment_successors(edges["e3"].end_node) == []
    assert {e.segment_id: e.hit_count for e in tree.segment_successors(instr_edge.end_node)}["e1"] == 1
    check(tree, alloc)


def test_identical_paths_end_several_segments():
    tree, alloc, _, _ = make_tree()
    _icl_insert(tree, alloc, [("a", EX2)], [5])
    _icl_insert(tree, alloc, [("b", EX2)], [6])
    edges = tree.segment_successors(tree.segment_successors(tree.root)[0].end_node)
    assert [(e.segment_id, e.tokens) for e in edges] == [("a", EX2), ("b", EX2)]
    assert edges[0].end_node is edges[1].end_node


def test_segment_policy_drops_query_tails_then_cold_examples():
    tree, alloc, freed, clock = make_tree(policy="segment")
    _icl_insert(tree, alloc, [("hot", EX1)], [])
    _icl_insert(tree, alloc, [("cold", EX2)], [])
    for _ in range(3):
        clock.tick()
        tree.match_prefix(INSTR + EX1, record_hit=True)
    clock.tick()
    tree.match_prefix(INSTR + EX2, record_hit=True)  # cold is more recent than hot: LRU would drop hot first
    clock.tick()
    _icl_insert(tree, alloc, [("hot", EX1)], [7, 7])
    for _ in range(2):  # the tail is now hotter and newer than "cold" (LRU and LFU would drop "cold" first)
        clock.tick()
        tree.match_prefix(INSTR + EX1 + [7, 7], record_hit=True)
    instr = tree.root.children[(INSTR[0],)]
    hot, cold = instr.children[(EX1[0],)], instr.children[(EX2[0],)]
    expected = [hot.children[(7,)].value, cold.value, hot.value]
    assert [tree.evict(1) for _ in expected] == [2, len(EX2), len(EX1)]
    assert freed == expected
    assert tree.match_prefix(INSTR + EX1).matched_len == len(INSTR)
    check(tree, alloc)


def test_reset_frees_everything_and_refuses_when_locked():
    tree, alloc, _, _ = make_tree(page_size=4)
    insert_fresh(tree, alloc, list(range(16)))
    insert_fresh(tree, alloc, list(range(8)) + [9] * 8)
    node = tree.match_prefix(list(range(16))).last_node
    tree.lock(node)
    with pytest.raises(AssertionError):
        tree.reset()
    tree.unlock(node)
    assert tree.reset() == 24
    assert alloc.num_free == alloc.capacity and tree.total_size() == 0 and not tree.root.children
    assert tree.match_prefix(list(range(16))).matched_len == 0
    check(tree, alloc)


def test_integrity_checks_catch_corruption():
    tree, alloc, _, _ = make_tree()
    _, slots = insert_fresh(tree, alloc, [1, 2, 3])
    with pytest.raises(AssertionError, match="free list"):
        tree.check_integrity(alloc.free_slot_set() | {slots[0]})
    with pytest.raises(AssertionError, match="leaked"):
        tree.check_slot_conservation(alloc.free_slot_set(), [], range(1, alloc.num_slots + 1))
    node = tree.root.children[(1,)]
    node.lock_ref = 1
    with pytest.raises(AssertionError, match="lock_ref"):
        tree.check_integrity()
    node.lock_ref = 0
    node.value = node.value[:2]
    with pytest.raises(AssertionError, match="slots for"):
        tree.check_integrity()
