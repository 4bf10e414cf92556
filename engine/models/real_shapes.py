"""Real-size Qwen2.5 shapes for `python -m engine.models.tiny DIR --preset qwen2.5-7b` and friends.

Their dirs hold config.json + tokenizer only (no weights: a 14B checkpoint of random numbers would be 30 GB of
nothing); serve them with `--load-format dummy`, which draws seeded random weights straight into memory. The
shapes are those of the public Qwen2.5 Instruct configs: vocab 151,936 (0.5B, 1.5B) and 152,064 (7B, 14B) in
the model, GQA heads, tied embeddings on 0.5B and 1.5B. The tokenizer is the generator's small BPE: ids past it
exist in the logits and decode to nothing, as in a real Qwen checkpoint's padding.
"""
from __future__ import annotations

REAL_SHAPES = {
    # name: (hidden, intermediate, layers, heads, kv heads, tied, vocab, rms_norm_eps)
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, True, 151_936, 1e-6),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, True, 151_936, 1e-6),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, False, 152_064, 1e-6),
    "qwen2.5-14b": (5120, 13824, 48, 40, 8, False, 152_064, 1e-5),
}
REAL_TOKENIZER_SIZE = 8192  # the BPE trained for these dirs (the `bench` preset's size: trains in seconds)
REAL_MAX_POSITIONS = 32_768
