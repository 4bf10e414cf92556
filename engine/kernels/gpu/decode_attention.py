"""Decode attention over the token-slot KV pool: split-KV flash decoding in two stages.

Each request has one new query token whose K/V are already stored in the pool; it attends to all positions
[0, seq_lens[b]) of its request (seq_lens includes the new token).

Layouts:
  q, o          [batch, num_heads, head_dim]
  k_buf, v_buf  [num_slots, num_kv_heads, head_dim], one layer of the pool
  req_to_token  int32 [max_reqs, max_context]: (request row, position) -> slot; row req_pool_indices[b]
  part_out      float32 [batch, num_heads, num_kv_splits, head_dim]: stage-1 output of each split,
                already divided by that split's softmax sum
  part_lse      float32 [batch, num_heads, num_kv_splits]: log2-sum-exp2 of that split's scaled scores
                (-inf for a split with no keys)

Stage 1, one program per (request, kv head, split): the split covers positions
[split * L, min((split + 1) * L, seq_len)) with L = cdiv(seq_len, num_kv_splits); the program handles all
query heads of its kv head together (GQA), so each K/V block is loaded once per group.
Stage 2, one program per (request, query head): rescales the splits by their log-sum-exp and sums them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.checks import FLOAT_DTYPES, INDEX_DTYPES, check_shape, check_tensor
from engine.kernels.gpu import check_launchable, dot_in_fp32, is_interpreted, round_to

_LOG2E = 1.4426950408889634


@triton.jit
def _decode_split_kernel(
    Q, K_buf, V_buf, Req_to_token, Req_pool_indices, Seq_lens, Part_out, Part_lse,
    qk_scale,  # sm_scale * log2(e): the softmax runs in base 2
    stride_q_req, stride_q_head, stride_k_slot, stride_k_head, stride_v_slot, stride_v_head,
    stride_req_row,
    GROUP: tl.constexpr, NUM_KV_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr,
):
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq_len = tl.load(Seq_lens + req).to(tl.int32)
    split_len = tl.cdiv(seq_len, NUM_KV_SPLITS)
    split_start = split * split_len
    split_end = tl.minimum(split_start + split_len, seq_len)
    table_row = Req_to_token + tl.load(Req_pool_indices + req).to(tl.int64) * stride_req_row

    offs_h = tl.arange(0, BLOCK_H)  # query heads of this kv head, padded to a dot-friendly height
    offs_d = tl.arange(0, BLOCK_D)
    h_mask = offs_h < GROUP
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_h
    q = tl.load(Q + req * stride_q_req + heads[:, None] * stride_q_head + offs_d[None, :],
                mask=h_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_H, BLOCK_D]
    if DOT_FP32:
        q = q.to(tl.float32)

    # Finite start value so an all-masked block never computes inf - inf.
    m_i = tl.full([BLOCK_H], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for kv_start in range(split_start, split_end, BLOCK_N):
        offs_n = kv_start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < split_end
        slots = tl.load(table_row + offs_n, mask=n_mask, other=0).to(tl.int64)
        # Masked loads give 0, never a stale slot's contents (which may be NaN/inf garbage).
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(K_buf + slots[:, None] * stride_k_slot + kv_head * stride_k_head + offs_d[None, :],
                    mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        v = tl.load(V_buf + slots[:, None] * stride_v_slot + kv_head * stride_v_head + offs_d[None, :],
                    mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        if DOT_FP32:
            qk = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))
        qk = tl.where(n_mask[None, :], qk * qk_scale, float("-inf"))  # [BLOCK_H, BLOCK_N]

        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DOT_FP32:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    # Every split is written, empty ones as (0, -inf), so stage 2 needs no knowledge of the split ranges.
    has_keys = l_i > 0.0
    out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    part_row = (req * (GROUP * tl.num_programs(1)) + heads) * NUM_KV_SPLITS + split  # [BLOCK_H]
    tl.store(Part_out + part_row[:, None] * HEAD_DIM + offs_d[None, :], out,
             mask=h_mask[:, None] & d_mask[None, :])
    tl.store(Part_lse + part_row, lse, mask=h_mask)


@triton.jit
def _decode_reduce_kernel(
    Part_out, Part_lse, O,
    stride_o_req, stride_o_head,
    NUM_KV_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < NUM_KV_SPLITS
    d_mask = offs_d < HEAD_DIM
    base = (req * tl.num_programs(1) + head) * NUM_KV_SPLITS
    lse = tl.load(Part_lse + base + offs_s, mask=s_mask, other=float("-inf"))  # [BLOCK_S]
    part = tl.load(Part_out + (base + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                   mask=s_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    # Split 0 always has keys when seq_len >= 1, so lse_max is finite and empty splits weigh exp2(-inf) = 0.
    weight = tl.exp2(lse - tl.max(lse, 0))
    out = tl.sum(weight[:, None] * part, 0) / tl.sum(weight, 0)
    tl.store(O + req * stride_o_req + head * stride_o_head + offs_d, round_to(out, O.dtype.element_ty), mask=d_mask)


def decode_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    o: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: float,
    num_kv_splits: int = 8,
    *,
    part_out: torch.Tensor | None = None,
    part_lse: torch.Tensor | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Write each request's attention output into `o` (layouts in the module docstring); return `o`.

    Every seq_lens[b] must be >= 1. `part_out` / `part_lse` are the stage-1 scratch buffers (allocated here
    when None; pass them to reuse one allocation across layers). Index contents are trusted.
    """
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    device = q.device
    batch, num_heads, head_dim = q.shape
    check_tensor("o", o, ndim=3, dtypes=(q.dtype,), device=device)
    check_shape("o", o, tuple(q.shape))
    check_tensor("k_buf", k_buf, ndim=3, dtypes=(q.dtype,), device=device)
    check_tensor("v_buf", v_buf, ndim=3, dtypes=(q.dtype,), device=device)
    check_shape("v_buf", v_buf, tuple(k_buf.shape))
    num_kv_heads = k_buf.shape[1]
    if k_buf.shape[2] != head_dim:
        raise ValueError(f"k_buf: head_dim {k_buf.shape[2]} != q head_dim {head_dim}")
    if num_kv_heads == 0 or num_heads % num_kv_heads != 0:
        raise ValueError(f"k_buf: num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    check_tensor("req_to_token", req_to_token, ndim=2, dtypes=(torch.int32,), device=device)
    for name, t in (("req_pool_indices", req_pool_indices), ("seq_lens", seq_lens)):
        check_tensor(name, t, ndim=1, dtypes=INDEX_DTYPES, device=device, contiguous=True)
        check_shape(name, t, (batch,))
    if not isinstance(num_kv_splits, int) or num_kv_splits < 1:
        raise ValueError(f"num_kv_splits: must be an int >= 1, got {num_kv_splits!r}")
    if part_out is None:
        part_out = torch.empty(batch, num_heads, num_kv_splits, head_dim, dtype=torch.float32, device=device)
    if part_lse is None:
        part_lse = torch.empty(batch, num_heads, num_kv_splits, dtype=torch.float32, device=device)
    check_tensor("part_out", part_out, ndim=4, dtypes=(torch.float32,), device=device, contiguous=True)
    check_shape("part_out", part_out, (batch, num_heads, num_kv_splits, head_dim))
    check_tensor("part_lse", part_lse, ndim=3, dtypes=(torch.float32,), device=device, contiguous=True)
    check_shape("part_lse", part_lse, (batch, num_heads, num_kv_splits))
    check_launchable(_decode_split_kernel, device)
    if batch == 0:
        return o

    group = num_heads // num_kv_heads
    block_d = triton.next_power_of_2(head_dim)
    if block_n is None:
        block_n = 64 if is_interpreted(_decode_split_kernel) else 32
    _decode_split_kernel[(batch, num_kv_heads, num_kv_splits)](
        q, k_buf, v_buf, req_to_token, req_pool_indices, seq_lens, part_out, part_lse,
        float(sm_scale) * _LOG2E,
        q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), v_buf.stride(0), v_buf.stride(1),
        req_to_token.stride(0),
        GROUP=group, NUM_KV_SPLITS=num_kv_splits, HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_H=max(16, triton.next_power_of_2(group)),  # tl.dot needs at least 16 rows on GPU
        BLOCK_N=block_n, DOT_FP32=dot_in_fp32(_decode_split_kernel, q.dtype),
    )
    _decode_reduce_kernel[(batch, num_heads)](
        part_out, part_lse, o, o.stride(0), o.stride(1),
        NUM_KV_SPLITS=num_kv_splits, HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_S=triton.next_power_of_2(num_kv_splits),
    )
    return o


def decode_attention_reference(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: float,
) -> torch.Tensor:
    """Same contract as `decode_attention`, in plain torch, one request at a time; returns a new float32 `o`."""
    batch, num_heads, head_dim = q.shape
    group = num_heads // k_buf.shape[1]
    o = torch.zeros(batch, num_heads, head_dim, dtype=torch.float32, device=q.device)
    for b in range(batch):
        slots = req_to_token[int(req_pool_indices[b]), :int(seq_lens[b])].long()
        k = k_buf[slots].float().repeat_interleave(group, dim=1)  # [seq_len, num_heads, head_dim]
        v = v_buf[slots].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,shd->hs", q[b].float(), k) * sm_scale
        o[b] = torch.einsum("hs,shd->hd", scores.softmax(-1), v)
    return o
