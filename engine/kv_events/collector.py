"""Radix-tree changes → vLLM KV events, at the tree's page granularity (one block = one page).

`KVEventCollector` is the tree's listener (engine/radix_cache/listener.py). It names each cached page by a
block hash chained to its parent's, like vLLM's prefix-caching hashes: hash(parent block hash, the page's
token ids), so a block's hash identifies its whole prefix, and equal prefixes on different replicas get equal
hashes. It keeps the hashes of every cached node's pages (one int per page) so splits, which move node
boundaries but store or drop nothing, emit no event, and an evicted node's BlockRemoved names exactly the
hashes its BlockStored did.

Events queue in tree order and the engine step takes them (`take_events`) to publish one EventBatch per step.
A subscriber that applies them in order holds exactly the tree's set of cached blocks after every batch.
"""
from __future__ import annotations

import hashlib
from array import array
from typing import Sequence

from engine.kv_events.events import AllBlocksCleared, BlockRemoved, BlockStored, KVCacheEvent
from engine.radix_cache import TreeNode

_ROOT_PARENT = b"pairserve-kv-root"  # stands in for the (absent) parent of a first block


def block_hash(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """Chained block hash in [0, 2**63): sha256 over the parent's hash and the block's token ids (uint32 LE)."""
    h = hashlib.sha256(_ROOT_PARENT if parent_hash is None else parent_hash.to_bytes(8, "big"))
    h.update(array("I", token_ids).tobytes())  # ids of real vocabularies fit uint32
    return int.from_bytes(h.digest()[:8], "big") >> 1


class KVEventCollector:
    """The radix tree's listener that records vLLM KV events (attach with tree.set_listener while empty)."""

    def __init__(self, page_size: int):
        if page_size < 1:
            raise ValueError(f"page_size: must be >= 1 (got {page_size})")
        self.block_size = page_size
        self._hashes: dict[int, list[int]] = {}  # node_id -> the block hash of each page of node.key
        self._events: list[KVCacheEvent] = []

    def __len__(self) -> int:
        """Events waiting for take_events()."""
        return len(self._events)

    @property
    def num_blocks(self) -> int:
        return sum(len(h) for h in self._hashes.values())

    def block_hashes(self) -> set[int]:
        """Hashes of every block the tree caches now (what a faithful subscriber must hold)."""
        return {h for hashes in self._hashes.values() for h in hashes}

    # --- CacheListener --------------------------------------------------------------------------------
    def on_insert(self, leaf: TreeNode) -> None:
        parent = leaf.parent
        parent_hash = None if parent.is_root else self._hashes[parent.node_id][-1]
        ps = self.block_size
        hashes, h = [], parent_hash
        for i in range(0, len(leaf.key), ps):
            h = block_hash(h, leaf.key[i : i + ps])
            hashes.append(h)
        self._hashes[leaf.node_id] = hashes
        self._events.append(BlockStored(block_hashes=hashes, parent_block_hash=parent_hash,
                                        token_ids=list(leaf.key), block_size=ps))

    def on_split(self, head: TreeNode, tail: TreeNode) -> None:
        hashes = self._hashes[tail.node_id]
        cut = len(head.key) // self.block_size
        self._hashes[head.node_id] = hashes[:cut]
        self._hashes[tail.node_id] = hashes[cut:]

    def on_remove(self, node: TreeNode) -> None:
        hashes = self._hashes.pop(node.node_id)
        last = self._events[-1] if self._events else None
        if isinstance(last, BlockRemoved):  # one eviction pass removes many leaves: one event for them all
            last.block_hashes.extend(hashes)
        else:
            self._events.append(BlockRemoved(block_hashes=list(hashes)))

    def on_clear(self) -> None:
        self._hashes.clear()
        self._events.append(AllBlocksCleared())

    # --- the engine step ------------------------------------------------------------------------------
    def take_events(self) -> list[KVCacheEvent]:
        """The events since the last call, in order; the queue is empty afterwards."""
        events, self._events = self._events, []
        return events
