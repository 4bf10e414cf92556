"""The attention-backend interface and the per-step tensors every backend reads (`ForwardBatch`).

Contract of `forward(q, k, v, layer_id, fb)`:
- q [T, H, D], k and v [T, KVH, D] are the step's T new tokens (requests concatenated in batch order);
- the backend first stores k/v into the pool at `fb.out_cache_loc`, then computes attention of each new token
  over its request's positions [0, seq_len) read through `fb.req_to_token[fb.req_pool_indices[b]]`, causal
  among the new tokens; it returns o [T, H * D] in q's dtype.
`init_forward(fb)` runs once per step before the layers, for metadata shared by all layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.forward_mode import ForwardMode, default_num_extend

@dataclass
class ForwardBatch:
    mode: ForwardMode
    batch_size: int
    req_pool_indices: torch.Tensor  # int64 [B]
    seq_lens: torch.Tensor  # int64 [B], after this step
    prefix_lens: torch.Tensor  # int64 [B]
    extend_lens: torch.Tensor  # int64 [B]
    extend_start_loc: torch.Tensor  # int64 [B], offset of each request's first new token in the T tokens
    positions: torch.Tensor  # int64 [T]
    out_cache_loc: torch.Tensor  # int64 [T]
    last_token_index: torch.Tensor  # int64 [B], index of each request's last new token in the T tokens
    req_to_token: torch.Tensor  # int32 [max_reqs, max_context]
    kv_pool: Any  # engine.memory.KVPool
    attn_backend: "AttentionBackend"
    sm_scale: float
    seq_lens_list: list[int]
    prefix_lens_list: list[int]
    extend_lens_list: list[int]
    num_extend: int = -1  # requests [0, num_extend) extend, the rest decode one token each; given for MIXED

    def __post_init__(self) -> None:
        if self.num_extend < 0:
            self.num_extend = default_num_extend(self.mode, self.batch_size)


class AttentionBackend:
    def init_forward(self, fb: ForwardBatch) -> None:
        """Per-step metadata shared by all layers (default: none)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                fb: ForwardBatch) -> torch.Tensor:
        raise NotImplementedError
