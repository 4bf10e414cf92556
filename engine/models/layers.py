"""Building blocks shared by the Llama-family models: RMSNorm, rotary embedding, fused SiLU MLP, bucketed linear.

Semantics follow HF transformers' Llama/Qwen2 exactly (norm in fp32 then cast, neox-style rotary), because
parity with HF logits is the first test every model passes.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.kernel: Callable | None = None  # engine.kernels.gpu.rmsnorm.rmsnorm once use_triton_kernels ran

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """x [T, hidden]. With `residual`, returns (norm(x + residual), x + residual) like a fused add-norm."""
        if self.kernel is not None:
            return self.kernel(x.contiguous(), self.weight, self.eps,
                               None if residual is None else residual.contiguous())
        if residual is not None:
            x = x + residual
            residual = x
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * h.to(dtype)
        return out if residual is None else (out, residual)


def _inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(is_mid, mid, scaled)
    if kind == "freq_factors":  # a GGUF's rope_freqs tensor (engine/models/gguf_file.py): llama.cpp's divisors
        factors = torch.tensor(scaling["freq_factors"], dtype=torch.float64)
        if factors.shape != inv_freq.shape:
            raise ValueError(f"rope_scaling: {factors.numel()} freq_factors for {inv_freq.numel()} frequencies")
        return inv_freq / factors
    raise ValueError(f"rope_scaling: type {kind!r} is not supported (default, linear, llama3, freq_factors)")


class RotaryEmbedding(nn.Module):
    """Neox-style rotary (rotate_half). cos_sin [max_pos, head_dim]: first half cos, second half sin."""

    def __init__(self, head_dim: int, max_pos: int, theta: float, scaling: dict | None = None):
        super().__init__()
        inv_freq = _inv_freq(head_dim, theta, scaling)
        t = torch.arange(max_pos, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)  # [max_pos, head_dim / 2]
        cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1).float()
        self.register_buffer("cos_sin", cache, persistent=False)
        self.half = head_dim // 2
        self.kernel: Callable | None = None  # in place: engine.kernels.gpu.rotary (Triton) or engine/kernels/cpu/rotary.py
        self._step_key: tuple[torch.Tensor, torch.dtype] | None = None
        self._step_cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """positions [T]; q [T, H, D]; k [T, KVH, D] -> rotated (q, k) in their dtype (in place with the kernel)."""
        if self.kernel is not None:
            return self.kernel(q, k, positions, self.cos_sin)
        cos, sin = self._cos_sin(positions, q.dtype)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    def _cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """([T, 1, D] cos, [T, 1, D] sign-folded sin) for `positions`, built once per forward: every layer gets
        the same positions tensor, and the gather and casts were a tenth of a CPU decode step's small ops."""
        key = (positions, dtype)
        if self._step_key is None or self._step_key[0] is not positions or self._step_key[1] != dtype:
            # Like HF: cos/sin in the activations' dtype, so bf16 serving matches HF's bf16 numerics.
            cs = self.cos_sin[positions].to(dtype)  # [T, D]
            cos, sin = cs[:, None, :self.half], cs[:, None, self.half:]
            # x * [cos, cos] + [x2, x1] * [-sin, sin] is HF's q * cos + rotate_half(q) * sin, product by product
            self._step_cos_sin = (torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1))
            self._step_key = key  # holds `positions`, so its identity cannot be reused by a later tensor
        return self._step_cos_sin


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D]; cos, sin [T, 1, D] from RotaryEmbedding._cos_sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([x[..., half:], x[..., :half]], dim=-1) * sin


# (row count up to, bucket): a CPU matmul with a row count it has not seen before is ~2x slower (oneDNN builds and
# caches a primitive per shape), and extend batches bring a new token count nearly every step.
_ROW_BUCKETS = ((8, 1), (256, 16), (2048, 64))
_LARGE_ROW_BUCKET = 256


