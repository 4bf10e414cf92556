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


def _write_hf_tiny(out: str, tokenizer_dir: str, arch: str, seed: int, **config) -> str:
    """A random HF checkpoint of `arch` ("llama", "mistral", "qwen3") in `out`, sharing `tokenizer_dir`'s tokenizer.
    Norm weights get 1 + N(0, 0.1) noise (HF initialises them to ones): a dropped norm weight then changes logits."""
    import torch
    import transformers

    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
               "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}
    config_cls, model_cls = (getattr(transformers, name) for name in classes[arch])
    torch.manual_seed(seed)
    model = model_cls(config_cls(vocab_size=2000, eos_token_id=2, **config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(out)
    for f in os.listdir(tokenizer_dir):
        if f.startswith("tokenizer") or f.endswith(".jinja"):
            shutil.copy(os.path.join(tokenizer_dir, f), out)
    return out


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
def tiny_qwen3_dir(tmp_path_factory, tiny_model_dir) -> str:
    """A random 2-layer Qwen3: q/k RMSNorm, no qkv bias, head_dim 32 != hidden / heads, tied, GQA 2:1."""
    return _write_hf_tiny(str(tmp_path_factory.mktemp("tiny-qwen3")), tiny_model_dir, "qwen3", seed=2,
                          hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                          rope_theta=1_000_000.0, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory, tiny_model_dir) -> str:
    """A random 2-layer Mistral (GQA 3:1, untied) whose sliding window (512) is below its max positions (1024)."""
    return _write_hf_tiny(str(tmp_path_factory.mktemp("tiny-mistral")), tiny_model_dir, "mistral", seed=3,
                          hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=6,
                          num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, sliding_window=512,
                          rope_theta=10000.0, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_llama3_dir(tmp_path_factory, tiny_model_dir) -> str:
    """A random 2-layer Llama-3: rope_scaling llama3 with an original context of 32 tokens, so the prompts (up to
    96 positions) cross it and the head's 16 frequencies fall in all three bands (kept, smoothed, divided)."""
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    return _write_hf_tiny(str(tmp_path_factory.mktemp("tiny-llama3")), tiny_model_dir, "llama", seed=4,
                          hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=1024, rope_parameters=rope,
                          tie_word_embeddings=True)


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
