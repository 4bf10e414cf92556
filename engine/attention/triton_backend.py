"""Triton attention backend: extend_attention for prefill steps, split-KV decode_attention for decode steps.

Runs on CUDA, or on CPU under the Triton interpreter (TRITON_INTERPRET=1 before engine.kernels is imported;
slow, for tests). Interface and ForwardBatch fields: engine/attention/base.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention.base import AttentionBackend, ForwardBatch
from engine.kernels.gpu.decode_attention import decode_attention
from engine.kernels.gpu.extend_attention import extend_attention
from engine.forward_mode import ForwardMode


@dataclass
class _StepMeta:
    """What init_forward derives once per step for all layers."""

    mode: ForwardMode
    max_extend_len: int = 0  # EXTEND: sizes the kernel grid without a device sync
    num_kv_splits: int = 1  # DECODE
    part_out: torch.Tensor | None = None  # DECODE: float32 [B, H, num_kv_splits, D], reused by every layer
    part_lse: torch.Tensor | None = None  # DECODE: float32 [B, H, num_kv_splits]


class TritonAttentionBackend(AttentionBackend):
    """Attention through the Triton kernels of engine/kernels.

    Decode splits each request's keys into num_kv_splits = cdiv(longest seq_len, min_tokens_per_split)
    chunks, capped at max_kv_splits: short batches run one split, long contexts spread over more programs.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, device: str | torch.device,
                 *, max_kv_splits: int = 8, min_tokens_per_split: int = 128):
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads: {num_heads} is not a positive multiple of num_kv_heads {num_kv_heads}")
        if head_dim < 1:
            raise ValueError(f"head_dim: must be >= 1, got {head_dim}")
        if max_kv_splits < 1:
            raise ValueError(f"max_kv_splits: must be >= 1, got {max_kv_splits}")
        if min_tokens_per_split < 1:
            raise ValueError(f"min_tokens_per_split: must be >= 1, got {min_tokens_per_split}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.device = torch.device(device)
        self.max_kv_splits = max_kv_splits
        self.min_tokens_per_split = min_tokens_per_split
        self._meta: _StepMeta | None = None

    def init_forward(self, fb: ForwardBatch) -> None:
        if fb.mode is ForwardMode.DECODE:
            longest = max(fb.seq_lens_list, default=1)
            num_kv_splits = max(1, min(self.max_kv_splits, -(-longest // self.min_tokens_per_split)))
            shape = (fb.batch_size, self.num_heads, num_kv_splits)
            self._meta = _StepMeta(
                mode=fb.mode, num_kv_splits=num_kv_splits,
                part_out=torch.empty(*shape, self.head_dim, dtype=torch.float32, device=self.device),
                part_lse=torch.empty(*shape, dtype=torch.float32, device=self.device),
            )
        elif fb.mode in (ForwardMode.EXTEND, ForwardMode.MIXED):  # a decode token is a 1-token extend here
            self._meta = _StepMeta(mode=fb.mode, max_extend_len=max(fb.extend_lens_list, default=0))
        else:
            raise ValueError(f"mode: unsupported forward mode {fb.mode!r}")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                fb: ForwardBatch) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D] of the step's new tokens -> o [T, H * D] in q's dtype."""
        meta = self._meta
        if meta is None or meta.mode is not fb.mode:
            raise ValueError("fb: init_forward was not called for this step")
        fb.kv_pool.set_kv(layer_id, fb.out_cache_loc, k, v)
        k_buf, v_buf = fb.kv_pool.get_kv(layer_id)

        num_tokens = q.shape[0]
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)  # a view for q sliced out of a fused qkv
        # The kernels read q and the pool in one dtype; a pool kept in another dtype gets q converted to it.
        q_kernel = q if q.dtype == k_buf.dtype else q.to(k_buf.dtype)
        o = torch.empty(num_tokens, self.num_heads, self.head_dim, dtype=q_kernel.dtype, device=q.device)
        if fb.mode is ForwardMode.DECODE:
            decode_attention(q_kernel, k_buf, v_buf, o, fb.req_to_token, fb.req_pool_indices, fb.seq_lens,
                             fb.sm_scale, meta.num_kv_splits, part_out=meta.part_out, part_lse=meta.part_lse)
        else:
            extend_attention(q_kernel, k_buf, v_buf, o, fb.req_to_token, fb.req_pool_indices, fb.prefix_lens,
                             fb.extend_lens, fb.extend_start_loc, fb.sm_scale, max_extend_len=meta.max_extend_len)
        return o.to(q.dtype).view(num_tokens, self.num_heads * self.head_dim)
