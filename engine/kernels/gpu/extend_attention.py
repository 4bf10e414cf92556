"""Extend (prefill) attention over the token-slot KV pool, with a cached prefix and causal new tokens.

Computes, for every request b and every new token i in [0, extend_lens[b]) (sequence position
prefix_lens[b] + i), softmax attention of its query against the keys/values at positions
[0, prefix_lens[b] + i] of that request: the whole cached prefix plus the new tokens up to itself.

Layouts:
  q, o          [total_extend_tokens, num_heads, head_dim]; request b's rows are
                [extend_start_loc[b], extend_start_loc[b] + extend_lens[b])
  k_buf, v_buf  [num_slots, num_kv_heads, head_dim], one layer of the pool; the new tokens' K/V are ALREADY
                stored at their slots
  req_to_token  int32 [max_reqs, max_context]: (request row, position) -> slot; row req_pool_indices[b]
                holds request b's positions [0, prefix_lens[b] + extend_lens[b]). Pages only change which
                slots appear here, so the kernel is page-size agnostic.
GQA: query head h reads kv head h // (num_heads // num_kv_heads).

One program per (request, query head, block of BLOCK_M new tokens) runs one online-softmax pass over the
keys [0, prefix + last token of the block), masking causally inside the new tokens.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.checks import FLOAT_DTYPES, INDEX_DTYPES, check_shape, check_tensor
from engine.kernels.gpu import check_launchable, dot_in_fp32, is_interpreted, round_to

_LOG2E = 1.4426950408889634


@triton.jit
def _extend_attention_kernel(
    Q, K_buf, V_buf, O,
    Req_to_token, Req_pool_indices, Prefix_lens, Extend_lens, Extend_start_loc,
    qk_scale,  # sm_scale * log2(e): the softmax runs in base 2
    stride_q_tok, stride_q_head, stride_k_slot, stride_k_head, stride_v_slot, stride_v_head,
    stride_o_tok, stride_o_head, stride_req_row,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    m_block = tl.program_id(2)
    kv_head = head // GROUP

    extend_len = tl.load(Extend_lens + req).to(tl.int32)
    if m_block * BLOCK_M < extend_len:
        prefix_len = tl.load(Prefix_lens + req).to(tl.int32)
        first_row = tl.load(Extend_start_loc + req).to(tl.int64)
        table_row = Req_to_token + tl.load(Req_pool_indices + req).to(tl.int64) * stride_req_row

        offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)  # index among this request's new tokens
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < extend_len
        d_mask = offs_d < HEAD_DIM
        q_ptrs = Q + (first_row + offs_m)[:, None] * stride_q_tok + head * stride_q_head + offs_d[None, :]
        q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
        if DOT_FP32:
            q = q.to(tl.float32)
        q_pos = prefix_len + offs_m  # [BLOCK_M] sequence positions of the queries

        # Finite start value: a row whose first key block were all masked would otherwise give inf - inf.
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

        # Keys past the block's last query are masked for every row of the block: stop there.
        kv_end = tl.minimum(prefix_len + extend_len, prefix_len + (m_block + 1) * BLOCK_M)
        for kv_start in range(0, kv_end, BLOCK_N):
            offs_n = kv_start + tl.arange(0, BLOCK_N)
            n_mask = offs_n < kv_end
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
            visible = n_mask[None, :] & (offs_n[None, :] <= q_pos[:, None])
            qk = tl.where(visible, qk * qk_scale, float("-inf"))  # [BLOCK_M, BLOCK_N]

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

        out = acc / l_i[:, None]
        o_ptrs = O + (first_row + offs_m)[:, None] * stride_o_tok + head * stride_o_head + offs_d[None, :]
        tl.store(o_ptrs, round_to(out, O.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def extend_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    o: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    extend_start_loc: torch.Tensor,
    sm_scale: float,
    *,
    max_extend_len: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Write the attention output of every new token into `o` (layouts in the module docstring); return `o`.

    `max_extend_len` (an upper bound of extend_lens) sizes the grid; when None it is read from `extend_lens`,
    which synchronizes with the device. Contents of the index tensors are trusted (not range-checked).
    """
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    device = q.device
    num_tokens, num_heads, head_dim = q.shape
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
    batch = req_pool_indices.shape[0] if isinstance(req_pool_indices, torch.Tensor) else -1
    for name, t in (("req_pool_indices", req_pool_indices), ("prefix_lens", prefix_lens),
                    ("extend_lens", extend_lens), ("extend_start_loc", extend_start_loc)):
        check_tensor(name, t, ndim=1, dtypes=INDEX_DTYPES, device=device, contiguous=True)
        check_shape(name, t, (batch,))
    check_launchable(_extend_attention_kernel, device)
    if num_tokens == 0 or batch == 0:
        return o
    if max_extend_len is None:
        max_extend_len = int(extend_lens.max().item())
    if max_extend_len <= 0:
        return o

    interpreted = is_interpreted(_extend_attention_kernel)
    block_d = triton.next_power_of_2(head_dim)
    # Interpreted cost grows with program count: fewer, bigger blocks there.
    if block_m is None:
        block_m = 64 if interpreted else (64 if head_dim <= 128 else 32)
    if block_n is None:
        block_n = 64 if interpreted else (64 if head_dim <= 64 else 32)
    grid = (batch, num_heads, triton.cdiv(max_extend_len, block_m))
    _extend_attention_kernel[grid](
        q, k_buf, v_buf, o,
        req_to_token, req_pool_indices, prefix_lens, extend_lens, extend_start_loc,
        float(sm_scale) * _LOG2E,
        q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), v_buf.stride(0), v_buf.stride(1),
        o.stride(0), o.stride(1), req_to_token.stride(0),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_M=block_m, BLOCK_N=block_n, DOT_FP32=dot_in_fp32(_extend_attention_kernel, q.dtype),
    )
    return o


def extend_attention_reference(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    extend_start_loc: torch.Tensor,
    sm_scale: float,
) -> torch.Tensor:
    """Same contract as `extend_attention`, in plain torch, one request at a time; returns a new float32 `o`."""
    num_tokens, num_heads, head_dim = q.shape
    group = num_heads // k_buf.shape[1]
    o = torch.zeros(num_tokens, num_heads, head_dim, dtype=torch.float32, device=q.device)
    for b in range(req_pool_indices.shape[0]):
        prefix_len, extend_len = int(prefix_lens[b]), int(extend_lens[b])
        start = int(extend_start_loc[b])
        seq_len = prefix_len + extend_len
        slots = req_to_token[int(req_pool_indices[b]), :seq_len].long()
        k = k_buf[slots].float().repeat_interleave(group, dim=1)  # [seq_len, num_heads, head_dim]
        v = v_buf[slots].float().repeat_interleave(group, dim=1)
        qb = q[start:start + extend_len].float()  # [extend_len, num_heads, head_dim]
        scores = torch.einsum("thd,shd->hts", qb, k) * sm_scale
        q_pos = prefix_len + torch.arange(extend_len, device=q.device)
        visible = torch.arange(seq_len, device=q.device)[None, :] <= q_pos[:, None]  # [extend_len, seq_len]
        scores = scores.masked_fill(~visible, float("-inf"))
        o[start:start + extend_len] = torch.einsum("hts,shd->thd", scores.softmax(-1), v)
    return o
