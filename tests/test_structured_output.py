"""Structured output (engine/grammar.py): on the demo model, 20 sampled outputs of a JSON schema all parse and
validate; on the tiny model, the grammar touches only the constrained rows of a batch, regex / ebnf specs hold,
compilations are cached and waited for, and bad specs are refused naming the field."""
from __future__ import annotations

import json
import re

import pytest

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0},
                   "city": {"type": "string"}, "hobbies": {"type": "array", "items": {"type": "string"},
                                                           "maxItems": 3}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


def test_demo_model_json_schema_outputs_all_parse_and_validate(demo_dir, make_engine):
    jsonschema = pytest.importorskip("jsonschema")
    eng = make_engine(demo_dir, dtype="auto")
    prompt = eng.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Describe a fictional person as JSON with name, age, city and hobbies."}],
        add_generation_prompt=True, tokenize=False)
    params = [{"max_new_tokens": 160, "temperature": 0.9, "top_p": 0.95, "seed": i,
               "json_schema": json.dumps(PERSON)} for i in range(20)]
    outs = eng.generate([prompt] * 20, params)
    texts = [o["text"] for o in outs]
    assert len(set(texts)) > 10  # sampled, not one answer repeated
    for o in outs:
        assert o["meta_info"]["finish_reason"]["type"] == "stop", o["text"]
        jsonschema.validate(json.loads(o["text"]), PERSON)


def test_grammar_touches_only_the_constrained_rows(make_engine, tiny_model_dir):
    eng = make_engine(tiny_model_dir)
    free = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
    alone = eng.generate(["one", "two"], [free, free])
    mixed = eng.generate(["one", "zzz", "two"], [free, {"max_new_tokens": 12, "temperature": 0,
                                                       "regex": "[0-9]{3}-[a-c]{2}"}, free])
    assert [mixed[0]["output_ids"], mixed[2]["output_ids"]] == [o["output_ids"] for o in alone]
    assert re.fullmatch("[0-9]{3}-[a-c]{2}", mixed[1]["text"])
    assert mixed[1]["meta_info"]["finish_reason"]["type"] == "stop"


def test_ebnf_and_cached_compilation(make_engine, tiny_model_dir):
    eng = make_engine(tiny_model_dir)
    sp = {"max_new_tokens": 16, "temperature": 1.0, "ebnf": 'root ::= ("yes" | "no" | "maybe") "!"'}
    outs = eng.generate([f"q{i}" for i in range(6)], [{**sp, "seed": i} for i in range(6)])
    assert all(o["text"] in ("yes!", "no!", "maybe!") for o in outs)
    backend = eng.loop.grammar_backend()
    assert len(backend._cache) == 1  # six requests, one compilation


def test_a_request_waits_for_its_grammar_and_others_run_meanwhile(make_engine, tiny_model_dir):
    """A slow compilation holds back only its own request: plain requests submitted after it finish first."""
    import threading

    eng = make_engine(tiny_model_dir)
    backend = eng.loop.grammar_backend()
    gate = threading.Event()
    real = backend._compile

    def slow(kind, spec):
        assert gate.wait(60)
        return real(kind, spec)

    backend._compile = slow
    done: list[str] = []
    t = threading.Thread(target=lambda: done.append(eng.generate("x", {"max_new_tokens": 8, "regex": "ab+c"})["text"]))
    t.start()
    plain = eng.generate("y", {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True})
    assert plain["meta_info"]["completion_tokens"] == 4 and not done
    gate.set()
    t.join(60)
    assert done and re.fullmatch("ab*c?", done[0])  # a prefix of the language (max_new_tokens may cut it)


@pytest.mark.parametrize("sp,field", [
    ({"json_schema": "{bad"}, "json_schema"), ({"json_schema": '{"type": "frob"}'}, "json_schema"),
    ({"regex": "a(b"}, "regex"), ({"ebnf": "root ::= "}, "ebnf"), ({"regex": "a", "ebnf": 'root ::= "a"'}, "ebnf"),
    ({"regex": 5}, "regex"),
])
def test_bad_grammars_are_refused_naming_the_field(make_engine, tiny_model_dir, sp, field):
    eng = make_engine(tiny_model_dir)
    with pytest.raises(ValueError, match=f"^sampling_params.{field}"):
        eng.generate("hi", {"max_new_tokens": 4, **sp})


def test_failed_compilation_aborts_only_that_request(make_engine, tiny_model_dir):
    eng = make_engine(tiny_model_dir)
    backend = eng.loop.grammar_backend()

    def broken(kind, spec):
        raise RuntimeError("compiler exploded")

    backend._compile = broken
    bad, good = eng.generate(["a", "b"], [{"max_new_tokens": 4, "regex": "a+"},
                                          {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}])
    assert bad["meta_info"]["finish_reason"]["type"] == "abort"
    assert "compiler exploded" in bad["meta_info"]["finish_reason"]["message"]
    assert good["meta_info"]["completion_tokens"] == 4


@pytest.mark.parametrize("vocab,batch,rows", [(50, 3, [1]), (1000, 5, [0, 2, 4]), (4099, 4, [0, 1, 2, 3]),
                                              (49157, 7, [6, 0, 3])])
def test_cpu_mask_rows_matches_xgrammars_kernel(vocab, batch, rows):
    """GrammarMasks.mask_rows against xgrammar's own apply_token_bitmask_inplace on random bitmasks: same
    logits bit for bit, rows outside `rows` untouched (their bitmask rows are random too)."""
    import torch
    import xgrammar as xgr

    from engine.grammar import GrammarMasks

    g = torch.Generator().manual_seed(vocab)
    masks = GrammarMasks(batch, vocab)
    words = torch.randint(-2**31, 2**31 - 1, masks.bitmask.shape, generator=g, dtype=torch.int64)
    masks.bitmask.copy_(words.to(torch.int32))
    masks.bitmask[0, :2] = -1  # a row (when in `rows`) with allowed runs, and one with only forbidden words
    masks.bitmask[-1, :] = 0
    logits = torch.randn(batch, vocab, generator=g)
    want = logits.clone()
    xgr.apply_token_bitmask_inplace(want, masks.bitmask[:batch].clone(), vocab_size=vocab, indices=rows)
    masks.mask_rows(logits, rows)
    assert torch.equal(logits, want)
