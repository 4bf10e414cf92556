"""Rotary position embedding, neox style (HF Llama / Qwen2 `rotate_half`), applied IN PLACE to q and k.

For a head vector x, rotary dims r = cos_sin_cache.shape[1] (<= head_dim, even), half = r // 2, and the
token's position p, with c = cache[p, :half] and s = cache[p, half:]:
  x[j]        <- x[j] * c[j] - x[j + half] * s[j]        for j < half
  x[j + half] <- x[j + half] * c[j] + x[j] * s[j]
Dims [r, head_dim) are left untouched. This equals HF's `q * cos + rotate_half(q) * sin` with
cos = cat(c, c), sin = cat(s, s); the kernel computes in fp32 and rounds once, so fp16/bf16 results may differ
from HF's (which rounds each product in the model dtype) by an ulp.

Layouts:
  q              [T, num_heads, head_dim]      (token and head strides free, last dim contiguous)
  k              [T, num_kv_heads, head_dim]
  positions      int64 or int32 [T]
  cos_sin_cache  float32 [max_pos, rotary_dim]: row p = [cos(p * f_0..f_{half-1}), sin(p * f_0..f_{half-1})],
                 f_i = theta ** (-2i / rotary_dim), as built by `build_cos_sin_cache`.
One program per token handles all its q and k heads.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.checks import FLOAT_DTYPES, INDEX_DTYPES, check_shape, check_tensor
from engine.kernels.gpu import check_launchable, round_to


@triton.jit
def _rotate_heads(X, stride_head, num_heads, c, s,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_j = tl.arange(0, BLOCK_HALF)
    mask = (offs_h < num_heads)[:, None] & (offs_j < HALF)[None, :]
    ptrs1 = X + offs_h[:, None] * stride_head + offs_j[None, :]  # [BLOCK_H, BLOCK_HALF]
    x1 = tl.load(ptrs1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptrs1 + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs1, round_to(x1 * c[None, :] - x2 * s[None, :], X.dtype.element_ty), mask=mask)
    tl.store(ptrs1 + HALF, round_to(x2 * c[None, :] + x1 * s[None, :], X.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    Q, K, Positions, Cos_sin_cache,
    stride_q_tok, stride_q_head, stride_k_tok, stride_k_head, stride_cache_pos,
    num_heads, num_kv_heads,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(Positions + tok).to(tl.int64)
    offs_j = tl.arange(0, BLOCK_HALF)
    j_mask = offs_j < HALF
    c = tl.load(Cos_sin_cache + pos * stride_cache_pos + offs_j, mask=j_mask, other=0.0).to(tl.float32)
    s = tl.load(Cos_sin_cache + pos * stride_cache_pos + HALF + offs_j, mask=j_mask, other=0.0).to(tl.float32)
    _rotate_heads(Q + tok * stride_q_tok, stride_q_head, num_heads, c, s, HALF, BLOCK_HQ, BLOCK_HALF)
    _rotate_heads(K + tok * stride_k_tok, stride_k_head, num_kv_heads, c, s, HALF, BLOCK_HK, BLOCK_HALF)


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k IN PLACE by their tokens' positions (module docstring); return (q, k) for chaining.

    Positions must lie in [0, cos_sin_cache.shape[0]); they are trusted, not range-checked.
    """
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    device = q.device
    num_tokens, num_heads, head_dim = q.shape
    check_tensor("k", k, ndim=3, dtypes=(q.dtype,), device=device)
    if k.shape[0] != num_tokens or k.shape[2] != head_dim:
        raise ValueError(f"k: expected shape ({num_tokens}, num_kv_heads, {head_dim}), got {tuple(k.shape)}")
    check_tensor("positions", positions, ndim=1, dtypes=INDEX_DTYPES, device=device, contiguous=True)
    check_shape("positions", positions, (num_tokens,))
    check_tensor("cos_sin_cache", cos_sin_cache, ndim=2, dtypes=(torch.float32,), device=device)
    rotary_dim = cos_sin_cache.shape[1]
    if rotary_dim % 2 != 0 or not 0 < rotary_dim <= head_dim:
        raise ValueError(f"cos_sin_cache: rotary_dim {rotary_dim} must be even and in (0, head_dim={head_dim}]")
    check_launchable(_rotary_kernel, device)
    if num_tokens == 0:
        return q, k

    half = rotary_dim // 2
    _rotary_kernel[(num_tokens,)](
        q, k, positions, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        num_heads, k.shape[1],
        HALF=half, BLOCK_HALF=triton.next_power_of_2(half),
        BLOCK_HQ=triton.next_power_of_2(num_heads), BLOCK_HK=triton.next_power_of_2(max(k.shape[1], 1)),
    )
    return q, k


def build_cos_sin_cache(
    head_dim: int,
    max_pos: int,
    theta: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Return the [max_pos, head_dim] cache (cos of the head_dim/2 frequencies, then their sin).

    Frequencies and angles are computed in fp32 in the same order as HF's default RoPE (no rope scaling),
    so the values equal HF's cos/sin before their cast to the model dtype. `apply_rotary` needs float32.
    """
    if head_dim <= 0 or head_dim % 2 != 0:
        raise ValueError(f"head_dim: must be a positive even int, got {head_dim!r}")
    if max_pos <= 0:
        raise ValueError(f"max_pos: must be > 0, got {max_pos!r}")
    if not theta > 0:
        raise ValueError(f"theta: must be > 0, got {theta!r}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)  # [head_dim / 2]
    angles = torch.arange(max_pos, dtype=torch.int64, device=device).float()[:, None] * inv_freq[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype)


def apply_rotary_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same rotation as `apply_rotary` via HF's rotate_half formula in fp32; returns NEW tensors (inputs kept)."""
    half = cos_sin_cache.shape[1] // 2
    cache = cos_sin_cache[positions.long()].float()  # [T, 2 * half]
    cos = torch.cat((cache[:, :half], cache[:, :half]), -1)[:, None, :]  # [T, 1, rotary_dim]
    sin = torch.cat((cache[:, half:], cache[:, half:]), -1)[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        rot, rest = x[..., :2 * half], x[..., 2 * half:]
        rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), -1)
        return torch.cat((rot * cos + rotated_half * sin, rest), -1)

    return rotate(q).to(q.dtype), rotate(k).to(k.dtype)
