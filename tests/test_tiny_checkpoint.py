"""The generated Qwen2 checkpoints: deterministic bytes, loadable by HF, tokenizer ids equal across loaders."""
from __future__ import annotations

import json
import os
import unicodedata

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.models.tiny import PRESETS, main, write_tiny_checkpoint

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

VARIED_TEXTS = (
    "Hello, world! It's 2024; we'RE testing you'LL see.",
    "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38865049064139660 "
    "terminating",
    "[Sun Dec 04 04:47:44 2005] [error] mod_jk child workerEnv in error state 6\r\n",
    "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; logname= uid=0 rhost=218.188.2.4",
    "def f(x):\n\tif x >= 0x1F:\n\t\treturn {'a': [1, 2.5e-3]}  # done\n\n\n   trailing   ",
    "Café naïve Zürich 日本語のテキスト 한국어 русский ελληνικά العربية 🙂🚀 e\u0301 (decomposed é)",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "\u200b zero-width \ufeff bom \x00 nul \x7f del \u2028 line-sep",
)


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir) -> str:
    """conftest's session checkpoint: preset "tiny", seed 0."""
    return tiny_model_dir


@pytest.fixture(scope="module")
def tiny_tokenizers(tiny_dir):
    return Tokenizer.from_file(os.path.join(tiny_dir, "tokenizer.json")), AutoTokenizer.from_pretrained(tiny_dir)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_same_args_give_byte_identical_files(tiny_dir, tmp_path):
    again = str(tmp_path / "again")
    main([again, "--preset", "tiny", "--seed", "0"])  # through the CLI, so its argument plumbing is covered too
    for name in FILES:
        assert _read(os.path.join(tiny_dir, name)) == _read(os.path.join(again, name)), name


def test_seed_changes_weights_but_not_tokenizer(tiny_dir, tmp_path):
    other = write_tiny_checkpoint(str(tmp_path / "seed1"), preset="tiny", seed=1)
    assert _read(os.path.join(tiny_dir, "model.safetensors")) != _read(os.path.join(other, "model.safetensors"))
    assert _read(os.path.join(tiny_dir, "tokenizer.json")) == _read(os.path.join(other, "tokenizer.json"))


def test_hf_loads_tiny_without_missing_keys(tiny_dir, tiny_tokenizers):
    model, info = AutoModelForCausalLM.from_pretrained(tiny_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.dtype == torch.float32
    preset = PRESETS["tiny"]
    assert sum(p.numel() for p in model.parameters()) == preset.param_count()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied

    cfg = json.loads(_read(os.path.join(tiny_dir, "config.json")))
    assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 2
    assert cfg["max_position_embeddings"] == 4096
    assert cfg["rope_theta"] == preset.rope_theta
    _, auto = tiny_tokenizers
    assert cfg["eos_token_id"] == auto.convert_tokens_to_ids("<|im_end|>") == auto.eos_token_id
    assert cfg["pad_token_id"] == auto.convert_tokens_to_ids("<|endoftext|>") == auto.pad_token_id
    assert cfg["vocab_size"] % 64 == 0 and cfg["vocab_size"] >= len(auto) == preset.tokenizer_size

    # Norm weights are perturbed away from 1 so a skipped norm weight is visible.
    norm = model.model.layers[0].input_layernorm.weight
    assert not torch.allclose(norm, torch.ones_like(norm), atol=1e-2)


def test_hf_loads_bench_untied(tmp_path):
    bench = write_tiny_checkpoint(str(tmp_path / "bench"), preset="bench", seed=0)
    model, info = AutoModelForCausalLM.from_pretrained(bench, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert sum(p.numel() for p in model.parameters()) == PRESETS["bench"].param_count()
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert len(AutoTokenizer.from_pretrained(bench)) == PRESETS["bench"].tokenizer_size


def test_param_counts_in_stated_ranges():
    assert 0.8e6 <= PRESETS["tiny"].param_count() <= 1.2e6
    assert 20e6 <= PRESETS["bench"].param_count() <= 40e6
    assert PRESETS["tiny"].tie_word_embeddings and not PRESETS["bench"].tie_word_embeddings


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_tokenizer_ids_equal_across_loaders_and_round_trip(tiny_tokenizers, text):
    raw, auto = tiny_tokenizers
    ids = raw.encode(text).ids
    assert auto(text)["input_ids"] == ids
    # NFC is part of the pipeline, so the round trip returns the composed form.
    assert raw.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)
    assert auto.decode(ids) == unicodedata.normalize("NFC", text)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_tokenizer_ids_equal_on_arbitrary_unicode(tiny_tokenizers, text):
    raw, auto = tiny_tokenizers
    ids = raw.encode(text).ids
    assert auto(text)["input_ids"] == ids
    assert raw.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_special_tokens_are_single_ids(tiny_tokenizers):
    raw, _ = tiny_tokenizers
    ids = raw.encode("<|im_start|>user\nhi<|im_end|><|endoftext|>").ids
    assert ids[0] == raw.token_to_id("<|im_start|>")
    assert ids[-2:] == [raw.token_to_id("<|im_end|>"), raw.token_to_id("<|endoftext|>")]


def test_chat_template_renders_chatml(tiny_tokenizers):
    _, auto = tiny_tokenizers
    text = auto.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False,
                                    add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    with_system = auto.apply_chat_template(
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "x"},
         {"role": "assistant", "content": "y"}], tokenize=False)
    assert with_system == ("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nx<|im_end|>\n"
                           "<|im_start|>assistant\ny<|im_end|>\n")


def test_bad_arguments_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        write_tiny_checkpoint(str(tmp_path), preset="huge")
    with pytest.raises(ValueError, match="seed"):
        write_tiny_checkpoint(str(tmp_path), seed=-1)