def bucketed_rows(n: int) -> int:
    """`n` rounded up to its bucket: at most ~6% extra rows past 256, one shape per 16 rows below."""
    step = next((b for limit, b in _ROW_BUCKETS if n <= limit), _LARGE_ROW_BUCKET)
    return -(-n // step) * step


def pad_rows(x: torch.Tensor) -> torch.Tensor:
    """x [n, d] on CPU → [bucketed_rows(n), d] with zero rows appended (x itself when no padding is needed).
    Rows are independent through every matmul and elementwise op, so callers slice [:n] off the result."""
    n = x.shape[0]
    extra = bucketed_rows(n) - n
    if x.device.type != "cpu" or x.dim() != 2 or extra == 0:
        return x
    return F.pad(x, (0, 0, 0, extra))


# The row count oneDNN packs a weight for; any count then works. 64 and 512 gave results bitwise equal to F.linear
# at 1-2,048 rows (a hint of 1 picked another kernel with a different summation order).
PACK_ROWS_HINT = 64


def cpu_bf16_native() -> bool:
    """Whether oneDNN has a bf16 path on this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT). Without one, torch falls
    back to a scalar bf16 matmul: 0.3 GFLOP/s against 162 GFLOP/s in fp32 (2048^3, AVX2-only AMD EPYC VM)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.backends.mkldnn.is_available() and probe is not None and bool(probe())


def mkldnn_packing(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether this torch build and CPU can run oneDNN's prepacked linear ops in `dtype` (bf16 or fp32; the bf16
    reorder refuses a CPU without a bf16 path)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_bf16_native())


def prepack_linears(model: nn.Module) -> int:
    """`prepack()` every BucketedLinear of `model`; returns how many were packed."""
    return sum(m.prepack() for m in model.modules() if isinstance(m, BucketedLinear))


class BucketedLinear(nn.Linear):
    """nn.Linear (same parameters and state-dict names) whose CPU matmuls see bucketed row counts; after
    `prepack()`, a bf16 or fp32 CPU layer multiplies by a weight stored once in oneDNN's blocked layout."""

    packed: torch.Tensor | None = None
    gemv: Callable | None = None  # engine/kernels/cpu/f32_gemv.py for up to gemv.max_rows fp32 rows (use_gemv)
    gemv_weight: torch.Tensor | None = None  # the plain [out, in] weight the GEMV reads

    def use_gemv(self, kernel: Callable | None, weight: torch.Tensor | None = None) -> None:
        """Compute calls of up to `kernel.max_rows` fp32 rows as `kernel(x, weight)` (the contract of
        engine/kernels/cpu/f32_gemv.py; `weight` this layer's plain [out, in] weight, which a packed layer no longer
        holds itself); more rows keep the packed / dense path. None: every call back to that path."""
        if kernel is not None and (weight is None or tuple(weight.shape) != (self.out_features, self.in_features)):
            raise ValueError(f"weight: expected shape {(self.out_features, self.in_features)} for the GEMV")
        # a plain tensor on the same storage: a Parameter would register a second time (state_dict, parameters())
        self.gemv, self.gemv_weight = kernel, (weight.detach() if kernel is not None else None)

    def prepack(self) -> bool:
        """Reorder a bf16 or fp32 CPU weight into oneDNN's blocked layout; returns whether the layer was packed
        (fp16, other devices, or a CPU / build without the op are left as is). The plain weight is then released.

        bf16: F.linear reorders the weight on every call, 1.4-2.2x the time of the matmul itself at 1-420 rows
        (AVX-512 VM); results are bitwise the same. fp32 (the dtype `auto` serves on CPUs without a bf16 path):
        against MKL's sgemm on an AVX2-only VM, 1.2-3.4x faster at 8-64 rows (decode), 0.85-1.25x at 256-2,048
        (prefill), results within fp32 rounding (another summation order); a log-parsing run's decode forwards
        took 25% less time, its mixed prefill + decode steps the same."""
        w = self.weight
        if self.packed is not None or w.device.type != "cpu" or not mkldnn_packing(w.dtype):
            return False
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS_HINT)
        # a meta parameter keeps the shape for state_dict and repr; a tied embedding keeps its own reference
        self.weight = nn.Parameter(torch.empty(w.shape, dtype=w.dtype, device="meta"), requires_grad=False)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gemv is not None and x.shape[0] <= self.gemv.max_rows and x.dtype == torch.float32:
            out = self.gemv(x.contiguous(), self.gemv_weight)  # a fresh tensor: add in place
            return out if self.bias is None else out.add_(self.bias)
        xp = pad_rows(x)
        if self.packed is not None:
            out = torch.ops.mkldnn._linear_pointwise(xp, self.packed, self.bias, "none", [], "")
        else:
            out = F.linear(xp, self.weight, self.bias)
        return out[:x.shape[0]]  # [:n] of unpadded rows is a no-op view


