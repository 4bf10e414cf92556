"""A KV-event subscriber for tests: decodes frames with vLLM-shaped msgspec Structs (the consumer side of the
wire format, written from vLLM's published field lists) and replays them into a set of cached block hashes.
Also the reference: the blocks a radix tree holds, recomputed from its node keys alone."""
from __future__ import annotations

from typing import Any

import msgspec


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None


class BlockStoredV010(KVCacheEvent, tag="BlockStored"):
    """vLLM 0.10's shape (no lora_name): extra trailing fields must be ignored by it."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


class KVEventBatchV010(EventBatch):
    events: list[BlockStoredV010 | BlockRemoved | AllBlocksCleared]


DECODER = msgspec.msgpack.Decoder(KVEventBatch)
DECODER_V010 = msgspec.msgpack.Decoder(KVEventBatchV010)


class BlockSetReplica:
    """Applies batches in order: the set of block hashes a router would believe the engine caches. Checks each
    BlockStored's chain as it goes (a parent that is not cached, or a hash stored twice, is a protocol error)."""

    def __init__(self, block_hash_fn):
        self.blocks: dict[int, tuple[int | None, tuple[int, ...]]] = {}  # hash -> (parent hash, token ids)
        self.block_hash_fn = block_hash_fn

    def apply(self, batch: KVEventBatch) -> None:
        for ev in batch.events:
            if isinstance(ev, (BlockStored, BlockStoredV010)):
                parent, bs = ev.parent_block_hash, ev.block_size
                assert parent is None or parent in self.blocks, "BlockStored under a parent that is not cached"
                assert len(ev.token_ids) == bs * len(ev.block_hashes)
                for i, h in enumerate(ev.block_hashes):
                    tokens = tuple(ev.token_ids[i * bs : (i + 1) * bs])
                    assert h == self.block_hash_fn(parent, tokens), "block hash not chained to its parent"
                    assert h not in self.blocks, "block stored twice"
                    self.blocks[h] = (parent, tokens)
                    parent = h
            elif isinstance(ev, BlockRemoved):
                for h in ev.block_hashes:
                    assert h in self.blocks, "removal of a block that is not cached"
                    del self.blocks[h]
            else:
                self.blocks.clear()


def tree_block_hashes(tree, block_hash_fn) -> set[int]:
    """Every page the tree caches, hashed from the root down by its path tokens alone."""
    ps = tree.page_size
    out: set[int] = set()
    stack = [(child, None) for child in tree.root.children.values()]
    while stack:
        node, parent_hash = stack.pop()
        h = parent_hash
        for i in range(0, len(node.key), ps):
            h = block_hash_fn(h, node.key[i : i + ps])
            out.add(h)
        stack.extend((child, h) for child in node.children.values())
    return out
