"""KV ownership for requests: slot allocator + req_to_token rows + (optionally) the radix prefix cache.

Every usable slot is at any time in exactly one place: the allocator's free list, the radix tree, or one
running/waiting request's `slots` beyond the part the tree owns (`check_integrity` verifies this).
A request's `slots[:cached_len]` belong to the tree (locked through `last_node`); `slots[cached_len:]` are its own.

Tenant isolation (`isolate_tenants`, the --isolate-prefix-cache flag): each tenant's radix keys live in their own
namespace, token id t of tenant number n being keyed as t + n * NAMESPACE_STRIDE (tenant 0 keeps raw ids), so a
match never crosses tenants and no tenant can time another's cached prefixes. Off (the default), the same tokens
share the same KV whoever sent them: the saving the cache exists for, at the price of a timing side channel.
"""
from __future__ import annotations

from engine.radix_cache import RadixCache
from engine.scheduler.request import Req
from engine.slot_allocator import SlotAllocator

NAMESPACE_STRIDE = 1 << 32  # above any token id: namespaced keys of two tenants never compare equal


class TenantTreeView:
    """The radix tree as one tenant sees it (what native PAIR walks): keys go into the tenant's namespace."""

    def __init__(self, tree: RadixCache, offset: int):
        self._tree, self._offset = tree, offset
        self.page_size = tree.page_size

    def match_prefix(self, key, record_hit: bool = False):
        return self._tree.match_prefix([t + self._offset for t in key], record_hit=record_hit)

    def segment_successors(self, node):
        return self._tree.segment_successors(node)


