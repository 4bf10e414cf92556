"""Stateful fuzzing of RadixCache + SlotAllocator the way a scheduler drives them.

Fake requests are admitted (match + lock + alloc the uncached rest, evicting when short), checkpointed (insert
what is computed so far and re-lock the new end, as chunked prefill does), finished (insert, free duplicates,
unlock) or aborted. After every step the tree recounts itself and every usable slot must be owned by exactly one
of: the tree, the free list, an in-flight request. Each run evicts either through the incremental heap (the
built-ins are monotone) or, with the same priorities wrapped as non-monotone, through the full per-call heap;
the `evict` rule checks the first victim against a brute-force minimum either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from hypothesis.stateful import run_state_machine_as_test

from engine.config import EVICTION_POLICIES as BUILTIN_POLICIES
from engine.radix_cache import RadixCache, TreeNode, make_eviction_policy
from engine.slot_allocator import SlotAllocator

VOCAB = 3  # tiny, so prefixes collide constantly
POOL_SLOTS = 64  # ~2.5 long requests: admission evicts and sometimes fails
MAX_IN_FLIGHT = 4
segment_tokens = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6)
request_parts = st.lists(st.integers(0, 3), min_size=1, max_size=3)  # indices into the machine's segments
query_tokens = st.lists(st.integers(0, VOCAB - 1), max_size=6)


class FullHeap:
    """A policy's priorities without its monotone promise: the tree ranks every leaf per evict() call."""

    def __init__(self, policy):
        self.name, self.priority = policy.name, policy.priority


@dataclass
class FakeReq:
    key: list[int]
    segment_ids: dict[int, str]
    last_node: TreeNode  # locked by this request
    cached_len: int  # slots[:cached_len] belong to the tree, the rest to the request
    slots: list[int]


