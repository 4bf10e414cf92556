"""Tensor-parallel sharding of a Llama / Qwen2 checkpoint, at the weight level (no layer code changes).

Rank r of N holds (Megatron layout):
- column-parallel q/k/v and gate/up: q heads [r·H/N, (r+1)·H/N), its KV heads, intermediate rows
  [r·I/N, (r+1)·I/N) of gate and of up (q/k/v biases sliced the same way);
- row-parallel o and down: the matching input columns; their outputs are partial sums that the model
  all-reduces (engine/models/llama.py);
- KV heads: [r·KV/N, (r+1)·KV/N) when KV >= N; when KV < N each KV head is replicated on N/KV ranks and rank r
  holds head r // (N/KV), which is the KV head of each of its q heads (GQA groups never straddle ranks);
- vocab-parallel embedding and lm_head: rows [r·V', (r+1)·V') with V' = ceil(V/N); rows past the real vocab
  are zero and their logits are cut after the gather;
- norms: replicated.
`shard_config` is the per-rank model shape: building the model from it gives every module its local size.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import torch

from engine.config import ModelConfig


def check_tp_size(cfg: ModelConfig, tp_size: int) -> None:
    """ValueError naming tp_size when the model cannot be split N ways (checked at startup)."""
    heads, kv, inter = cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    if tp_size > heads:
        raise ValueError(f"tp_size: {tp_size} is larger than the model's {heads} attention heads")
    if heads % tp_size:
        raise ValueError(f"tp_size: {tp_size} does not divide the model's {heads} attention heads")
    if kv >= tp_size and kv % tp_size:
        raise ValueError(f"tp_size: {tp_size} does not divide the model's {kv} key/value heads")
    if kv < tp_size and tp_size % kv:
        raise ValueError(f"tp_size: the model's {kv} key/value heads cannot be replicated evenly over {tp_size} "
                         "ranks (tp_size must be a multiple of them)")
    if inter % tp_size:
        raise ValueError(f"tp_size: {tp_size} does not divide the model's intermediate size {inter}")


def vocab_shard(vocab_size: int, rank: int, tp_size: int) -> tuple[int, int]:
    """(first id, rows per rank) of rank's vocab slice; the last slices may run past vocab_size (zero rows)."""
    per_rank = -(-vocab_size // tp_size)
    return rank * per_rank, per_rank


def kv_heads_of(cfg: ModelConfig, rank: int, tp_size: int) -> tuple[int, int]:
    """(first KV head, number of KV heads) that rank holds."""
    kv = cfg.num_kv_heads
    if kv >= tp_size:
        return rank * (kv // tp_size), kv // tp_size
    return rank // (tp_size // kv), 1


def shard_config(cfg: ModelConfig, tp_size: int) -> ModelConfig:
    """The per-rank shape (the same on every rank)."""
    if tp_size == 1:
        return cfg
    return dataclasses.replace(cfg, num_heads=cfg.num_heads // tp_size,
                               num_kv_heads=kv_heads_of(cfg, 0, tp_size)[1],
                               intermediate_size=cfg.intermediate_size // tp_size,
                               vocab_size=vocab_shard(cfg.vocab_size, 0, tp_size)[1])


def shard_weights(weights: Iterable[tuple[str, torch.Tensor]], cfg: ModelConfig, rank: int,
                  tp_size: int) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-named full tensors → the same names with rank's slice (see the module docstring)."""
    if tp_size == 1:
        yield from weights
        return
    d = cfg.head_dim
    q_per = cfg.num_heads // tp_size * d
    kv_first, kv_count = kv_heads_of(cfg, rank, tp_size)
    i_per = cfg.intermediate_size // tp_size
    v_first, v_per = vocab_shard(cfg.vocab_size, rank, tp_size)
    for name, t in weights:
        leaf = name.split(".")
        if "q_proj" in leaf:
            t = t.narrow(0, rank * q_per, q_per)
        elif "k_proj" in leaf or "v_proj" in leaf:
            t = t.narrow(0, kv_first * d, kv_count * d)
        elif "gate_proj" in leaf or "up_proj" in leaf:
            t = t.narrow(0, rank * i_per, i_per)
        elif "o_proj" in leaf:
            t = t.narrow(1, rank * q_per, q_per)
        elif "down_proj" in leaf:
            t = t.narrow(1, rank * i_per, i_per)
        elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
            rows = t[v_first : v_first + v_per]
            if rows.shape[0] < v_per:  # the vocab's tail slice: pad with zero rows
                rows = torch.cat([rows, rows.new_zeros(v_per - rows.shape[0], rows.shape[1])])
            t = rows
        yield name, t
