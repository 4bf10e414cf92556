"""Loading at real sizes: decoder layers quantized as their tensors arrive, and dummy (random) weights.

Peak memory stays near the final size: a decoder layer's dense linears exist only between the first and the last
of its checkpoint tensors (they are materialised then, and replaced by `QuantizedLinear`s right after). A
safetensors file lists each layer's tensors together (sorted names), so at most one or two layers are dense at a
time; a layer split across shards stays dense until its last tensor arrives.

Dummy weights (`--load-format dummy`, SGLang's name) are drawn tensor by tensor from one seeded generator in
checkpoint order, through the same `load_weights` a real checkpoint goes through: same seed, same weights.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Iterator

import torch
from torch import nn

from engine.models.layers import BucketedLinear
from engine.models.quant import QuantizedLinear

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
DUMMY_STD = 0.02  # like HF's initializer_range for Qwen2 / Llama
DUMMY_NORM_NOISE = 0.1  # norm weights are 1 + U(-this, this): a dropped norm weight changes outputs


def layer_index(name: str) -> int | None:
    """The decoder layer a checkpoint tensor belongs to ('model.layers.7.mlp.up_proj.weight' -> 7), else None."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def layer_linears(layer: nn.Module) -> list[tuple[str, nn.Module, str, BucketedLinear]]:
    """(qualified name, parent, attribute, linear) of every dense linear inside one decoder layer."""
    found = []
    for qualname, module in layer.named_modules():
        if isinstance(module, BucketedLinear):
            parent_name, _, attr = qualname.rpartition(".")
            found.append((qualname, layer.get_submodule(parent_name), attr, module))
    return found


def quantize_linear(parent: nn.Module, attr: str, method: str, group_size: int, name: str) -> None:
    """Replace `parent.attr` (a dense linear) by its QuantizedLinear; the dense weight is freed with it."""
    dense = getattr(parent, attr)
    setattr(parent, attr, QuantizedLinear.from_dense(dense.weight.detach(), dense.bias, method, group_size, name))


def stream_quantized(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], method: str, group_size: int,
                     device: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass `weights` (HF names) through to `model.load_weights`, materialising each decoder layer's linears on
    `device` before its first tensor and quantizing them after its last. The layers' linears must still be on
    the meta device (see `materialize`)."""
    expected = [0] * len(model.layers)
    for name, _ in model.checkpoint_tensors():
        i = layer_index(name)
        if i is not None:
            expected[i] += 1
    seen = [0] * len(model.layers)
    for name, tensor in weights:
        # old Llama checkpoints carry per-layer rotary tables that load_weights skips: they count for nothing
        i = None if "rotary_emb.inv_freq" in name else layer_index(name)
        if i is not None and 0 <= i < len(seen) and seen[i] == 0:
            for _, _, _, lin in layer_linears(model.layers[i]):
                lin.to_empty(device=device)
        yield name, tensor  # load_weights copies it before asking for the next one
        if i is None or not 0 <= i < len(seen):
            continue
        seen[i] += 1
        if seen[i] == expected[i]:
            for qualname, parent, attr, _ in layer_linears(model.layers[i]):
                quantize_linear(parent, attr, method, group_size, f"layers.{i}.{qualname}")


def materialize(model: nn.Module, device: str, keep_layer_linears_meta: bool) -> None:
    """Allocate (uninitialised) every parameter and buffer of a meta-built model on `device`, except, when asked,
    the decoder layers' linears (`stream_quantized` allocates them one layer at a time)."""
    skip: set[int] = set()
    if keep_layer_linears_meta:
        for layer in model.layers:
            skip.update(id(lin) for *_, lin in layer_linears(layer))
    for module in model.modules():
        if id(module) not in skip:
            module.to_empty(device=device, recurse=False)


def dummy_weights(model: nn.Module, seed: int, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Random HF-named tensors of `model`'s checkpoint shapes, deterministic in `seed`: matrices and biases
    uniform with std DUMMY_STD, norm weights 1 + U(-DUMMY_NORM_NOISE, DUMMY_NORM_NOISE). One tensor at a time."""
    gen = torch.Generator().manual_seed(seed)
    half_width = DUMMY_STD * math.sqrt(3.0)  # U(-a, a) has std a / sqrt(3)
    for name, shape in model.checkpoint_tensors():
        t = torch.empty(shape, dtype=dtype)
        if len(shape) == 1 and "norm" in name:
            t.uniform_(1.0 - DUMMY_NORM_NOISE, 1.0 + DUMMY_NORM_NOISE, generator=gen)
        else:
            t.uniform_(-half_width, half_width, generator=gen)
        yield name, t
