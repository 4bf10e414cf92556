"""Trace format: JSONL round trip, Mooncake reader, validation, block hashing, recording, generators."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from bench.cachesim.traces import (BlockHasher, TraceRequest, block_hashes, open_trace, read_mooncake, read_trace,
                          record_request, trace_header, write_trace)
from bench.tracegen import arrival_times, chat_trace, icl_trace, loghub_icl_trace, shared_prompt_trace

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")


def full_request(**over) -> TraceRequest:
    fields = dict(timestamp=1.25, input_length=9, output_length=3, token_ids=list(range(10, 19)),
                  segments=[2, 5, 7], example_ids=["a", "b"], example_templates=["T <*>", "U"],
                  session_id="s1", app_id="app")
    fields.update(over)
    return TraceRequest(**fields)


def test_write_read_round_trip(tmp_path):
    reqs = [full_request(), TraceRequest(0.5, 40, 0, hash_ids=[7, 8, 9]), full_request(timestamp=3.0)]
    path = str(tmp_path / "t.jsonl")
    assert write_trace(path, reqs, block_size=16, meta={"kind": "test"}) == 3
    trace = read_trace(path)
    assert trace.block_size == 16 and trace.meta == {"kind": "test"}
    assert trace.requests == reqs
    assert [r.timestamp for r in trace.sorted_requests()] == [0.5, 1.25, 3.0]
    assert read_trace(path, limit=2).requests == reqs[:2]


def test_headerless_file_reads_and_takes_the_given_block_size(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(TraceRequest(0.0, 3, 1, hash_ids=[1]).to_json()) + "\n\n")
    head, requests = open_trace(str(path), block_size=8)
    assert head.block_size == 8 and [r.hash_ids for r in requests] == [[1]]


MOONCAKE_LINES = [
    {"timestamp": 0, "input_length": 1100, "output_length": 12, "hash_ids": [0, 1, 2]},
    {"timestamp": 250, "input_length": 600, "output_length": 3, "hash_ids": [0, 3]},
    {"timestamp": 1500, "input_length": 1030, "output_length": 40, "hash_ids": [0, 1, 4], "extra": "ignored"},
]


def test_mooncake_reader(tmp_path):
    path = tmp_path / "mooncake.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in MOONCAKE_LINES))
    trace = read_mooncake(str(path))
    assert trace.block_size == 512
    assert [r.timestamp for r in trace.requests] == [0.0, 0.25, 1.5]  # ms -> s
    assert [r.hash_ids for r in trace.requests] == [x["hash_ids"] for x in MOONCAKE_LINES]
    assert [(r.input_length, r.output_length) for r in trace.requests] == [(1100, 12), (600, 3), (1030, 40)]
    # and it survives our writer/reader unchanged
    out = str(tmp_path / "ours.jsonl")
    write_trace(out, trace.requests, block_size=trace.block_size)
    again = read_trace(out)
    assert again.requests == trace.requests and again.block_size == 512


def test_mooncake_reader_names_missing_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"timestamp": 0, "input_length": 5, "output_length": 1}) + "\n")
    with pytest.raises(ValueError, match=r"line 1\.hash_ids: missing"):
        read_mooncake(str(path))


@pytest.mark.parametrize("change, field", [
    (dict(input_length=8), "input_length"),
    (dict(hash_ids=[1, 2]), "token_ids"),  # both prefix identities
    (dict(segments=[2, 2, 7]), "segments"),
    (dict(example_ids=["a"]), "example_ids"),
    (dict(output_length=-1), "output_length"),
    (dict(timestamp="soon"), "timestamp"),
])
def test_validation_names_the_field(change, field):
    with pytest.raises(ValueError, match=rf"\.{field}:"):
        full_request(**change).validate()


def test_reader_names_line_and_unknown_field(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(trace_header(4) + json.dumps({**full_request().to_json(), "prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"line 2\.prompt: unknown field"):
        read_trace(str(path))


def test_block_hashes_are_prefix_chained():
    a = list(range(100, 140))
    b = a[:20] + [7] + a[21:]
    ha, hb = block_hashes(a, 8), block_hashes(b, 8)
    assert len(ha) == 5 and len(block_hashes(a[:33], 8)) == 5  # the partial last block gets an id too
    assert ha[:2] == hb[:2]  # blocks before the change agree
    assert all(x != y for x, y in zip(ha[2:], hb[2:]))  # and every later one differs, even identical blocks
    assert block_hashes(a, 8, salt=b"k") != ha
    assert all(0 <= h < 2 ** 63 for h in ha)


def test_block_hasher_incremental_equals_one_shot():
    ids = list(range(1000, 1057))
    h = BlockHasher(16)
    prev = 0
    for cut in (5, 16, 37, 57):
        h.extend(ids[prev:cut])
        prev = cut
        assert h.hashes() == block_hashes(ids[:cut], 16)


def test_record_request_keeps_no_raw_ids_or_text():
    fh = io.StringIO()
    fh.write(trace_header(4))
    ids = [5, 6, 7, 8, 9, 10, 11]
    record_request(fh, timestamp=2.0, token_ids=ids, output_length=4, block_size=4, segments=[2, 6],
                   example_ids=["e1"], example_templates=["user <*> logged in"], session_id="s")
    line = fh.getvalue().splitlines()[1]
    assert "logged" not in line and "token_ids" not in line
    req = TraceRequest.from_json(json.loads(line))
    assert req.hash_ids == block_hashes(ids, 4) and req.input_length == 7 and req.output_length == 4
    assert req.segments == [2, 6] and req.example_ids == ["e1"] and len(req.example_templates[0]) == 16


def test_arrivals_poisson_and_bursty():
    rng = np.random.default_rng(0)
    poisson = np.diff(arrival_times(20000, 10.0, rng))
    bursty = np.diff(arrival_times(20000, 10.0, rng, "bursty", burstiness=4.0))
    for gaps in (poisson, bursty):
        assert np.all(gaps >= 0) and abs(gaps.mean() - 0.1) < 0.02
    assert abs(poisson.std() / poisson.mean() - 1.0) < 0.1
    assert bursty.std() / bursty.mean() > 2.5
    with pytest.raises(ValueError, match="arrival"):
        arrival_times(3, 1.0, rng, "weekly")


@pytest.mark.parametrize("gen", [chat_trace, shared_prompt_trace, icl_trace])
def test_generators_are_deterministic_and_sorted(gen):
    a, b, c = gen(300, seed=3), gen(300, seed=3), gen(300, seed=4)
    assert a == b and a != c
    assert len(a) == 300 and all(x.timestamp <= y.timestamp for x, y in zip(a, a[1:]))
    for r in a:
        r.validate()


def test_chat_turns_extend_the_session_history():
    reqs = chat_trace(400, seed=1)
    sessions: dict[str, list[TraceRequest]] = {}
    for r in reqs:
        sessions.setdefault(r.session_id, []).append(r)
    multi = [turns for turns in sessions.values() if len(turns) > 1]
    assert multi
    for turns in multi:
        for prev, cur in zip(turns, turns[1:]):
            # the next prompt = previous prompt + its answer (output_length tokens) + a new user message
            assert cur.token_ids[:prev.input_length] == prev.token_ids
            assert cur.input_length > prev.input_length + prev.output_length
    hashed = chat_trace(400, seed=1, block_size=16)
    assert [h.hash_ids for h in hashed] == [block_hashes(r.token_ids, 16) for r in reqs]


def test_icl_requests_carry_consistent_examples():
    reqs = icl_trace(200, seed=0, k=4, examples_per_template=2)
    blocks: dict[str, list[int]] = {}
    for r in reqs:
        assert len(r.segments) == 5 and len(r.example_ids) == len(set(r.example_ids)) == 4
        for eid, a, b in zip(r.example_ids, r.segments, r.segments[1:]):
            assert blocks.setdefault(eid, r.token_ids[a:b]) == r.token_ids[a:b]  # an example is always the same
        assert r.token_ids[:r.segments[0]] == reqs[0].token_ids[:reqs[0].segments[0]]  # shared instruction
    templates = {}
    for r in reqs:
        templates.update(zip(r.example_ids, r.example_templates))
    assert len(set(templates.values())) < len(templates)  # some examples share a template


def test_loghub_icl_trace_uses_the_engine_layout(tiny_model_dir):
    from engine.models.loader import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    reqs = loghub_icl_trace(FIXTURES, ["HDFS", "Apache"], tok, seed=0, k=3, max_lines=20)
    assert {r.app_id for r in reqs} == {"HDFS", "Apache"}
    assert reqs == loghub_icl_trace(FIXTURES, ["HDFS", "Apache"], tok, seed=0, k=3, max_lines=20)
    for r in reqs:
        r.validate()
        assert len(r.example_ids) == len(r.segments) - 1 >= 1
        for template, a, b in zip(r.example_templates, r.segments, r.segments[1:]):
            # each example segment holds exactly its block: "Log message: `..`\nLog template: `<template>`\n"
            text = tok.decode(r.token_ids[a:b])
            assert text.startswith("Log message: `") and text.endswith(f"Log template: `{template}`\n")


def test_bench_traces_reexports_the_engines_writer():
    import engine.trace_recorder as rec
    import bench.cachesim.traces as bt

    assert bt.block_hashes is rec.block_hashes and bt.record_request is rec.record_request
    assert bt.BlockHasher is rec.BlockHasher and bt.trace_header is rec.trace_header


def test_engine_records_live_traffic_as_a_replayable_hash_trace(tiny_model_dir, make_engine, tmp_path):
    from bench.cachesim.simulate import load_units, simulate
    from bench.cachesim.replay import CacheReplay
    from engine.pair.render import example_id
    from engine.trace_recorder import template_hash

    path = str(tmp_path / "live.jsonl")
    eng = make_engine(tiny_model_dir, trace_file=path, trace_block_size=4)
    greedy = {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True}
    p1 = [10 + i % 90 for i in range(41)]
    p2 = p1[:32] + [200 + i for i in range(13)]  # shares 32 tokens = 8 blocks of 4 with p1
    r1 = eng.generate(input_ids=p1, sampling_params=greedy)
    stream = eng.generate(input_ids=[7] * 20, sampling_params={"max_new_tokens": 50}, stream=True)
    next(stream)
    stream.close()  # aborted mid-generation: skipped, not recorded
    r2 = eng.generate(input_ids=p2, sampling_params=greedy)
    examples = [{"input": "Received block blk_1 of size 9", "output": "Received block <*> of size <*>"},
                {"input": "Deleting block blk_2 file /x", "output": "Deleting block <*> file <*>"}]
    icl = {"instruction": "Parse the log.", "query": "Received block blk_7 of size 42", "examples": examples,
           "refine": "native"}
    r3 = eng.generate(icl=icl, sampling_params=greedy)
    assert eng.recorder.recorded == 3 and eng.recorder.skipped == 1

    text = open(path, encoding="utf-8").read()
    for raw in ("token_ids", "Received block", "Parse the log", "<*>"):
        assert raw not in text  # hashes only: no ids, no prompt or template text
    trace = read_trace(path)
    assert trace.block_size == 4 and trace.meta["source"] == "live"
    t1, t2, t3 = trace.requests  # finish order, which is arrival order here
    assert 0.0 <= t1.timestamp <= t2.timestamp <= t3.timestamp
    for rec, prompt, res in ((t1, p1, r1), (t2, p2, r2)):
        assert rec.token_ids is None and rec.hash_ids == block_hashes(prompt, 4)
        assert (rec.input_length, rec.output_length) == (len(prompt), res["meta_info"]["completion_tokens"]) == (
            len(prompt), 3)
        assert rec.segments is None and rec.example_ids is None
    assert t1.hash_ids[:8] == t2.hash_ids[:8] and t1.hash_ids[8] != t2.hash_ids[8]
    # The ICL request: the prompt the engine ran (after PAIR), one segment per example, ids and template hashes.
    assert t3.input_length == r3["meta_info"]["prompt_tokens"] and t3.output_length == 3
    order = r3["meta_info"]["icl_order"]
    ran = [examples[i] for i in order]
    assert t3.example_ids == [example_id(e["input"], e["output"]) for e in ran]
    assert t3.example_templates == [template_hash(e["output"]) for e in ran]
    assert len(t3.segments) == 3 and t3.segments[-1] < t3.input_length

    units = load_units(path, "pairserve", 4, "none")
    hits = list(CacheReplay(units, 4096).run().per_request_hits)
    assert hits[:2] == [0, 32]  # the shared prefix is a hit in the replay, as in the engine
    assert r2["meta_info"]["cached_tokens"] >= 32
    result = simulate(units, [64, 4096], ["lru", "segment", "belady"])
    assert len(result["results"]) == 6 and result["requests"] == 3


def test_recorder_validates_and_never_fails_a_request(tmp_path):
    from engine.trace_recorder import TraceRecorder

    with pytest.raises(ValueError, match="trace_block_size"):
        TraceRecorder(str(tmp_path / "x.jsonl"), block_size=0)
    rec = TraceRecorder(str(tmp_path / "t.jsonl"), block_size=2, clock=lambda: 100.0)
    rec.record(arrival_time=101.5, token_ids=[1, 2, 3], output_length=2)
    rec.record(arrival_time=102.0, token_ids=[1, 2, 3], output_length=1, segments=[1, 9], example_ids=["e"])
    rec.close()
    rec.record(arrival_time=103.0, token_ids=[4], output_length=1)  # after close: dropped
    rec.close()
    trace = read_trace(str(tmp_path / "t.jsonl"))
    assert [(r.timestamp, r.hash_ids) for r in trace.requests] == [(1.5, block_hashes([1, 2, 3], 2))]
    assert (rec.recorded, rec.skipped, rec.closed) == (1, 1, True)