class RadixMachine(RuleBasedStateMachine):
    counts: dict[str, int]  # set by the test that runs the machine: examples and invariant checks

    @initialize(page_size=st.sampled_from([1, 4]), policy=st.sampled_from(BUILTIN_POLICIES),
                full_heap=st.booleans(), segments=st.lists(segment_tokens, min_size=2, max_size=4))
    def setup(self, page_size: int, policy: str, full_heap: bool, segments: list[list[int]]) -> None:
        self.page_size = page_size
        self.alloc = SlotAllocator(POOL_SLOTS, page_size)
        self.freed: list[list[int]] = []
        self.now = 0.0
        spec = FullHeap(make_eviction_policy(policy)) if full_heap else policy
        self.tree = RadixCache(page_size, self._free, eviction_policy=spec, clock=lambda: self.now)
        assert self.tree.incremental_eviction is not full_heap
        self.priority = make_eviction_policy(policy).priority
        self.segments = segments
        self.requests: list[FakeReq] = []
        self.counts["examples"] += 1

    def _free(self, slots: list[int]) -> None:
        self.freed.append(list(slots))
        self.alloc.free(slots)

    def _aligned(self, n: int) -> int:
        return n - n % self.page_size

    def _alloc(self, num_tokens: int) -> list[int] | None:
        if self.alloc.num_free < num_tokens:
            self.tree.evict(num_tokens - self.alloc.num_free)
        return self.alloc.alloc(num_tokens)

    def _check_match(self, key: list[int], result) -> None:
        assert result.matched_len % self.page_size == 0 and result.matched_len <= len(key)
        assert self.tree.path_key(result.last_node) == key[: result.matched_len]
        assert self.tree.path_slots(result.last_node) == result.slots
        assert all(n.last_access == self.now for n in [result.last_node, *result.last_node.ancestors()][:-1])
        # Longest: the next page is not cached under the match's end.
        next_page = tuple(key[result.matched_len : result.matched_len + self.page_size])
        assert len(next_page) < self.page_size or all(
            tuple(c.key[: self.page_size]) != next_page for c in result.last_node.children.values()
        )

    def _pick(self, index: int) -> FakeReq:
        return self.requests[index % len(self.requests)]

    def _admit(self, parts: list[int], tail: list[int], record_hit: bool) -> FakeReq | None:
        self.now += 1.0
        key: list[int] = []
        segment_ids: dict[int, str] = {}
        for part in parts:
            key += self.segments[part % len(self.segments)]
            segment_ids[len(key)] = f"seg{part % len(self.segments)}"
        key += tail
        result = self.tree.match_prefix(key, record_hit=record_hit)
        self._check_match(key, result)
        self.tree.lock(result.last_node)
        own = self._alloc(self.alloc.pages_for(len(key) - result.matched_len) * self.page_size)
        if own is None:  # the pool cannot hold it even after evicting: reject
            self.tree.unlock(result.last_node)
            return None
        req = FakeReq(key, segment_ids, result.last_node, result.matched_len, result.slots + own)
        self.requests.append(req)
        return req

    @precondition(lambda self: len(self.requests) < MAX_IN_FLIGHT)
    @rule(parts=request_parts, tail=query_tokens, record_hit=st.booleans())
    def admit(self, parts: list[int], tail: list[int], record_hit: bool) -> None:
        self._admit(parts, tail, record_hit)

    @rule(parts=request_parts, tail=query_tokens, boundary=st.integers(0, 30))
    def run_whole_request(self, parts: list[int], tail: list[int], boundary: int) -> None:
        """Admit and finish in one step: the common short-request flow."""
        req = self._admit(parts, tail, record_hit=True)
        if req is not None:
            self._finish(req, boundary)

    @precondition(lambda self: self.requests)
    @rule(index=st.integers(0, MAX_IN_FLIGHT), percent=st.integers(0, 100))
    def checkpoint(self, index: int, percent: int) -> None:
        req = self._pick(index)
        computed_len = req.cached_len + (len(req.key) - req.cached_len) * percent // 100
        aligned_len = self._aligned(computed_len)
        if aligned_len <= req.cached_len:
            return
        present_len = self.tree.insert(req.key[:computed_len], req.slots[:computed_len], segment_ids=req.segment_ids)
        assert req.cached_len <= present_len <= aligned_len
        self.alloc.free(req.slots[req.cached_len : present_len])  # our duplicates of what was already cached
        result = self.tree.match_prefix(req.key[:computed_len])
        assert result.matched_len == aligned_len
        assert result.slots[: req.cached_len] == req.slots[: req.cached_len]
        assert result.slots[present_len:] == req.slots[present_len:aligned_len]
        self.tree.lock(result.last_node)
        self.tree.unlock(req.last_node)
        req.slots = result.slots + req.slots[aligned_len:]
        req.cached_len, req.last_node = aligned_len, result.last_node

    @precondition(lambda self: self.requests)
    @rule(index=st.integers(0, MAX_IN_FLIGHT), boundary=st.integers(0, 30), flush_roll=st.integers(0, 15))
    def finish(self, index: int, boundary: int, flush_roll: int) -> None:
        self._finish(self._pick(index), boundary)
        if flush_roll == 0 and not self.requests:  # now and then an idle server gets /flush_cache
            self.tree.reset()
            assert self.tree.total_size() == 0 and self.alloc.num_free == self.alloc.capacity

    def _finish(self, req: FakeReq, boundary: int) -> None:
        self.requests.remove(req)
        aligned_len = self._aligned(len(req.key))
        present_len = self.tree.insert(req.key, req.slots[: len(req.key)], [boundary], req.segment_ids)
        assert req.cached_len <= present_len <= aligned_len
        self.alloc.free(req.slots[req.cached_len : present_len] + req.slots[aligned_len:])
        self.tree.unlock(req.last_node)
        result = self.tree.match_prefix(req.key)
        assert result.matched_len == aligned_len
        assert result.slots[present_len:] == req.slots[present_len:aligned_len]
        for offset in {self._aligned(o) for o in [boundary, *req.segment_ids]}:
            if 0 < offset <= aligned_len:
                node = self._node_ending_at(req.key, offset)
                assert node is not None, f"no node ends at boundary {offset}"
                ended_here = {sid for o, sid in req.segment_ids.items() if self._aligned(o) == offset}
                assert ended_here <= node.segment_ends

    def _node_ending_at(self, key: list[int], offset: int) -> TreeNode | None:
        """Walks down along key without splitting; the node whose end is exactly `offset`, if any."""
        node = self.tree.root
        while node.depth_tokens < offset:
            node = node.children.get(tuple(key[node.depth_tokens : node.depth_tokens + self.page_size]))
            if node is None:
                return None
        return node if node.depth_tokens == offset else None

    @precondition(lambda self: self.requests)
    @rule(index=st.integers(0, MAX_IN_FLIGHT))
    def abort(self, index: int) -> None:
        req = self._pick(index)
        self.requests.remove(req)
        self.alloc.free(req.slots[req.cached_len :])
        self.tree.unlock(req.last_node)

    @rule(num_tokens=st.integers(0, 40))
    def evict(self, num_tokens: int) -> None:
        candidates = [n for n in self._nodes() if not n.children and n.lock_ref == 0]
        first = min(candidates, key=lambda n: (self.priority(n), n.node_id), default=None)
        first_slots = list(first.value) if first is not None else None
        total_before, freed_before = self.tree.total_size(), len(self.freed)
        evicted = self.tree.evict(num_tokens)
        assert self.tree.total_size() == total_before - evicted
        assert evicted >= num_tokens or self.tree.evictable_size == 0
        if evicted:
            assert self.freed[freed_before] == first_slots, "evicted out of policy order"

    @rule(key=st.lists(st.integers(0, VOCAB - 1), max_size=16))
    def probe(self, key: list[int]) -> None:
        self._check_match(key, self.tree.match_prefix(key))

    @rule(index=st.integers(0, 200))
    def segment_walk(self, index: int) -> None:
        nodes = [self.tree.root, *self._nodes()]
        start = nodes[index % len(nodes)]
        got = {(e.segment_id, e.end_node.node_id, tuple(e.tokens)) for e in self.tree.segment_successors(start)}
        start_len = len(self.tree.path_key(start))
        expected = set()
        stack = list(start.children.values())  # no pruning: visit the whole subtree
        while stack:
            node = stack.pop()
            if node.segment_ends:
                tokens = tuple(self.tree.path_key(node)[start_len:])
                expected |= {(s, node.node_id, tokens) for s in node.segment_ends}
            else:
                stack.extend(node.children.values())
        assert got == expected

    def _nodes(self) -> list[TreeNode]:
        out, stack = [], list(self.tree.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    @invariant()
    def everything_accounted_for(self) -> None:
        self.counts["checks"] += 1
        free = self.alloc.free_slot_set()
        self.alloc.check_integrity()
        self.tree.check_integrity(free, self.alloc.num_slots)
        held = [s for r in self.requests for s in r.slots[r.cached_len :]]
        self.tree.check_slot_conservation(free, held, range(self.page_size, self.alloc.num_slots))
        for req in self.requests:
            node = req.last_node
            assert node is self.tree.root or node.lock_ref >= 1
            assert self.tree.path_slots(node) == req.slots[: req.cached_len]  # still attached, same slots
            assert all(a is self.tree.root or a.parent.children[tuple(a.key[: self.page_size])] is a
                       for a in [node, *node.ancestors()])
        direct_locks = sum(n.direct_locks for n in self._nodes())
        assert direct_locks == sum(1 for r in self.requests if r.last_node is not self.tree.root)


def run_fuzz(max_examples: int, step_count: int) -> int:
    """Runs the machine; returns how many steps (rules after setup) it executed."""

    class CountedMachine(RadixMachine):
        counts = {"examples": 0, "checks": 0}

    run_state_machine_as_test(
        CountedMachine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=step_count,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    # The invariant runs once after setup and once after every rule.
    return CountedMachine.counts["checks"] - CountedMachine.counts["examples"]


def test_radix_fuzz():
    assert run_fuzz(max_examples=300, step_count=60) >= 10_000


@pytest.mark.slow
def test_radix_fuzz_long():
    assert run_fuzz(max_examples=2000, step_count=100) >= 100_000