# Rows per pass of a dense CPU MLP. Its intermediates are the largest tensors of a step ([rows, 2 x intermediate]:
# 293 MB at 4,096 rows of the 1.5B shape), and a fresh one that large is mapped from the OS and page-faulted in on
# every call (~2.5 us per 4 KiB page on the dev VM: a fused activation wrote [4096, 8960] in 128 ms fresh, 37 ms
# into a reused buffer). 256 rows keep them under glibc's 32 MB mmap ceiling, so freed ones are reused, and still
# multiply near the matmul peak. Quantized MLPs are not chunked: each pass would dequantize the weights again.
MLP_CHUNK_ROWS = 256


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul; dense CPU layers take more than
    MLP_CHUNK_ROWS rows in passes of that many (rows are independent through the MLP)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = BucketedLinear(hidden, 2 * intermediate, bias=False)
        self.down_proj = BucketedLinear(intermediate, hidden, bias=False)
        self.intermediate = intermediate
        self.kernel: Callable | None = None  # silu(gate) * up: engine/kernels/cpu/silu_mul.py (use_silu_mul_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n > MLP_CHUNK_ROWS and x.device.type == "cpu" and isinstance(self.gate_up_proj, BucketedLinear):
            out = x.new_empty(n, self.down_proj.out_features)
            for i in range(0, n, MLP_CHUNK_ROWS):
                out[i:i + MLP_CHUNK_ROWS] = self._forward(x[i:i + MLP_CHUNK_ROWS])
            return out
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = pad_rows(x)  # pad once for the three matmuls and the activation: [bucketed n, hidden]
        gate_up = self.gate_up_proj(xp)  # [bucketed n, 2 * intermediate]: gate | up
        if self.kernel is not None:
            return self.down_proj(self.kernel(gate_up))[:x.shape[0]]
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)[:x.shape[0]]


def use_triton_kernels(model: nn.Module, enabled: bool = True) -> int:
    """Route every RMSNorm and RotaryEmbedding in `model` through the fused Triton kernels of engine/kernels
    (back to torch with enabled=False); return how many modules were switched.

    Meant for CUDA models served with the triton attention backend; on CPU the kernels run only under
    TRITON_INTERPRET=1 (tests). Rotary then rotates q and k in place. Results equal the torch path up to
    rounding: the rotary kernel rounds once from fp32 where the torch path rounds each half-precision product.
    """
    norm_kernel = rotary_kernel = None
    if enabled:
        from engine.kernels.gpu.rmsnorm import rmsnorm as norm_kernel
        from engine.kernels.gpu.rotary import apply_rotary as rotary_kernel
    switched = 0
    for module in model.modules():  # a rotary module shared by all layers is visited once
        if isinstance(module, RMSNorm):
            module.kernel = norm_kernel
            switched += 1
        elif isinstance(module, RotaryEmbedding):
            module.kernel = rotary_kernel
            switched += 1
    return switched


def use_rmsnorm_kernel(model: nn.Module, kernel: Callable | None) -> int:
    """Route every RMSNorm of `model` through `kernel` (the rmsnorm contract of engine/kernels/gpu/rmsnorm.py; None:
    torch ops); return how many were switched. The `cpu` backend's models use engine/kernels/cpu/rmsnorm.py."""
    return _set_kernel(model, RMSNorm, kernel)


def use_rotary_kernel(model: nn.Module, kernel: Callable | None) -> int:
    """Route every RotaryEmbedding of `model` through `kernel` (in place, the contract of engine/kernels/gpu/rotary.py;
    None: torch ops); return how many were switched. The `cpu` backend's models use engine/kernels/cpu/rotary.py."""
    return _set_kernel(model, RotaryEmbedding, kernel)


def use_silu_mul_kernel(model: nn.Module, kernel: Callable | None) -> int:
    """Route every GatedMLP's activation of `model` through `kernel` (gate_up [T, 2I] -> silu(gate) * up [T, I], the
    contract of engine/kernels/cpu/silu_mul.py; None: torch ops); return how many were switched."""
    return _set_kernel(model, GatedMLP, kernel)


def _set_kernel(model: nn.Module, cls: type, kernel: Callable | None) -> int:
    mods = [m for m in model.modules() if isinstance(m, cls)]  # a rotary module shared by all layers: once
    for m in mods:
        m.kernel = kernel
    return len(mods)
