"""Logprobs (output and prompt, with top-n) against log_softmax of HF transformers' logits on the tiny model, and
prompt logprobs on cache hits, through chunked prefill, in mixed batches and streaming (engine/logprobs.py)."""
from __future__ import annotations

import pytest
import torch

TOL = 1e-4
GREEDY = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _hf_logprobs(model, ids: list[int]) -> torch.Tensor:
    """[len(ids), V] log_softmax of HF's logits: row j is the distribution of token j + 1."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def _prompt(eng, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, len(eng.tokenizer), (n,), generator=g).tolist()


def _check_against_hf(out, prompt: list[int], start: int, top_n: int, ref: torch.Tensor) -> None:
    meta = out["meta_info"]
    full = prompt + out["output_ids"]
    # prompt tokens from `start`: token i's logprob is row i - 1; token 0 has none
    inp = meta["input_token_logprobs"]
    assert [t for _, t, _ in inp] == prompt[start:]
    for k, (lp, tok, text) in enumerate(inp):
        i = start + k
        assert text is None
        if i == 0:
            assert lp is None and meta["input_top_logprobs"][k] is None
            continue
        assert abs(lp - ref[i - 1, tok].item()) <= TOL
        if top_n:
            top = meta["input_top_logprobs"][k]
            ref_vals = ref[i - 1].topk(top_n).values
            assert torch.allclose(torch.tensor([v for v, _, _ in top]), ref_vals, atol=TOL)
            assert all(abs(v - ref[i - 1, t].item()) <= TOL for v, t, _ in top)
    outs = meta["output_token_logprobs"]
    assert [t for _, t, _ in outs] == out["output_ids"]
    for k, (lp, tok, _) in enumerate(outs):
        pos = len(prompt) - 1 + k
        assert full[pos + 1] == tok
        assert abs(lp - ref[pos, tok].item()) <= TOL
        top = meta["output_top_logprobs"][k]
        if top_n:
            assert len(top) == top_n and top[0][1] == tok  # greedy picks the most likely token
            assert torch.allclose(torch.tensor([v for v, _, _ in top]), ref[pos].topk(top_n).values, atol=TOL)
        else:
            assert top is None


@pytest.mark.parametrize("start,top_n", [(0, 3), (5, 0), (-1, 2)])
def test_logprobs_equal_hf_log_softmax(make_engine, tiny_model_dir, hf_model, start, top_n):
    eng = make_engine(tiny_model_dir)
    prompt = _prompt(eng, 20, seed=1)
    out = eng.generate(input_ids=prompt, sampling_params=GREEDY, return_logprob=True, logprob_start_len=start,
                       top_logprobs_num=top_n)
    ref = _hf_logprobs(hf_model, prompt + out["output_ids"])
    _check_against_hf(out, prompt, max(start, 0) if start >= 0 else len(prompt), top_n, ref)
    if start < 0:
        assert out["meta_info"]["input_token_logprobs"] == []


def test_prompt_logprobs_on_a_cached_prefix_are_recomputed(make_engine, tiny_model_dir):
    """A prompt whose prefix is cached still gets every asked prompt logprob, equal to the cache-off run; the
    part before logprob_start_len - 1 may come from the cache, the rest is computed."""
    prompt_fields = {"return_logprob": True, "logprob_start_len": 9, "top_logprobs_num": 2}
    off = make_engine(tiny_model_dir, disable_radix_cache=True)
    prompt = _prompt(off, 40, seed=2)
    ref = off.generate(input_ids=prompt, sampling_params=GREEDY, **prompt_fields)
    eng = make_engine(tiny_model_dir)
    eng.generate(input_ids=prompt, sampling_params=GREEDY)  # caches the whole prompt
    assert eng.generate(input_ids=prompt, sampling_params=GREEDY)["meta_info"]["cached_tokens"] == 39
    hit = eng.generate(input_ids=prompt, sampling_params=GREEDY, **prompt_fields)
    assert hit["meta_info"]["cached_tokens"] == 8  # limited to the positions before the first logit asked
    for key in ("input_token_logprobs", "input_top_logprobs", "output_token_logprobs", "output_top_logprobs"):
        got, want = hit["meta_info"][key], ref["meta_info"][key]
        assert len(got) == len(want)
        assert torch.allclose(torch.tensor(_flat(got)), torch.tensor(_flat(want)), atol=TOL)


def _flat(items) -> list[float]:
    """Every number of a logprob list (None → 0), for comparing two lists of the same shape."""
    out: list[float] = []
    for x in items:
        if isinstance(x, list):
            out.extend(_flat(x))
        elif isinstance(x, (int, float)):
            out.append(float(x))
        elif x is None:
            out.append(0.0)
    return out


def test_prompt_logprobs_through_chunked_prefill_and_mixed_batches(make_engine, tiny_model_dir, hf_model):
    """Chunks of 7 tokens: a prompt's logprobs are collected over its chunks; requests without logprobs (and
    others asking different things) share the batches and are unaffected."""
    eng = make_engine(tiny_model_dir, chunked_prefill_size=7, max_prefill_tokens=7)
    prompts = [_prompt(eng, n, seed=10 + n) for n in (30, 12, 25)]
    plain = eng.generate(input_ids=prompts, sampling_params=GREEDY)
    outs = eng.generate(input_ids=prompts, sampling_params=GREEDY, return_logprob=[True, False, True],
                        logprob_start_len=[3, 0, 0], top_logprobs_num=[1, 0, 4])
    assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in plain]
    assert "input_token_logprobs" not in outs[1]["meta_info"]
    for (out, prompt, start, top_n) in ((outs[0], prompts[0], 3, 1), (outs[2], prompts[2], 0, 4)):
        _check_against_hf(out, prompt, start, top_n, _hf_logprobs(hf_model, prompt + out["output_ids"]))


def test_streaming_reports_logprobs_as_they_come(make_engine, tiny_model_dir):
    eng = make_engine(tiny_model_dir)
    prompt = _prompt(eng, 15, seed=3)
    whole = eng.generate(input_ids=prompt, sampling_params=GREEDY, return_logprob=True, logprob_start_len=4,
                         top_logprobs_num=2, return_text_in_logprobs=True)
    chunks = list(eng.generate(input_ids=prompt, sampling_params=GREEDY, stream=True, return_logprob=True,
                               logprob_start_len=4, top_logprobs_num=2, return_text_in_logprobs=True))
    assert [len(c["meta_info"]["output_token_logprobs"]) for c in chunks] == list(range(1, 7))
    assert all(len(c["meta_info"]["input_token_logprobs"]) == 11 for c in chunks)
    last = chunks[-1]["meta_info"]
    for key in ("input_token_logprobs", "output_token_logprobs", "output_top_logprobs"):
        assert torch.allclose(torch.tensor(_flat(last[key])), torch.tensor(_flat(whole["meta_info"][key])))
    texts = [t for _, _, t in last["output_token_logprobs"]]
    assert texts == [eng.tokenizer.decode([t]) for t in chunks[-1]["output_ids"]]


@pytest.mark.parametrize("fields,name", [
    ({"logprob_start_len": 20}, "logprob_start_len"), ({"logprob_start_len": -2}, "logprob_start_len"),
    ({"top_logprobs_num": 21}, "top_logprobs_num"), ({"return_logprob": 1}, "return_logprob"),
])
def test_bad_logprob_fields_are_refused(make_engine, tiny_model_dir, fields, name):
    eng = make_engine(tiny_model_dir)
    with pytest.raises(ValueError, match=f"^{name}"):
        eng.generate(input_ids=list(range(3, 23)), sampling_params=GREEDY, **{"return_logprob": True, **fields})
