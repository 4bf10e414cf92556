"""KV-cache events in vLLM's format (`--kv-events-config`): the radix tree's listener that records them
(collector.py), their wire form (events.py), the config (config.py) and the ZMQ publisher (publisher.py,
imported on its own: it pulls in zmq)."""
from engine.kv_events.collector import KVEventCollector, block_hash
from engine.kv_events.config import KVEventsConfig, parse_kv_events_config
from engine.kv_events.events import (AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, decode_batch,
                                     encode_batch)

__all__ = ["AllBlocksCleared", "BlockRemoved", "BlockStored", "EventBatch", "KVEventCollector", "KVEventsConfig",
           "block_hash", "decode_batch", "encode_batch", "parse_kv_events_config"]
