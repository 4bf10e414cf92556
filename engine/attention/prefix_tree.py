"""The shared prefixes of one decode step's requests as a tree of segments (pure Python), for the cascade kernel.

The radix cache hands one set of slots to every request that matched a prefix, and a slot is owned by the tree or
by one request, never both; a tree slot sits at one depth of one path. So two requests that hold the same slot at
position p hold the same slots on all of [0, p]. Positions are compared at checkpoints, the last position of each
`block`-key block: request r has `(seq_len_r - 1) // block` whole blocks before its newest key, so every request
keeps at least one key of its own.

`prefix_segments` sorts the requests by their checkpoint slots (requests sharing a prefix become neighbours) and
builds the tree of longest common prefixes from the neighbours' shared block counts (one stack pass, as for a suffix
array's LCP intervals). Each inner node with two or more requests below it is a segment: blocks [parent depth,
depth) of those requests, read once for all of them. A request's segments tile its keys from 0 up to the depth of
the deepest one it is in; its suffix is the rest. Cost: O(B log K) comparisons for B requests of K blocks, plus
the sort.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    members: list[int]  # request indices, ascending in the sort order (>= 2)
    key_start: int  # keys [key_start, key_end) of every member, the same slots in each
    key_end: int


def _shared_blocks(a: list[int], b: list[int], na: int, nb: int) -> int:
    """Leading blocks two requests share: the largest d with a[d - 1] == b[d - 1] (sharing block d - 1 implies
    sharing every block before it, so the predicate is monotone and a binary search finds the boundary)."""
    lo, hi = 0, min(na, nb)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[mid - 1] == b[mid - 1]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def prefix_segments(marks: list[list[int]], seq_lens: list[int], block: int) -> list[Segment]:
    """marks[r][j]: request r's slot at position (j + 1) * block - 1 (at least its whole blocks before its newest
    key); seq_lens[r]: its keys, the newest included. Returns the segments, children before parents."""
    n_blocks = [(n - 1) // block for n in seq_lens]
    order = sorted((r for r in range(len(seq_lens)) if n_blocks[r] > 0), key=lambda r: marks[r][:n_blocks[r]])
    if len(order) < 2:
        return []
    lcp = [_shared_blocks(marks[a], marks[b], n_blocks[a], n_blocks[b]) for a, b in zip(order, order[1:])]
    segments = []
    stack = [(0, 0)]  # (depth, first index in order) of the open intervals, depths increasing
    for i in range(1, len(order) + 1):
        h = lcp[i - 1] if i < len(order) else 0
        lb = i - 1
        while h < stack[-1][0]:
            depth, lb = stack.pop()
            parent = max(h, stack[-1][0])  # the enclosing interval: the next open one, or one opened at h below
            segments.append(Segment(order[lb:i], parent * block, depth * block))
        if h > stack[-1][0]:
            stack.append((h, lb))
    return segments
