"""GGUF files (llama.cpp's format) read with the `gguf` package: HF config, HF-named weights and the tokenizer.

The one GGUF reader of the project: `--model FILE.gguf` serves a file through it directly (engine/models/loader.py),
and the demo model (engine/models/demo.py) is the same reading written out as a HF checkpoint.

- `gguf_hf_config(path)`: the metadata as the dict a HF config.json would hold (`ModelConfig.from_dict` reads it).
- `iter_gguf_weights(path)`: (HF name, fp32 tensor) pairs. Quantized tensors are DEQUANTIZED here (by the `gguf`
  package: Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, the K-quants Q2_K..Q6_K and the IQ types) and the loader casts them to the
  serving dtype, so a Q4 file serves at bf16 memory and speed with the quantized values; nothing maps them onto an
  int8/int4 kernel path.
- `build_tokenizer(path)`: a fast tokenizer from the vocab/merges/token types of the metadata (transformers' GGUF
  converter, plus the pre-tokenizers it lacks) carrying the file's special tokens and `tokenizer.chat_template`.
- `check_gguf(path)`: the checks that need no tensor data (architecture, every tensor's name and type), so a bad
  file fails at once with one ValueError naming what is wrong.
"""
from __future__ import annotations

from typing import Iterator

import gguf
import numpy as np
import torch

# GGUF general.architecture -> HF model_type. Mistral/Llama-3 files are "llama" in llama.cpp's converter.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# llama.cpp's converter interleaves the rotary halves of the Q/K rows for these only (qwen runs neox rope as is).
_ROPE_PERMUTED = ("llama",)

# GGUF per-layer tensor suffix -> HF parameter suffix (llama, qwen2's q/k/v biases, qwen3's q/k norms).
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
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
ROPE_FREQS = "rope_freqs.weight"  # Llama-3.1 files: per-frequency divisors (llama3 rope scaling), not a weight
_REQUIRED = object()


class _Reader(gguf.GGUFReader):
    """GGUFReader parsing a plain ndarray view of the file's memory map (same bytes, same mapping): every slice of
    a np.memmap runs a Python-level __array_finalize__, and the reader slices ~6 times per vocabulary entry, which
    made opening the 49k-token SmolLM2 file take 13.6 s here (the whole --model FILE.gguf load ~60 s)."""

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value.view(np.ndarray)  # keeps the memmap alive through .base


def open_gguf(path: str) -> gguf.GGUFReader:
    """The file's reader (memory-mapped; tensors are read when touched); ValueError if it is not a GGUF file."""
    try:
        return _Reader(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"model: {path} is not a readable GGUF file ({e})") from e


def metadata(reader: gguf.GGUFReader, key: str, default=_REQUIRED):
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise ValueError(f"gguf: metadata key {key!r} is missing")
        return default
    return field.contents()


def architecture(reader: gguf.GGUFReader, path: str = "") -> str:
    arch = metadata(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"gguf: architecture {arch!r} of {path or 'the file'} is not supported "
                         f"({', '.join(ARCHITECTURES)})")
    return arch


