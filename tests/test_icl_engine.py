"""ICL requests through the Engine: PAIR meta per refine policy, segmented == whole-prompt tokenization for the
InferLog layout (tiny and demo tokenizers, every fixture system), refine=none == the plain rendered prompt,
native's hit rate vs the table's on a fixture stream, and malformed `icl` rejected while the engine serves on."""
from __future__ import annotations

import os
import re

import pytest

from engine.pair.render import SegmentEncoder, render_icl, render_messages, validate_icl
from logparse import LOGHUB_SYSTEMS, build_stream, load_system, to_icl

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")
GREEDY = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}


def fixture_stream(system: str):
    return build_stream(load_system(FIXTURES, system))


def whole_prompt_ids(tokenizer, icl: dict) -> list[int]:
    text = tokenizer.apply_chat_template(render_messages(icl), tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def hit_rate(results) -> float:
    return sum(r["meta_info"]["cached_tokens"] for r in results) / sum(r["meta_info"]["prompt_tokens"] for r in results)


@pytest.mark.parametrize("refine", ["none", "table", "native"])
def test_icl_meta_for_each_refine_policy(refine, tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir, kv_cache_tokens=8192)
    stream = fixture_stream("Spark")
    icls = [to_icl(q, refine=refine) for q in stream[:3]]
    for icl in icls + icls[:1]:  # the repeat finds its whole example path cached
        out = eng.generate(icl=icl, sampling_params=GREEDY)
        meta = out["meta_info"]
        k = len(icl["examples"])
        assert sorted(meta["icl_order"]) == list(range(k))
        assert isinstance(meta["icl_substituted"], int) and 0 <= meta["icl_substituted"] <= k
        assert isinstance(meta["cached_tokens"], int) and 0 <= meta["cached_tokens"] < meta["prompt_tokens"]
        assert meta["completion_tokens"] == GREEDY["max_new_tokens"]
    p = render_icl(eng.tokenizer, validate_icl(icls[0]))
    assert meta["cached_tokens"] >= len(p.head_ids) + sum(len(e.ids) for e in p.examples)
    if refine == "none":
        assert meta["icl_order"] == list(range(len(icls[0]["examples"]))) and meta["icl_substituted"] == 0


def check_segmented_tokenization(tokenizer) -> int:
    checked = 0
    for system in LOGHUB_SYSTEMS:
        for q in fixture_stream(system):
            icl = validate_icl(to_icl(q))
            p = render_icl(tokenizer, icl)
            assert list(p.assemble(p.examples)[0]) == whole_prompt_ids(tokenizer, icl), (system, q.line)
            # PAIR reorders segments: the reassembly must equal tokenizing the reordered text.
            rev = {**icl, "examples": icl["examples"][::-1]}
            assert list(p.assemble(p.examples[::-1])[0]) == whole_prompt_ids(tokenizer, rev), (system, q.line)
            checked += 1
    return checked


def test_segment_encoder_memoises_heads_and_examples_not_queries(tiny_model_dir):
    from engine.models.loader import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    enc = SegmentEncoder(tokenizer, capacity=64)
    icls = [validate_icl(to_icl(q)) for q in fixture_stream("HDFS")]
    for icl in icls:
        assert render_icl(tokenizer, icl, enc) == render_icl(tokenizer, icl)
    info = enc.cached.cache_info()
    distinct = {e["input"] + e["output"] for icl in icls for e in icl["examples"]} | {icls[0]["instruction"]}
    lookups = sum(1 + len(icl["examples"]) for icl in icls)  # the head and each example; queries bypass it
    assert info.misses == len(distinct) and info.hits == lookups - info.misses
    assert info.currsize <= 64


def test_segmented_tokenization_equals_whole_prompt_tiny(tiny_model_dir):
    from engine.models.loader import load_tokenizer

    assert check_segmented_tokenization(load_tokenizer(tiny_model_dir)) == 40 * len(LOGHUB_SYSTEMS)


def test_segmented_tokenization_equals_whole_prompt_demo(demo_dir):
    from engine.models.loader import load_tokenizer

    assert check_segmented_tokenization(load_tokenizer(demo_dir)) == 40 * len(LOGHUB_SYSTEMS)


def test_refine_none_equals_the_plain_rendered_prompt(tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir, disable_radix_cache=True, kv_cache_tokens=16384)
    icls = [to_icl(fixture_stream(s)[i]) for s in ("HDFS", "Linux", "OpenStack") for i in (0, 7)]
    texts = [eng.tokenizer.apply_chat_template(render_messages(validate_icl(i)), tokenize=False,
                                               add_generation_prompt=True) for i in icls]
    via_icl = eng.generate(icl=icls, sampling_params=GREEDY)
    via_text = eng.generate(texts, sampling_params=GREEDY)
    for a, b in zip(via_icl, via_text):
        assert a["meta_info"]["prompt_tokens"] == b["meta_info"]["prompt_tokens"]
        assert a["output_ids"] == b["output_ids"]


def interleaved_stream(systems=("HDFS", "Spark")):
    streams = [fixture_stream(s) for s in systems]
    return [q for group in zip(*streams) for q in group]


@pytest.fixture(scope="module")
def hit_rates(tiny_model_dir) -> dict[str, float]:
    """Token hit rate per refine policy on an interleaved HDFS/Spark fixture stream (80 requests), each in a
    fresh engine with an ample pool, requests one at a time so each is refined against its predecessors' tree."""
    from engine import Engine

    rates = {}
    for refine in ("none", "table", "native"):
        with Engine(model_path=tiny_model_dir, dtype="float32", kv_cache_tokens=65536) as eng:
            results = [eng.generate(icl=to_icl(q, refine=refine), sampling_params={**GREEDY, "max_new_tokens": 1})
                       for q in interleaved_stream()]
            stats = eng.get_stats()
            eng.check_integrity()
        assert stats["evicted_tokens_total"] == 0, "the pool is meant to be ample"
        rates[refine] = hit_rate(results)
        assert rates[refine] == pytest.approx(stats["token_hit_rate"])
    return rates


def test_pair_policies_beat_no_refinement(hit_rates):
    assert hit_rates["table"] > hit_rates["none"] and hit_rates["native"] > hit_rates["none"], hit_rates


def test_native_hit_rate_at_least_table(hit_rates):
    assert hit_rates["native"] >= hit_rates["table"], hit_rates


BAD_ICL = [
    (lambda i: {k: v for k, v in i.items() if k != "query"}, "icl.query"),
    (lambda i: {**i, "query": 7}, "icl.query"),
    (lambda i: {**i, "examples": []}, "icl.examples"),
    (lambda i: {**i, "examples": [{"input": "x", "output": 3}]}, "icl.examples[0].output"),
    (lambda i: {**i, "instruction": None}, "icl.instruction"),
    (lambda i: {**i, "examples": [{"input": "x", "output": "y"}] * 65}, "icl.examples"),
    (lambda i: {**i, "refine": "magic"}, "icl.refine"),
]


def test_malformed_icl_raises_naming_the_field_and_the_engine_serves_on(tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir)
    good = to_icl(fixture_stream("Apache")[0], refine="native")
    reference = eng.generate(icl=good, sampling_params=GREEDY)["output_ids"]
    for mutate, field in BAD_ICL:
        with pytest.raises(ValueError, match="^" + re.escape(field) + ":"):
            eng.generate(icl=mutate(good), sampling_params=GREEDY)
        assert not eng.loop.scheduler.has_work()
    with pytest.raises(ValueError, match=r"^icl"):  # one bad item rejects the whole batch
        eng.generate(icl=[good, BAD_ICL[0][0](good)], sampling_params=GREEDY)
    assert eng.generate(icl=good, sampling_params=GREEDY)["output_ids"] == reference
