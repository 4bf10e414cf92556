"""engine.attention.prefix_tree: the segments of a decode step's shared prefixes, on radix-like slot tables."""
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.attention.prefix_tree import prefix_segments

BLOCK = 4


def _radix_table(rng: random.Random, n: int, max_len: int) -> list[list[int]]:
    """Slot rows like the radix cache makes: each request copies a random leading part of an earlier request's row
    (the prefix it matched) and continues with fresh slots, so equal slots at p mean equal slots on [0, p]."""
    rows, fresh = [], iter(range(1, 10**9))
    for r in range(n):
        length = rng.randint(1, max_len)
        row = []
        if rows and rng.random() < 0.8:
            parent = rng.choice(rows)
            row = parent[:rng.randint(0, min(len(parent), length))]
        row += [next(fresh) for _ in range(length - len(row))]
        rows.append(row)
    return rows


def _marks(rows: list[list[int]]) -> list[list[int]]:
    return [row[BLOCK - 1::BLOCK] for row in rows]


def _shared(a: list[int], b: list[int]) -> int:
    """Leading whole blocks two rows share, each limited to the blocks before its newest key."""
    limit = min((len(a) - 1) // BLOCK, (len(b) - 1) // BLOCK) * BLOCK
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n // BLOCK


def test_nested_prefixes_make_nested_segments():
    shared = list(range(100, 108))  # 2 blocks everyone shares
    a = shared + [1, 2, 3, 4] + [5, 6]  # a and b share a third block
    b = shared + [1, 2, 3, 4] + [7]
    c = shared + [8, 9, 10, 11, 12]
    d = [20, 21, 22, 23, 24, 25]  # shares nothing
    rows = [c, a, d, b]
    segs = prefix_segments(_marks(rows), [len(r) for r in rows], BLOCK)
    assert [(sorted(s.members), s.key_start, s.key_end) for s in segs] == [([1, 3], 8, 12), ([0, 1, 3], 0, 8)]


def test_no_sharing_no_segments():
    rows = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11]]
    assert prefix_segments(_marks(rows), [len(r) for r in rows], BLOCK) == []
    assert prefix_segments([[]], [1], BLOCK) == []


def test_a_shared_row_up_to_the_newest_key_stays_out():
    """Both requests hold the same slots for all 8 keys, but each keeps its newest key (and so its last block's
    worth of keys before it) as its own suffix."""
    rows = [list(range(8)), list(range(8))]
    segs = prefix_segments(_marks(rows), [8, 8], BLOCK)
    assert [(sorted(s.members), s.key_start, s.key_end) for s in segs] == [([0, 1], 0, 4)]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 24), max_len=st.integers(1, 40))
def test_segments_tile_each_requests_deepest_sharing(seed, n, max_len):
    rows = _radix_table(random.Random(seed), n, max_len)
    segs = prefix_segments(_marks(rows), [len(r) for r in rows], BLOCK)
    mine: dict[int, list[tuple[int, int]]] = {r: [] for r in range(n)}
    for s in segs:
        assert len(s.members) >= 2 and s.key_start < s.key_end and s.key_end % BLOCK == 0
        lead = rows[s.members[0]]
        for m in s.members:
            assert rows[m][s.key_start:s.key_end] == lead[s.key_start:s.key_end]
            mine[m].append((s.key_start, s.key_end))
        # a segment holds exactly the requests that share its whole depth with its first member
        depth = s.key_end // BLOCK
        assert sorted(s.members) == sorted(r for r in range(n)
                                           if r == s.members[0] or _shared(rows[r], lead) >= depth)
    for r in range(n):
        ranges = sorted(mine[r])
        end = 0
        for start, stop in ranges:
            assert start == end  # contiguous from 0, no overlap
            end = stop
        deepest = max((_shared(rows[r], rows[o]) for o in range(n) if o != r), default=0)
        assert end == deepest * BLOCK < len(rows[r])
