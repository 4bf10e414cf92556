"""KV slot allocator: a free list of pages over a pool of `num_slots` token slots (pure Python, no torch).

Contract:
- Slots are ints in [0, num_slots). Page p owns slots [p * page_size, (p + 1) * page_size).
- `alloc(n)` needs n to be a multiple of page_size and returns n slots made of whole pages, page by page in
  ascending slot order within each page, or None when there is not enough room (nothing is taken then).
- `free(slots)` takes back whole pages: len(slots) is a multiple of page_size, each page given exactly once, as
  the contiguous run alloc returned for it. Freeing a slot that is already free raises AssertionError.
- Slot 0's page is reserved as a padding target for kernels, so the usable size is num_slots - page_size.
"""
from __future__ import annotations


class SlotAllocator:
    def __init__(self, num_slots: int, page_size: int = 1):
        if page_size < 1:
            raise ValueError(f"page_size: must be >= 1 (got {page_size})")
        if num_slots < 2 * page_size:
            raise ValueError(f"kv_cache_tokens: need at least 2 pages of {page_size} slots (got {num_slots})")
        self.page_size = page_size
        self.num_pages = num_slots // page_size
        self.num_slots = self.num_pages * page_size
        # Page 0 is never handed out: padded kernel reads point there.
        self._free_pages: list[int] = list(range(self.num_pages - 1, 0, -1))
        self._is_free = bytearray(self.num_pages)
        for p in self._free_pages:
            self._is_free[p] = 1

    @property
    def capacity(self) -> int:
        """Usable slots (pool minus the reserved padding page)."""
        return (self.num_pages - 1) * self.page_size

    @property
    def num_free(self) -> int:
        return len(self._free_pages) * self.page_size

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def alloc(self, n: int) -> list[int] | None:
        ps = self.page_size
        assert n >= 0 and n % ps == 0, f"alloc({n}) is not page-aligned (page_size={ps})"
        num_pages = n // ps
        if num_pages > len(self._free_pages):
            return None
        out: list[int] = []
        for _ in range(num_pages):
            p = self._free_pages.pop()
            self._is_free[p] = 0
            base = p * ps
            out.extend(range(base, base + ps))
        return out

    def free(self, slots: list[int]) -> None:
        ps = self.page_size
        assert len(slots) % ps == 0, f"free of {len(slots)} slots is not page-aligned (page_size={ps})"
        for i in range(0, len(slots), ps):
            s = slots[i]
            assert s % ps == 0, f"slot {s} does not start a page"
            p = s // ps
            assert 0 < p < self.num_pages, f"slot {s} outside the pool"
            assert not self._is_free[p], f"double free of page {p}"
            self._is_free[p] = 1
            self._free_pages.append(p)

    def free_slot_set(self) -> set[int]:
        """All free slots (for integrity checks; O(pool))."""
        ps = self.page_size
        return {p * ps + i for p in self._free_pages for i in range(ps)}

    def check_integrity(self) -> None:
        assert len(set(self._free_pages)) == len(self._free_pages), "a page is on the free list twice"
        assert sum(self._is_free) == len(self._free_pages), "free flags disagree with the free list"
        assert all(self._is_free[p] for p in self._free_pages), "free list holds a page flagged used"
        assert not self._is_free[0], "the padding page was handed out"
