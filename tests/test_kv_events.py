"""KV events (vLLM's format): a subscriber that replays them holds exactly the tree's cached blocks.

The reference is the tree itself: its cached pages re-hashed from node keys (tests/kv_event_subscriber.py),
never the collector's own bookkeeping. Frames are decoded with vLLM-shaped msgspec Structs."""
from __future__ import annotations

import random
import time

import pytest
import zmq

from engine.kv_events import (AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, KVEventCollector, block_hash,
                              decode_batch, encode_batch, parse_kv_events_config)
from engine.radix_cache import RadixCache
from engine.slot_allocator import SlotAllocator
from tests.kv_event_subscriber import DECODER, DECODER_V010, BlockSetReplica, tree_block_hashes


def _mixed_workload(tree: RadixCache, alloc: SlotAllocator, rng: random.Random, steps: int, on_step) -> int:
    """Requests sharing a few prefixes: match (splits), insert, lock/unlock, evict under a small pool, reset."""
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(4, 40))] for _ in range(6)]
    evicted = 0
    for step in range(steps):
        key = list(rng.choice(prefixes))[: rng.randrange(1, 40)] + [rng.randrange(50) for _ in range(rng.randrange(0, 30))]
        m = tree.match_prefix(key, record_hit=True)
        tree.lock(m.last_node)
        need = len(key) - m.matched_len
        slots = alloc.alloc(alloc.pages_for(need) * alloc.page_size) if need else []
        if slots is None:
            evicted += tree.evict(need + alloc.page_size * 4)
            slots = alloc.alloc(alloc.pages_for(need) * alloc.page_size)
        if slots is not None:
            full = m.slots + slots[:need]
            present = tree.insert(key, full, boundaries=[len(key) // 2])
            alloc.free(full[m.matched_len : present])  # duplicates the tree already held
            aligned = len(key) - len(key) % tree.page_size
            alloc.free(slots[aligned - m.matched_len :] if aligned > m.matched_len else slots)
        tree.unlock(m.last_node)
        if step % 97 == 96:
            tree.reset()
        on_step(step)
    return evicted


@pytest.mark.parametrize("page_size", [1, 4])
def test_subscriber_replay_rebuilds_the_tree_blocks(page_size):
    rng = random.Random(page_size)
    alloc = SlotAllocator(num_slots=page_size * 48, page_size=page_size)
    tree = RadixCache(page_size, alloc.free)
    collector = KVEventCollector(page_size)
    tree.set_listener(collector)
    replica_new, replica_old = BlockSetReplica(block_hash), BlockSetReplica(block_hash)
    kinds = set()

    def on_step(step):
        events = collector.take_events()
        kinds.update(type(e).__name__ for e in events)
        payload = encode_batch(EventBatch(ts=time.time(), events=events, data_parallel_rank=0))
        replica_new.apply(DECODER.decode(payload))
        replica_old.apply(DECODER_V010.decode(payload))
        expected = tree_block_hashes(tree, block_hash)
        assert set(replica_new.blocks) == expected, f"step {step}: subscriber diverged from the tree"
        assert set(replica_old.blocks) == expected

    evicted = _mixed_workload(tree, alloc, rng, 400, on_step)
    tree.check_integrity()
    assert evicted > 0 and kinds == {"BlockStored", "BlockRemoved", "AllBlocksCleared"}
    assert collector.block_hashes() == tree_block_hashes(tree, block_hash)


def test_wire_shape_is_vllm_array_like():
    batch = EventBatch(ts=1.5, events=[BlockStored([7, 8], None, [1, 2, 3, 4], 2), BlockRemoved([7]),
                                       AllBlocksCleared()], data_parallel_rank=0)
    import msgpack

    assert msgpack.unpackb(encode_batch(batch)) == [
        1.5, [["BlockStored", [7, 8], None, [1, 2, 3, 4], 2, None, "GPU", None], ["BlockRemoved", [7], "GPU"],
              ["AllBlocksCleared"]], 0]
    assert decode_batch(encode_batch(batch)) == batch
    decoded = DECODER.decode(encode_batch(batch))
    assert decoded.events[0].block_hashes == [7, 8] and decoded.data_parallel_rank == 0


def test_block_hash_chains_on_the_whole_prefix():
    a = block_hash(None, [1, 2])
    assert block_hash(a, [3, 4]) != block_hash(block_hash(None, [9, 2]), [3, 4])
    assert block_hash(None, [1, 2]) == a and 0 <= a < 2**63


@pytest.mark.parametrize("text, key", [
    ("{", "JSON"), ("[1]", "object"), ('{"publisher": "kafka"}', "publisher"), ('{"endpoint": "5557"}', "endpoint"),
    ('{"hwm": 0}', "hwm"), ('{"bogus": 1}', "bogus"), ('{"enable_kv_cache_events": "yes"}', "enable_kv_cache_events")])
def test_bad_config_names_the_key(text, key):
    from engine.config import ServerArgs

    with pytest.raises(ValueError, match=f"kv_events_config.*{key}"):
        ServerArgs(kv_events_config=text).validate()


def test_config_defaults_and_off_switches():
    assert parse_kv_events_config("{}").enabled
    assert not parse_kv_events_config('{"publisher": "null"}').enabled
    assert not parse_kv_events_config('{"enable_kv_cache_events": false}').enabled


def _recv_batches(sub, replica, until, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    seqs = []
    while not until() and time.monotonic() < deadline:
        if sub.poll(50):
            topic, seq, payload = sub.recv_multipart()
            assert topic == b"kv"
            seqs.append(int.from_bytes(seq, "big"))
            replica.apply(DECODER.decode(payload))
    return seqs


def test_engine_publishes_over_zmq_with_replay(make_engine, tiny_model_dir, tmp_path):
    endpoint, replay = f"ipc://{tmp_path}/kv.pub", f"ipc://{tmp_path}/kv.replay"
    cfg = f'{{"endpoint": "{endpoint}", "replay_endpoint": "{replay}", "topic": "kv"}}'
    ctx = zmq.Context.instance()
    eng = make_engine(tiny_model_dir, kv_events_config=cfg, kv_cache_tokens=160, page_size=4,
                      max_running_requests=3)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv")
    sub.connect(endpoint)
    time.sleep(0.3)  # PUB drops frames sent before the subscription arrives: the replay below covers that case
    live = BlockSetReplica(block_hash)
    rng = random.Random(0)
    shared = ["alpha beta gamma delta epsilon " * 3, "one two three four five six " * 3]
    prompts = [rng.choice(shared) + f"req {i} " + "x" * rng.randrange(0, 30) for i in range(16)]
    eng.generate(prompts, {"max_new_tokens": 4, "temperature": 0})
    tree = eng.loop.scheduler.kv.tree
    expected = eng._call(lambda: tree_block_hashes(tree, block_hash))
    assert eng.loop.scheduler.kv.evicted_tokens_total > 0 or tree.evicted_tokens_total > 0, "no eviction exercised"
    seqs = _recv_batches(sub, live, lambda: set(live.blocks) == expected)
    assert set(live.blocks) == expected and seqs == list(range(seqs[0], seqs[0] + len(seqs)))

    req = ctx.socket(zmq.DEALER)  # a late subscriber recovers everything from seq 0
    req.connect(replay)
    req.send_multipart([b"", (0).to_bytes(8, "big")])
    replayed = BlockSetReplica(block_hash)
    replayed_seqs = []
    while True:
        assert req.poll(5000), "no replay answer"
        empty, seq, payload = req.recv_multipart()
        if int.from_bytes(seq, "big", signed=True) == -1:
            break
        replayed_seqs.append(int.from_bytes(seq, "big"))
        replayed.apply(DECODER.decode(payload))
    assert replayed_seqs == list(range(len(replayed_seqs))) and replayed_seqs[-1] == seqs[-1]
    assert set(replayed.blocks) == expected
    eng.flush_cache()
    _recv_batches(sub, live, lambda: not live.blocks)
    assert not live.blocks
    sub.close(linger=0)
    req.close(linger=0)
