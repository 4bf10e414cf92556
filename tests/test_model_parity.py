"""Models vs HF transformers in fp32: prefill logits and greedy tokens, through chunking and retraction."""
from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig, ServerArgs
from engine.model_runner import ModelRunner
from engine.sampling_params import SamplingParams
from engine.scheduler import Req, Scheduler

NUM_NEW = 32
# arch -> fixture writing its tiny random checkpoint (tests/conftest.py)
MODEL_DIRS = {"qwen2": "tiny_model_dir", "llama": "tiny_llama_dir", "qwen3": "tiny_qwen3_dir",
              "mistral": "tiny_mistral_dir", "llama3": "tiny_llama3_dir"}


def _prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = [3, 17, 40, 9, 64, 1, 33, 25, 50, 12][:n]
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lens]


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _hf_greedy(model, prompt: list[int]) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=NUM_NEW, do_sample=False, eos_token_id=None,
                         pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", list(MODEL_DIRS))
def test_prefill_logits_match_hf(arch, request):
    path = request.getfixturevalue(MODEL_DIRS[arch])
    runner = ModelRunner(ServerArgs(model_path=path, dtype="float32", kv_cache_tokens=1024), path)
    sch = Scheduler(ServerArgs(model_path=path, kv_cache_tokens=1024), runner.num_slots, runner.context_len,
                    lambda ids: "")
    prompts = _prompts(4, 2000)
    for i, p in enumerate(prompts):
        sch.add(Req(rid=str(i), input_ids=p, sampling=SamplingParams(max_new_tokens=1, temperature=0)))
    batch = sch.schedule()
    assert batch.batch_size == 4
    ours = runner.forward(batch)
    hf = _hf(path)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ref = hf(torch.tensor([p])).logits[0, -1]
            assert (ours[i] - ref).abs().max().item() <= 1e-4
    sch.process_results(batch, [0] * 4)
    sch.check_integrity()


@pytest.fixture(scope="module")
def hf_reference(request):
    """arch -> HF greedy tokens of the 8 prompts, computed on first use."""
    refs: dict[str, list[list[int]]] = {}

    def get(arch: str) -> list[list[int]]:
        if arch not in refs:
            model = _hf(request.getfixturevalue(MODEL_DIRS[arch]))
            refs[arch] = [_hf_greedy(model, p) for p in _prompts(8, 2000)]
        return refs[arch]

    return get


CASES = {
    "batch1": dict(max_running_requests=1),
    "batch8": dict(max_running_requests=8),
    "chunked16": dict(max_running_requests=8, chunked_prefill_size=16, max_prefill_tokens=48),
    "chunked16_unmixed": dict(max_running_requests=8, chunked_prefill_size=16, max_prefill_tokens=48,
                              enable_mixed_chunk=False),
    "retract": dict(max_running_requests=8, kv_cache_tokens=200, schedule_conservativeness=0.05),
    "retract_nocache_page4": dict(max_running_requests=8, kv_cache_tokens=200, page_size=4, schedule_conservativeness=0.05,
                                  disable_radix_cache=True),
}


@pytest.mark.parametrize("arch", list(MODEL_DIRS))
@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_match_hf(arch, case, hf_reference, make_engine, request):
    path = request.getfixturevalue(MODEL_DIRS[arch])
    eng = make_engine(path, **CASES[case])
    sp = {"max_new_tokens": NUM_NEW, "temperature": 0, "ignore_eos": True}
    outs = eng.generate(input_ids=_prompts(8, 2000), sampling_params=sp)
    for out, ref in zip(outs, hf_reference(arch)):
        assert out["output_ids"] == ref
        assert out["meta_info"]["finish_reason"]["type"] == "length"
    if case.startswith("retract"):
        assert eng.get_stats()["num_retractions_total"] > 0
    mixed_steps = eng.get_stats()["mixed_steps_total"]
    if case.startswith("chunked16"):  # later prompts prefill in chunks while earlier ones decode
        assert (mixed_steps > 0) == (case == "chunked16")


def test_model_type_gate_and_mistral_sliding_window(tiny_mistral_dir, tiny_qwen3_dir):
    # pairserve attends over the full context: equal to sliding-window attention only up to the window
    assert ModelConfig.from_hf(tiny_mistral_dir).max_position_embeddings == 512
    assert ModelConfig.from_hf(tiny_qwen3_dir).max_position_embeddings == 1024  # use_sliding_window false
    with pytest.raises(ValueError, match="model_type: 'gemma2'.*not supported"):
        ModelConfig.from_dict({"model_type": "gemma2"})