class KVManager:
    def __init__(self, num_slots: int, page_size: int, max_reqs: int, enable_cache: bool,
                 eviction_policy: str = "lru", clock=None, isolate_tenants: bool = False):
        self.allocator = SlotAllocator(num_slots, page_size)
        self.page_size = page_size
        self.max_reqs = max_reqs
        self._free_rows = list(range(max_reqs - 1, -1, -1))
        kwargs = {} if clock is None else {"clock": clock}
        self.tree = RadixCache(page_size, self.allocator.free, eviction_policy, **kwargs) if enable_cache else None
        self.evicted_tokens_total = 0
        self.isolate_tenants = isolate_tenants
        self._namespaces: dict[str, int] = {}  # tenant → its key offset (isolate_tenants only)

    # --- tenant namespaces ----------------------------------------------------------------------------
    def _offset(self, tenant: str) -> int:
        if not self.isolate_tenants:
            return 0
        n = self._namespaces.get(tenant)
        if n is None:
            n = self._namespaces[tenant] = len(self._namespaces) * NAMESPACE_STRIDE
        return n

    def _key(self, ids: list[int], tenant: str) -> list[int]:
        """The radix key of `ids` sent by `tenant`: the ids themselves, or namespaced under isolation."""
        offset = self._offset(tenant)
        return [t + offset for t in ids] if offset else ids

    def tree_view(self, tenant: str):
        """What `tenant`'s requests may match: the tree itself, or its view of its own namespace (None: no cache)."""
        if self.tree is None:
            return None
        offset = self._offset(tenant)
        return TenantTreeView(self.tree, offset) if offset else self.tree

    # --- capacity -------------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.allocator.capacity

    def available(self) -> int:
        """Slots obtainable now: free plus evictable cache."""
        return self.allocator.num_free + (self.tree.evictable_size if self.tree else 0)

    def has_free_row(self) -> bool:
        return bool(self._free_rows)

    def aligned(self, n: int) -> int:
        return n - n % self.page_size

    # --- prefix matching ------------------------------------------------------------------------------
    def match(self, ids: list[int], record_hit: bool = False, limit: int | None = None, tenant: str = "anonymous"):
        """(cached slots, node) for the longest cached page-aligned prefix of ids that `tenant` may use (never all
        of ids, and at most `limit` tokens when given: Req.cache_limit).

        Probes (record_hit=False) may go stale within a step as reserving evicts; `admit` matches again."""
        # Keep at least one token to compute: the last prompt token's logits are needed to sample.
        n = len(ids) - 1 if limit is None else min(len(ids) - 1, limit)
        if self.tree is None or n < 1:
            return [], None
        m = self.tree.match_prefix(self._key(ids[:n], tenant), record_hit=record_hit)
        return m.slots, m.last_node

    # --- admission and growth -------------------------------------------------------------------------
    def admit(self, req: Req) -> None:
        """Give `req` a row and its cached prefix (matched now, locked). Call `reserve` next for new tokens."""
        assert req.req_pool_idx is None and not req.slots
        prefix_slots, node = self.match(req.fill_ids, record_hit=True, limit=req.cache_limit, tenant=req.tenant)
        req.req_pool_idx = self._free_rows.pop()
        req.slots = list(prefix_slots)
        req.kv_len = req.cached_len = len(prefix_slots)
        req.table_len = 0
        req.last_node = node
        if node is not None:
            self.tree.lock(node)

    def reserve(self, req: Req, total_len: int) -> bool:
        """Make req.slots cover `total_len` positions, evicting cache if needed. False if impossible."""
        need = self.allocator.pages_for(total_len) * self.page_size - len(req.slots)
        if need <= 0:
            return True
        slots = self.allocator.alloc(need)
        if slots is None and self.tree is not None:
            self.evict(need - self.allocator.num_free)
            slots = self.allocator.alloc(need)
        if slots is None:
            return False
        req.slots.extend(slots)
        return True

    def evict(self, num_tokens: int) -> int:
        if self.tree is None or num_tokens <= 0:
            return 0
        n = self.tree.evict(num_tokens)
        self.evicted_tokens_total += n
        return n

    # --- caching and release --------------------------------------------------------------------------
    def cache_unfinished(self, req: Req) -> None:
        """After a prefill chunk: put the computed page-aligned prefix into the tree, keep the request's lock."""
        if self.tree is None:
            return
        new_len = self._insert(req, req.kv_len)
        m = self.tree.match_prefix(self._key(req.fill_ids[:new_len], req.tenant))
        assert m.matched_len == new_len, "tree lost what was just inserted"
        self.tree.lock(m.last_node)
        if req.last_node is not None:
            self.tree.unlock(req.last_node)
        if req.slots[:new_len] != m.slots:
            req.table_len = 0  # the row must be rewritten with the tree's slots
        req.slots[:new_len] = m.slots
        req.cached_len, req.last_node = new_len, m.last_node

    def release(self, req: Req) -> None:
        """Finished or retracted: cache what was computed, give back the rest and the row."""
        if self.tree is not None:
            kept = self._insert(req, req.kv_len)
            if req.last_node is not None:
                self.tree.unlock(req.last_node)
        else:
            kept = 0
        # Whole pages past the inserted prefix go back to the free list (the tree owns [0, kept)).
        self.allocator.free(req.slots[kept:])
        self._free_rows.append(req.req_pool_idx)
        req.slots, req.req_pool_idx, req.last_node = [], None, None
        req.kv_len = req.cached_len = req.table_len = 0

    def _insert(self, req: Req, kv_len: int) -> int:
        """Insert fill_ids[:aligned kv_len]; free the request's own slots the tree already had. Returns the length."""
        n = self.aligned(kv_len)
        if n <= req.cached_len:
            return req.cached_len
        seg = req.segments
        boundaries = seg.boundaries if seg else ()
        seg_ids = dict(seg.segment_ids) if seg else None
        present = self.tree.insert(self._key(req.fill_ids[:n], req.tenant), req.slots[:n], boundaries, seg_ids)
        if present > req.cached_len:
            # Someone cached the same tokens meanwhile: the tree keeps its copy, ours are duplicates.
            self.allocator.free(req.slots[req.cached_len:present])
        return n

    def check_integrity(self, live_reqs: list[Req]) -> None:
        self.allocator.check_integrity()
        free = self.allocator.free_slot_set()
        owned: list[int] = []
        if self.tree is not None:
            owned.extend(self.tree.check_integrity(free_slots=free))
        for r in live_reqs:
            owned.extend(r.slots[r.cached_len:])
        assert len(owned) == len(set(owned)), "a slot is owned twice"
        assert not (set(owned) & free), "a free slot is also owned"
        assert len(owned) + len(free) == self.capacity, (
            f"slot leak: owned {len(owned)} + free {len(free)} != capacity {self.capacity}")
        assert len(self._free_rows) + sum(r.req_pool_idx is not None for r in live_reqs) == self.max_reqs
