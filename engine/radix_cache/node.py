"""Radix-tree nodes and the records the tree hands out (pure Python, no torch).

A non-root node holds `key` (token ids) and `value` (the KV slots of those tokens, same length), both a whole
number of pages. The root holds empty lists and is never locked, hit or evicted. Fields the tree keeps current:

- depth_tokens: tokens from the root to the END of this node (stable under splits: a split inserts a new parent
  above the node, the node still ends at the same depth).
- lock_ref: locks whose target lies in this node's subtree; direct_locks: locks whose target is this node.
  So lock_ref == direct_locks + sum(child.lock_ref), and a parent's lock_ref is >= each child's.
- hit_count / last_access: matches (record_hit=True) that passed through or ended at this node / last time
  a match or insert walked it.
- segment_ends: ids of the segments (e.g. ICL examples) that end exactly where this node ends.
- segment_nodes_below: descendants (strict) with a non-empty segment_ends, so segment walks can skip subtrees
  that hold only query tails.

Also here: read-only walks over nodes (paths, segment edges) and `check_tree`, the from-scratch recount that
RadixCache.check_integrity compares its counters against.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


class TreeNode:
    __slots__ = (
        "node_id",
        "key",
        "value",
        "parent",
        "children",
        "depth_tokens",
        "lock_ref",
        "direct_locks",
        "hit_count",
        "last_access",
        "segment_ends",
        "segment_nodes_below",
    )

    def __init__(
        self, node_id: int, key: list[int], value: list[int], parent: TreeNode | None, last_access: float
    ):
        self.node_id = node_id  # creation order: the tie-breaker of every eviction priority
        self.key = key
        self.value = value
        self.parent = parent
        self.children: dict[tuple[int, ...], TreeNode] = {}
        self.depth_tokens = (parent.depth_tokens if parent is not None else 0) + len(key)
        self.lock_ref = 0
        self.direct_locks = 0
        self.hit_count = 0
        self.last_access = last_access
        self.segment_ends: set[str] = set()
        self.segment_nodes_below = 0

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def ancestors(self):
        """Yields parent, grandparent, ... up to and including the root."""
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def __repr__(self) -> str:
        return (
            f"TreeNode(id={self.node_id}, len={len(self.key)}, depth={self.depth_tokens}, "
            f"lock_ref={self.lock_ref}, hits={self.hit_count}, segments={sorted(self.segment_ends)})"
        )


@dataclass
class MatchResult:
    """Longest cached page-aligned prefix of a key.

    slots: KV slots of key[:matched_len] (owned by the tree; lock last_node before relying on them).
    last_node: the node ending exactly at matched_len (the root when matched_len == 0).
    """

    slots: list[int]
    last_node: TreeNode
    matched_len: int


@dataclass
class SegmentEdge:
    """One segment that continues directly below a node.

    tokens: the key path from the start node (exclusive) to end_node (inclusive); num_tokens == len(tokens).
    hit_count / last_access: those of end_node.
    """

    segment_id: str
    end_node: TreeNode
    tokens: list[int]
    num_tokens: int
    hit_count: int
    last_access: float


def path_key(node: TreeNode) -> list[int]:
    """Tokens from the root to the end of `node`. O(depth)."""
    parts = [node.key, *(a.key for a in node.ancestors())]
    return [t for part in reversed(parts) for t in part]


def path_slots(node: TreeNode) -> list[int]:
    """Slots of path_key(node), in order. O(depth)."""
    parts = [node.value, *(a.value for a in node.ancestors())]
    return [s for part in reversed(parts) for s in part]


def segment_edges_below(start: TreeNode) -> list[SegmentEdge]:
    """On each branch below `start`, the first node with a non-empty segment_ends yields one edge per id.

    Subtrees with segment_nodes_below == 0 and no segment end of their own are skipped, so the cost is the
    local branching plus the paths to those first ends, independent of how many query tails are cached.
    """
    edges: list[SegmentEdge] = []
    stack: list[tuple[TreeNode, list[int]]] = [(start, [])]
    while stack:
        parent, tokens = stack.pop()
        for child in parent.children.values():
            child_tokens = tokens + child.key
            if child.segment_ends:
                for segment_id in sorted(child.segment_ends):
                    edges.append(
                        SegmentEdge(
                            segment_id=segment_id,
                            end_node=child,
                            tokens=list(child_tokens),
                            num_tokens=len(child_tokens),
                            hit_count=child.hit_count,
                            last_access=child.last_access,
                        )
                    )
            elif child.segment_nodes_below:
                stack.append((child, child_tokens))
    return edges


@dataclass
class TreeFacts:
    """What check_tree recounted: token sizes, the unlocked childless non-root nodes, all slots."""

    evictable_size: int = 0
    protected_size: int = 0
    evictable_leaves: set[TreeNode] = field(default_factory=set)
    slots: set[int] = field(default_factory=set)


def check_tree(root: TreeNode, page_size: int, num_slots: int | None) -> TreeFacts:
    """Asserts every structural invariant of the tree under `root` and recounts what the tree keeps
    incrementally. With num_slots, every slot must lie in [page_size, num_slots) (page 0 pads kernels)."""
    assert root.parent is None and not root.key and not root.value, "malformed root"
    assert root.lock_ref == 0 and root.direct_locks == 0 and root.depth_tokens == 0, "root was locked or moved"
    facts = TreeFacts()
    order: list[TreeNode] = []
    stack = [root]
    while stack:
        node = stack.pop()
        order.append(node)
        for first_page, child in node.children.items():
            assert child.parent is node, f"bad parent pointer: {child}"
            assert first_page == tuple(child.key[:page_size]), f"child filed under the wrong page: {child}"
            stack.append(child)
    for node in order[1:]:
        _check_node(node, page_size, num_slots, facts)
    # Children before parents, so the sums below read finished children.
    for node in reversed(order):
        kids = node.children.values()
        below = sum(c.segment_nodes_below + (1 if c.segment_ends else 0) for c in kids)
        assert node.segment_nodes_below == below, f"segment_nodes_below {node.segment_nodes_below} != {below}"
        if node is not root:
            locks = node.direct_locks + sum(c.lock_ref for c in kids)
            assert node.lock_ref == locks, f"lock_ref {node.lock_ref} != direct + children's {locks}: {node}"
    return facts


def check_slot_partition(
    tree_slots: set[int], free_slots: set[int], held_slots: Iterable[int], usable_slots: Iterable[int]
) -> None:
    """Asserts the three owners' slots are disjoint and together exactly `usable_slots`."""
    held = list(held_slots)
    held_set = set(held)
    assert len(held_set) == len(held), "a slot is held twice by requests"
    assert held_set.isdisjoint(tree_slots), "a request holds a slot the tree owns"
    assert held_set.isdisjoint(free_slots), "a request holds a free slot"
    assert tree_slots.isdisjoint(free_slots), "a tree slot is on the free list"
    missing_or_extra = (tree_slots | held_set | set(free_slots)) ^ set(usable_slots)
    assert not missing_or_extra, f"slots leaked or invented: {sorted(missing_or_extra)[:16]}"


def _check_node(node: TreeNode, page_size: int, num_slots: int | None, facts: TreeFacts) -> None:
    key_len = len(node.key)
    assert key_len > 0 and key_len % page_size == 0, f"key not a whole number of pages: {node}"
    assert len(node.value) == key_len, f"{len(node.value)} slots for {key_len} tokens: {node}"
    assert node.depth_tokens == node.parent.depth_tokens + key_len, f"stale depth_tokens: {node}"
    assert node.lock_ref >= 0 and node.direct_locks >= 0, f"negative lock count: {node}"
    for i in range(0, key_len, page_size):
        first = node.value[i]
        assert first % page_size == 0, f"slot {first} does not start a page: {node}"
        assert node.value[i : i + page_size] == list(range(first, first + page_size)), f"torn page: {node}"
    for slot in node.value:
        assert slot not in facts.slots, f"slot {slot} appears twice in the tree"
        facts.slots.add(slot)
        if num_slots is not None:
            assert page_size <= slot < num_slots, f"slot {slot} outside the usable pool"
    if node.lock_ref:
        facts.protected_size += key_len
    else:
        facts.evictable_size += key_len
        if not node.children:
            facts.evictable_leaves.add(node)
