"""`--kv-events-config JSON`: vLLM's KVEventsConfig keys, parsed and checked without I/O.

    {"publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558", "topic": "kv-events",
     "buffer_steps": 10000, "hwm": 100000, "max_queue_size": 100000, "enable_kv_cache_events": true}

Every key is optional. Passing the flag turns events on (`enable_kv_cache_events` defaults to true here; false,
or `"publisher": "null"`, keeps them off). As in vLLM, an endpoint with `*`, `::`, `ipc://` or `inproc://` is
bound and any other is connected to (the stable side binds); the replay endpoint, a ROUTER socket, is bound.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

PUBLISHERS = ("zmq", "null")
_ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")


@dataclass(frozen=True)
class KVEventsConfig:
    enable_kv_cache_events: bool = True
    publisher: str = "zmq"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000  # batches kept for replay requests
    hwm: int = 100_000  # PUB socket high-water mark
    max_queue_size: int = 100_000  # batches queued for the publisher thread before publish() blocks
    topic: str = ""

    @property
    def enabled(self) -> bool:
        return self.enable_kv_cache_events and self.publisher != "null"


def parse_kv_events_config(text: str | None) -> KVEventsConfig | None:
    """None for None; else the config, or ValueError naming kv_events_config and the bad key."""
    if text is None:
        return None
    try:
        raw = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as e:
        raise ValueError(f"kv_events_config: not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"kv_events_config: must be a JSON object (got {text!r:.100})")
    known = KVEventsConfig.__dataclass_fields__
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"kv_events_config: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    cfg = KVEventsConfig(**raw)
    if not isinstance(cfg.enable_kv_cache_events, bool):
        raise ValueError("kv_events_config: enable_kv_cache_events must be true or false")
    if cfg.publisher not in PUBLISHERS:
        raise ValueError(f"kv_events_config: publisher must be one of {PUBLISHERS} (got {cfg.publisher!r})")
    for key in ("endpoint", "replay_endpoint"):
        value = getattr(cfg, key)
        if value is None and key == "replay_endpoint":
            continue
        if not isinstance(value, str) or not value.startswith(_ENDPOINT_SCHEMES):
            raise ValueError(f"kv_events_config: {key} must be a tcp://, ipc:// or inproc:// address (got {value!r})")
    for key in ("buffer_steps", "hwm", "max_queue_size"):
        value = getattr(cfg, key)
        if type(value) is not int or value < 1:
            raise ValueError(f"kv_events_config: {key} must be an integer >= 1 (got {value!r})")
    if not isinstance(cfg.topic, str):
        raise ValueError(f"kv_events_config: topic must be a string (got {cfg.topic!r})")
    return cfg
