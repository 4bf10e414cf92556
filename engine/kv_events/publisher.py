"""ZMQ publisher of KV-event batches, wire-compatible with vLLM's ZmqEventPublisher.

PUB socket: each batch goes out as three frames (topic, seq, payload): the topic bytes, an 8-byte big-endian
sequence number (0, 1, 2, ... per publisher) and the msgpack EventBatch (events.py).
Replay ROUTER socket (optional): a subscriber that saw a gap sends the 8-byte big-endian first sequence number
it wants behind an empty delimiter frame (so the ROUTER sees identity, b"", seq); it gets back (b"", seq,
payload) for every buffered batch from there on, then (b"", -1 as 8 signed bytes, b""). Use a DEALER socket
to read them all (send_multipart([b"", seq])): a REQ socket takes only the first reply.

publish() only queues; one background thread owns both sockets (zmq sockets are not thread-safe), sends in
order and answers replay requests between sends. Sockets are bound or connected in the constructor, so a bad
or busy endpoint fails at startup, not later.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import zmq

from engine.kv_events.collector import KVEventCollector
from engine.kv_events.config import KVEventsConfig
from engine.kv_events.events import EventBatch, encode_batch

logger = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)
_SHUTDOWN = object()


def _binds(endpoint: str) -> bool:
    """vLLM's rule: the stable side binds (wildcard host, ipc, inproc); any other address is connected to."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class ZmqEventPublisher:
    def __init__(self, config: KVEventsConfig, data_parallel_rank: int = 0):
        self.config = config
        self.data_parallel_rank = data_parallel_rank
        self._ctx = zmq.Context.instance()
        self._topic = config.topic.encode()
        self._queue: queue.Queue = queue.Queue(maxsize=config.max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._pub = self._ctx.socket(zmq.PUB)
        self._replay = None
        try:
            self._pub.setsockopt(zmq.SNDHWM, config.hwm)
            (self._pub.bind if _binds(config.endpoint) else self._pub.connect)(config.endpoint)
            if config.replay_endpoint is not None:
                self._replay = self._ctx.socket(zmq.ROUTER)
                self._replay.bind(config.replay_endpoint)
        except zmq.ZMQError as e:
            self._close_sockets()
            raise ValueError(f"kv_events_config: cannot open {config.endpoint} / {config.replay_endpoint}: {e}") from None
        self.published = 0  # batches sent so far (read by stats; written by the thread)
        self._thread = threading.Thread(target=self._run, name="kv-events-publisher", daemon=True)
        self._thread.start()

    def publish(self, batch: EventBatch) -> None:
        """Queue one batch (stamped with this publisher's data-parallel rank if it has none)."""
        if batch.data_parallel_rank is None:
            batch.data_parallel_rank = self.data_parallel_rank
        self._queue.put(batch)

    def shutdown(self, timeout: float = 2.0) -> None:
        """Send what is queued (up to `timeout`), then close the sockets."""
        if not self._thread.is_alive():
            return
        self._queue.put(_SHUTDOWN)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("kv events: publisher thread still busy after %.1fs; dropping the rest", timeout)

    def _run(self) -> None:
        seq = 0
        try:
            while True:
                if self._replay is not None and self._replay.poll(0):
                    self._serve_replay()
                try:
                    batch = self._queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                if batch is _SHUTDOWN:
                    break
                payload = encode_batch(batch)
                self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload))
                self._buffer.append((seq, payload))
                seq += 1
                self.published = seq
        except Exception:  # a publisher failure must not take the engine down; consumers see the seq gap
            logger.exception("kv events: publisher thread failed; no more events are published")
        finally:
            self._close_sockets(linger_ms=500)

    def _serve_replay(self) -> None:
        frames = self._replay.recv_multipart()
        if len(frames) != 3 or len(frames[2]) != 8:
            logger.warning("kv events: ignoring a malformed replay request (%d frames)", len(frames))
            return
        client, _, start = frames
        first = int.from_bytes(start, "big")
        for seq, payload in list(self._buffer):
            if seq >= first:
                self._replay.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
        self._replay.send_multipart((client, b"", END_SEQ, b""))

    def _close_sockets(self, linger_ms: int = 0) -> None:
        for sock in (self._pub, self._replay):
            if sock is not None and not sock.closed:
                sock.close(linger=linger_ms)




class KVEventStream:
    """What the engine step holds: the tree's collector and the publisher. After each step (and flush_cache)
    `flush()` publishes the step's events as one EventBatch; nothing is sent for a step that changed nothing."""

    def __init__(self, collector: KVEventCollector, publisher: ZmqEventPublisher):
        self.collector = collector
        self.publisher = publisher

    def flush(self) -> int:
        """Publish the queued events as one batch; returns how many."""
        events = self.collector.take_events()
        if events:
            self.publisher.publish(EventBatch(ts=time.time(), events=events))
        return len(events)

    def close(self) -> None:
        self.flush()
        self.publisher.shutdown()


def open_kv_event_stream(config: KVEventsConfig | None, tree) -> KVEventStream | None:
    """Attach a collector to `tree` (a RadixCache, or None when the cache is off) and open the publisher; None
    when events are off or there is no tree to report on."""
    if config is None or not config.enabled:
        return None
    if tree is None:
        logger.warning("kv events: --disable-radix-cache is set, so no block is ever cached; not publishing")
        return None
    collector = KVEventCollector(tree.page_size)
    publisher = ZmqEventPublisher(config)
    tree.set_listener(collector)
    return KVEventStream(collector, publisher)
