"""vLLM's KV-cache event records and their wire form (pure Python; msgpack only).

The wire shape is what vLLM's `vllm.distributed.kv_events` sends: msgspec Structs with array_like=True and
omit_defaults=True, so each record is a msgpack ARRAY of its fields in declaration order, an event array
starting with its tag (the class name), and trailing fields left at their defaults are omitted:

    EventBatch       [ts, [event, ...], data_parallel_rank]
    BlockStored      ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
                      lora_name]
    BlockRemoved     ["BlockRemoved", block_hashes, medium]
    AllBlocksCleared ["AllBlocksCleared"]

Decoders built from vLLM's Structs (older ones without `lora_name` included: msgspec ignores extra trailing
array elements) and Dynamo / llm-d subscribers read these frames. Block hashes are non-negative ints below
2**63, so decoders that take them as int64 or uint64 both accept them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import msgpack

MEDIUM_PRIMARY = "GPU"  # vLLM's name for the engine's primary KV pool (its CPU backend sends it too)


@dataclass(frozen=True)
class BlockStored:
    """Blocks newly cached, in path order: block_hashes[0]'s parent is parent_block_hash (None at the root),
    each later block's parent is the one before it. token_ids: block_size ids per block, concatenated."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = MEDIUM_PRIMARY
    lora_name: str | None = None

    def to_wire(self) -> list:
        return ["BlockStored", self.block_hashes, self.parent_block_hash, self.token_ids, self.block_size,
                self.lora_id, self.medium, self.lora_name]


@dataclass(frozen=True)
class BlockRemoved:
    block_hashes: list[int]
    medium: str | None = MEDIUM_PRIMARY

    def to_wire(self) -> list:
        return ["BlockRemoved", self.block_hashes, self.medium]


@dataclass(frozen=True)
class AllBlocksCleared:
    def to_wire(self) -> list:
        return ["AllBlocksCleared"]


KVCacheEvent = Union[BlockStored, BlockRemoved, AllBlocksCleared]


@dataclass
class EventBatch:
    ts: float  # wall-clock seconds (time.time()) when the engine step that made the events ended
    events: list[KVCacheEvent] = field(default_factory=list)
    data_parallel_rank: int | None = None

    def to_wire(self) -> list:
        wire = [self.ts, [e.to_wire() for e in self.events]]
        if self.data_parallel_rank is not None:  # omit_defaults: a trailing default is left out
            wire.append(self.data_parallel_rank)
        return wire


def encode_batch(batch: EventBatch) -> bytes:
    return msgpack.packb(batch.to_wire(), use_bin_type=True)


def decode_batch(payload: bytes) -> EventBatch:
    """Inverse of encode_batch (also reads vLLM's own frames). ValueError on an unknown tag or bad shape."""
    wire = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if not isinstance(wire, list) or len(wire) < 2 or not isinstance(wire[1], list):
        raise ValueError(f"not an EventBatch array: {wire!r:.200}")
    events = [_event_from_wire(e) for e in wire[1]]
    return EventBatch(ts=float(wire[0]), events=events, data_parallel_rank=wire[2] if len(wire) > 2 else None)


def _event_from_wire(item: list) -> KVCacheEvent:
    if not isinstance(item, list) or not item:
        raise ValueError(f"not a tagged event array: {item!r:.200}")
    tag, fields = item[0], item[1:]
    if tag == "BlockStored":
        if len(fields) < 4:
            raise ValueError(f"BlockStored needs at least 4 fields (got {len(fields)})")
        padded = fields + [None] * max(0, 7 - len(fields))
        return BlockStored(block_hashes=list(padded[0]), parent_block_hash=padded[1], token_ids=list(padded[2]),
                           block_size=padded[3], lora_id=padded[4], medium=padded[5], lora_name=padded[6])
    if tag == "BlockRemoved":
        return BlockRemoved(block_hashes=list(fields[0]), medium=fields[1] if len(fields) > 1 else None)
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    raise ValueError(f"unknown KV event tag {tag!r}")
