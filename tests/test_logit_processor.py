"""Logit processing (engine/logit_processor.py): the batched penalties, logit_bias and min_new_tokens against a
per-row Python reference over many steps (rows reused, requests moving rows, rows that do not sample), and the
engine's greedy output against HF transformers' generate with the same processing."""
from __future__ import annotations

import random

import pytest
import torch

from engine.logit_processor import LogitProcessor
from engine.penalties import PenaltyTable
from engine.sampling_params import SamplingParams
from engine.scheduler.request import Req

V = 50
EOS = (1,)


def reference(logits: torch.Tensor, req: Req) -> torch.Tensor:
    """One row, token by token, straight from the definitions in engine/sampling_params.py."""
    sp, out = req.sampling, req.output_ids
    x = logits.clone()
    for tok, bias in sp.logit_bias:
        x[tok] += bias
    if len(out) < sp.min_new_tokens:
        for tok in set(sp.stop_token_ids) | (set() if sp.ignore_eos else set(req.eos_token_ids)):
            x[tok] = float("-inf")
    for tok in range(V):
        count = out.count(tok)
        if sp.repetition_penalty != 1.0 and (count or tok in req.input_ids):
            x[tok] = x[tok] / sp.repetition_penalty if x[tok] > 0 else x[tok] * sp.repetition_penalty
        x[tok] -= sp.frequency_penalty * count + sp.presence_penalty * (count > 0)
    return x


def _random_params(rng: random.Random) -> SamplingParams:
    kinds = rng.sample(["rep", "freq", "pres", "bias", "min", "none"], k=rng.randint(1, 3))
    return SamplingParams(
        max_new_tokens=50, min_new_tokens=rng.randint(1, 6) if "min" in kinds else 0,
        repetition_penalty=rng.choice([0.7, 1.3, 2.0]) if "rep" in kinds else 1.0,
        frequency_penalty=rng.uniform(-2, 2) if "freq" in kinds else 0.0,
        presence_penalty=rng.uniform(-2, 2) if "pres" in kinds else 0.0,
        logit_bias=tuple(sorted({rng.randrange(V): rng.uniform(-5, 5) for _ in range(3)}.items()))
        if "bias" in kinds else (), stop_token_ids=(7,) if rng.random() < 0.5 else (),
        ignore_eos=rng.random() < 0.3)


@pytest.mark.parametrize("capacity", [256, 1])
def test_batched_processing_matches_the_per_row_reference_over_many_steps(capacity):
    """capacity 1: the penalty table grows (doubling) while rows hold live counts."""
    rng = random.Random(0)
    proc = LogitProcessor(max_rows=6, vocab_size=V, device="cpu")
    proc.penalties = PenaltyTable(6, "cpu", capacity=capacity)
    free_rows = list(range(6))
    live: list[Req] = []
    n = 0
    for step in range(40):
        # requests come and go, so pool rows are reused by other requests; some move rows (retraction)
        while len(live) < 5 and free_rows:
            n += 1
            req = Req(rid=f"r{n}", input_ids=[rng.randrange(V) for _ in range(rng.randint(1, 8))],
                      sampling=_random_params(rng), eos_token_ids=EOS)
            req.req_pool_idx = free_rows.pop(rng.randrange(len(free_rows)))
            live.append(req)
        if rng.random() < 0.2:
            moved = rng.choice(live)
            free_rows.append(moved.req_pool_idx)
            moved.req_pool_idx = free_rows.pop(0)
        rng.shuffle(live)
        sample = [rng.random() < 0.85 for _ in live]
        logits = torch.randn(len(live), V) * 3
        want = [reference(logits[i], r) if s else logits[i] for i, (r, s) in enumerate(zip(live, sample))]
        proc.apply(logits, live, sample)
        for i, w in enumerate(want):
            assert torch.allclose(logits[i], w, atol=1e-5), f"step {step} row {i}"
        for r, s in zip(live, sample):
            if s:
                r.output_ids.append(int(torch.randint(0, V, ()).item()))
        for r in [r for r in live if len(r.output_ids) > rng.randint(3, 12)]:
            live.remove(r)
            free_rows.append(r.req_pool_idx)


