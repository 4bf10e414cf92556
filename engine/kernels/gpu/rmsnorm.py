"""RMSNorm over the last dim, optionally fused with the residual add that precedes it in a decoder layer.

Semantics are HF LlamaRMSNorm / Qwen2RMSNorm exactly:
  normed = (x.float() * rsqrt(mean(x.float() ** 2, -1) + eps)).to(x.dtype)
  out    = weight * normed                      (then cast to x.dtype)
With a residual, the add happens first in x.dtype, as HF's `residual + hidden_states` does:
  h = (x + residual) in x.dtype;  out = rmsnorm(h);  returns (out, h)
The result is bit-for-bit HF's (up to summation order in the mean) when weight.dtype == x.dtype; a weight of
another float dtype multiplies in fp32 and the result is still x.dtype.

Layout: x (and residual) [..., hidden], contiguous; weight [hidden]. One program per row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.checks import FLOAT_DTYPES, check_shape, check_tensor
from engine.kernels.gpu import check_launchable, round_to


@triton.jit
def _rmsnorm_kernel(
    X, Residual, Weight, Out, Residual_out,
    eps, hidden,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    x = tl.load(X + row * hidden + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        h = (x.to(tl.float32) + tl.load(Residual + row * hidden + offs, mask=mask, other=0.0).to(tl.float32))
        x = round_to(h, X.dtype.element_ty)  # rounded like HF's add in the model dtype; the norm reads it
        tl.store(Residual_out + row * hidden + offs, x, mask=mask)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, 0) / hidden
    normed = round_to(xf * tl.rsqrt(variance + eps), X.dtype.element_ty)
    w = tl.load(Weight + offs, mask=mask, other=0.0)
    out = w.to(tl.float32) * normed.to(tl.float32)
    tl.store(Out + row * hidden + offs, round_to(out, Out.dtype.element_ty), mask=mask)


def rmsnorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Return rmsnorm(x) * weight, or with `residual` the pair (rmsnorm(x + residual) * weight, x + residual).

    Inputs are not modified; outputs are new tensors of x's shape and dtype (semantics in the module docstring).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("x: expected a tensor with at least 1 dim")
    check_tensor("x", x, ndim=x.dim(), dtypes=FLOAT_DTYPES, contiguous=True)
    hidden = x.shape[-1]
    check_tensor("weight", weight, ndim=1, dtypes=FLOAT_DTYPES, device=x.device, contiguous=True)
    check_shape("weight", weight, (hidden,))
    if residual is not None:
        check_tensor("residual", residual, ndim=x.dim(), dtypes=(x.dtype,), device=x.device, contiguous=True)
        check_shape("residual", residual, tuple(x.shape))
    if not eps > 0:
        raise ValueError(f"eps: must be > 0, got {eps!r}")
    check_launchable(_rmsnorm_kernel, x.device)

    out = torch.empty_like(x)
    residual_out = torch.empty_like(x) if residual is not None else None
    num_rows = x.numel() // hidden if hidden else 0
    if num_rows > 0:
        _rmsnorm_kernel[(num_rows,)](
            x, residual if residual is not None else x, weight, out,
            residual_out if residual_out is not None else out,
            float(eps), hidden,
            HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(hidden),
        )
    return out if residual_out is None else (out, residual_out)


def rmsnorm_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `rmsnorm`, written as HF's LlamaRMSNorm (plus its residual add) in plain torch."""
    h = x if residual is None else x + residual
    hf = h.float()
    normed = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    out = (weight * normed).to(x.dtype)
    return out if residual is None else (out, h)
