"""Shared fixtures: deterministic tiny checkpoints and engines whose KV accounting is checked on teardown."""
from __future__ import annotations

import os
import shutil

import pytest

# Triton kernels run on CPU only in the interpreter, which must be on before any @triton.jit executes.
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from engine.models.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny-qwen2")), preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_model_dir) -> str:
    """A random 2-layer Llama (untied, GQA 4:1, other rope theta) sharing the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = str(tmp_path_factory.mktemp("tiny-llama"))
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=2000, hidden_size=96, intermediate_size=200, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=1024,
                      rope_theta=50000.0, tie_word_embeddings=False, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in os.listdir(tiny_model_dir):
        if f.startswith("tokenizer") or f.endswith(".jinja"):
            shutil.copy(os.path.join(tiny_model_dir, f), out)
    return out


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct converted once per session into a private cache dir (never the user's ~/.cache)."""
    from engine.models.demo import resolve_demo_model

    return resolve_demo_model(str(tmp_path_factory.mktemp("cache") / "smollm2"))


@pytest.fixture
def make_engine():
    """Build engines; on teardown each must be idle, pass check_integrity, and hold no KV once flushed."""
    from engine import Engine

    engines = []

    def make(path: str, **flags):
        flags.setdefault("kv_cache_tokens", 4096)
        flags.setdefault("dtype", "float32")
        eng = Engine(model_path=path, **flags)
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.check_integrity()
        sch = eng.loop.scheduler
        assert not sch.has_work(), "requests left in the engine"
        eng.flush_cache()
        assert sch.kv.allocator.num_free == sch.kv.capacity, "KV slots leaked"
        eng.shutdown()