def hf_tensor_name(gguf_name: str) -> str:
    """HF parameter name of a GGUF tensor; ValueError for a tensor the Llama-family models have no place for."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    prefix, _, rest = gguf_name.partition(".")
    layer, _, suffix = rest.partition(".")
    if prefix != "blk" or not layer.isdigit() or suffix not in _LAYER_TENSORS:
        raise ValueError(f"gguf: tensor {gguf_name!r} has no counterpart in the Llama-family models")
    return f"model.layers.{layer}.{_LAYER_TENSORS[suffix]}"


def check_gguf(path: str, reader: gguf.GGUFReader | None = None) -> gguf.GGUFReader:
    """Raise ValueError naming the first thing pairserve cannot serve: the architecture, a tensor without a place in
    the model, or a tensor type the `gguf` package cannot dequantize. Reads the header only; returns the reader."""
    reader = reader or open_gguf(path)
    architecture(reader, path)
    if not any(t.name == "token_embd.weight" for t in reader.tensors):
        raise ValueError(f"gguf: {path} has no tensor 'token_embd.weight'")
    dequantizable = {t: _can_dequantize(t) for t in {tensor.tensor_type for tensor in reader.tensors}}
    for tensor in reader.tensors:
        if not dequantizable[tensor.tensor_type]:
            raise ValueError(f"gguf: tensor {tensor.name!r} of {path} has type {tensor.tensor_type.name}, which the "
                             "gguf reader cannot dequantize")
        if tensor.name != ROPE_FREQS:
            hf_tensor_name(tensor.name)
    return reader


def _can_dequantize(qtype: gguf.GGMLQuantizationType) -> bool:
    """Whether the installed `gguf` package dequantizes `qtype` (asked of one zero block, not of a fixed list)."""
    type_size = gguf.GGML_QUANT_SIZES[qtype][1]
    try:
        gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def _float32_literal(x: float) -> float:
    """GGUF stores fp32; 9.999999747e-06 becomes 1e-05, the value the original config.json holds."""
    return float(str(np.float32(x)))


def _dequantized(tensor) -> np.ndarray:
    """fp32 [rows, cols] (GGUF lists dims reversed; the reader's data is already row-major in HF's order)."""
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(tuple(int(d) for d in tensor.shape[::-1]))


def _rope_scaling(reader: gguf.GGUFReader, arch: str) -> dict | None:
    rope_freqs = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if rope_freqs is not None:
        return {"rope_type": "freq_factors", "freq_factors": _dequantized(rope_freqs).reshape(-1).tolist()}
    kind = metadata(reader, f"{arch}.rope.scaling.type", "none")
    if kind == "none":
        return None
    scaling = {"rope_type": kind, "factor": float(metadata(reader, f"{arch}.rope.scaling.factor", 1.0))}
    original = metadata(reader, f"{arch}.rope.scaling.original_context_length", None)
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling  # a type RotaryEmbedding does not implement fails there, naming it


def gguf_hf_config(path: str, reader: gguf.GGUFReader | None = None) -> dict:
    """The HF config.json dict of the model in `path` (ValueError for an unsupported architecture)."""
    reader = reader or open_gguf(path)
    arch = architecture(reader, path)
    key = lambda name, default=_REQUIRED: metadata(reader, f"{arch}.{name}", default)  # noqa: E731
    heads, hidden = key("attention.head_count"), key("embedding_length")
    head_dim = key("attention.key_length", None) or key("rope.dimension_count", None) or hidden // heads
    names = {t.name: t for t in reader.tensors}
    eos = metadata(reader, "tokenizer.ggml.eos_token_id")
    eot = metadata(reader, "tokenizer.ggml.eot_token_id", eos)  # e.g. Llama-3's <|eot_id|> ends chat turns
    hf_type = ARCHITECTURES[arch]
    return {
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                           "qwen3": "Qwen3ForCausalLM"}[hf_type]],
        "model_type": hf_type,
        "vocab_size": int(names["token_embd.weight"].shape[1]),
        "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": key("context_length"),
        "rms_norm_eps": _float32_literal(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32_literal(key("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(reader, arch),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": metadata(reader, "tokenizer.ggml.bos_token_id", None),
        "eos_token_id": eos if eot == eos else [eos, eot],
        "pad_token_id": metadata(reader, "tokenizer.ggml.padding_token_id", eos),
    }


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order (rotary pairs interleaved per head) back to HF's half-split order.

    weight: [num_heads * head_dim, in_features]. Per head, llama.cpp stores rows (0, d/2, 1, d/2+1, ...);
    HF stores (0, 1, ..., d/2-1, d/2, ...): view as [heads, d/2, 2, in] and swap the two middle axes.
    """
    rows = weight.shape[0]
    assert rows % (2 * num_heads) == 0, (rows, num_heads)
    split = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def iter_gguf_weights(path: str, reader: gguf.GGUFReader | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, fp32 tensor) for every weight of the file, one tensor dequantized at a time."""
    reader = check_gguf(path, reader)
    arch = architecture(reader, path)
    heads = metadata(reader, f"{arch}.attention.head_count")
    kv_heads = metadata(reader, f"{arch}.attention.head_count_kv", heads)
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:
            continue  # read into the config's rope_scaling
        weight = _dequantized(tensor)  # [out, in] or [n]
        if arch in _ROPE_PERMUTED and tensor.name.endswith(("attn_q.weight", "attn_q.bias")):
            weight = unpermute_rope_rows(weight, heads)
        elif arch in _ROPE_PERMUTED and tensor.name.endswith(("attn_k.weight", "attn_k.bias")):
            weight = unpermute_rope_rows(weight, kv_heads)
        # Copy: F32 tensors come back as read-only views of the memory-mapped file.
        yield hf_tensor_name(tensor.name), torch.from_numpy(np.array(weight, dtype=np.float32))


# Pre-tokenizers transformers' GGUF converter does not know, by `tokenizer.ggml.pre` (llama.cpp's names).
def _smollm_pre_tokenizer():
    from tokenizers import pre_tokenizers

    # SmolLM's own tokenizer.json: every digit apart, then GPT-2's byte-level split.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


_PRE_TOKENIZERS = {"smollm": _smollm_pre_tokenizer}


def build_tokenizer(path: str):
    """A `PreTrainedTokenizerFast` from the file's metadata: vocab, merges, control tokens as special tokens,
    bos/eos/unk/pad, add_bos_token and the chat template (`tokenizer.chat_template`)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    arch, tokenizer_dict, tokenizer_config = get_gguf_tokenizer(path)  # its reader skips what it does not need
    if arch not in ARCHITECTURES:
        raise ValueError(f"gguf: architecture {arch!r} of {path} is not supported ({', '.join(ARCHITECTURES)})")
    if "tokenizer_type" not in tokenizer_dict:
        raise ValueError(f"gguf: metadata key 'tokenizer.ggml.model' is missing from {path}")
    backend, extra = convert_gguf_tokenizer(arch, tokenizer_dict)
    pre = _PRE_TOKENIZERS.get(tokenizer_dict.get("pre_tokenizer_type"))
    if pre is not None:
        backend.pre_tokenizer = pre()
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                   **tokenizer_config, **extra)