class OpenAIPenalties:
    """HF logits processor: frequency and presence penalties over the generated tokens (OpenAI's definition)."""

    def __init__(self, prompt_len: int, frequency: float, presence: float):
        self.prompt_len, self.frequency, self.presence = prompt_len, frequency, presence

    def __call__(self, input_ids, scores):
        for row in range(scores.shape[0]):
            for tok in set(input_ids[row, self.prompt_len:].tolist()):
                count = input_ids[row, self.prompt_len:].tolist().count(tok)
                scores[row, tok] -= self.frequency * count + self.presence
        return scores


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


CASES = [
    ({"repetition_penalty": 1.5}, {"repetition_penalty": 1.5}),
    ({"frequency_penalty": 1.2, "presence_penalty": 0.5}, {"freq": (1.2, 0.5)}),
    ({"presence_penalty": -0.8}, {"freq": (0.0, -0.8)}),
    ({"logit_bias": {"100": 8.0, "7": -3.0}}, {"sequence_bias": {(100,): 8.0, (7,): -3.0}}),
    ({"min_new_tokens": 10, "stop_token_ids": [105]}, {"min_new_tokens": 10, "eos": [105]}),
]


def test_engine_greedy_matches_hf_generate_with_the_same_processing(make_engine, tiny_model_dir, hf_model):
    """All five cases in one batch beside a plain request: each row gets its own processing."""
    from transformers import LogitsProcessorList

    eng = make_engine(tiny_model_dir)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, len(eng.tokenizer), (12,), generator=g).tolist() for _ in range(len(CASES) + 1)]
    base = {"max_new_tokens": 16, "temperature": 0}
    params = [{**base, "ignore_eos": "min_new_tokens" not in ours, **ours} for ours, _ in CASES] + [base]
    outs = eng.generate(input_ids=prompts, sampling_params=params)
    for prompt, out, (ours, theirs) in zip(prompts, outs, CASES):
        kwargs = {k: v for k, v in theirs.items() if k not in ("freq", "eos")}
        processors = LogitsProcessorList()
        if "freq" in theirs:
            processors.append(OpenAIPenalties(len(prompt), *theirs["freq"]))
        ref = hf_model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, pad_token_id=0,
                                eos_token_id=theirs.get("eos"), logits_processor=processors,
                                attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **kwargs)
        assert out["output_ids"] == ref[0, len(prompt):].tolist(), ours
    plain = eng.generate(input_ids=prompts[-1], sampling_params=base)
    assert outs[-1]["output_ids"] == plain["output_ids"]


def test_penalties_change_the_output(make_engine, tiny_model_dir):
    """The random tiny model repeats one token greedily; a repetition penalty must break that."""
    eng = make_engine(tiny_model_dir)
    plain = eng.generate("hello world", {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True})
    assert len(set(plain["output_ids"])) < 4
    pen = eng.generate("hello world", {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True,
                                       "frequency_penalty": 2.0})
    assert len(set(pen["output_ids"])) > len(set(plain["output_ids"]))


@pytest.mark.parametrize("sp,field", [
    ({"frequency_penalty": 2.5}, "frequency_penalty"), ({"presence_penalty": -3}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"), ({"min_new_tokens": 200}, "min_new_tokens"),
    ({"logit_bias": {"x": 1}}, "logit_bias"), ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"999999": 1}}, "logit_bias"), ({"logit_bias": [1, 2]}, "logit_bias"),
])
def test_bad_values_are_refused_naming_the_field(make_engine, tiny_model_dir, sp, field):
    eng = make_engine(tiny_model_dir)
    with pytest.raises(ValueError, match=f"^sampling_params.{field}"):
        eng.generate("hi", {"max_new_tokens": 4, **sp})
