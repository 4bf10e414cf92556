"""Weight-only int8 / int4 linears on torch's own CPU kernels (`--quantization`).

- int8: symmetric, one scale per output channel: w ≈ q * scale, q in [-127, 127]
  (`torch.ops.aten._weight_int8pack_mm`).
- int4: asymmetric, group-wise along the input dim: w ≈ q * scale + lo per group of `group_size` inputs, q in
  [0, 15] (`_convert_weight_to_int4pack_for_cpu` + `_weight_int4pack_mm_for_cpu`, which take the zero point as
  `lo + 8 * scale` because they compute (q - 8) * scale + zero).

The kernels run with bf16 activations whatever the model's dtype: their fp32 path is scalar. Measured on the
2-core AVX2-only dev VM, [M x 1536] @ [1536 x 2048]: int8 11.7 ms with fp32 activations against 0.22 ms with
bf16 at M=1, 434 against 36 ms at M=64 (int4 alike). Inputs are cast to bf16 and outputs back, and the bias is
added in the model's dtype. Exception: a layer given compiled kernels (`use_quant_kernel`, done by the `cpu`
attention backend's ModelRunner) computes fp32 inputs in fp32 with them instead (engine/kernels/cpu/int8_gemv.py,
int4_gemv.py, reading the same buffers): up to `kernel.max_rows` rows (decode steps) by a GEMV that streams the
quantized weight (1.1-2.2x torch's kernels there), more rows by a dense fp32 matmul of the weight dequantized into
a scratch buffer (prefill: near the fp32 matmul rate, where torch's kernels compute in emulated bf16 on AVX2).
torchao 0.18 routes its CPU int4 layout to the same kernel and its int8 weight-only layout through a per-call
dequantize + dense matmul (measured in docs/quantization.md).

Shapes the kernels cannot take are refused here with a ValueError, never handed to them: the int8 kernel
crashes the process (segfault) when the input width is not a multiple of 8, the int4 packer wants a multiple of
16 output channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import INT4_GROUP_SIZES
from engine.config import QUANTIZATIONS as QUANT_METHODS
KERNEL_DTYPE = torch.bfloat16  # activations and scales as the kernels see them
QUANT_BLOCK_ELEMENTS = 1 << 22  # weights quantized per block of about this many (~16 MB of fp32 temporaries)


def check_quantizable(method: str, out_features: int, in_features: int, group_size: int, name: str) -> None:
    """Raise ValueError naming the layer (and the flag at fault) when `method` cannot quantize its shape."""
    if method not in QUANT_METHODS:
        raise ValueError(f"quantization: must be one of {QUANT_METHODS} (got {method!r})")
    if method == "int8" and in_features % 8:
        raise ValueError(f"quantization: int8 needs an input width divisible by 8; {name} has {in_features}")
    if method == "int4":
        if group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"quant_group_size: must be one of {INT4_GROUP_SIZES} for int4 (got {group_size})")
        if in_features % group_size:
            raise ValueError(f"quant_group_size: {group_size} does not divide the input width {in_features} "
                             f"of {name}")
        if out_features % 16:
            raise ValueError(f"quantization: int4 needs an output width divisible by 16; {name} has "
                             f"{out_features}")


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (q int8 [N, K], scale fp32 [N]) with w ≈ q * scale[:, None]."""
    w = w.float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # an all-zero row keeps a finite scale
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (q int32 [N, K] in 0..15, scale fp32 [N, K/G], lo fp32 [N, K/G]) with
    w ≈ q * scale + lo group by group (asymmetric: each group's min maps to 0 and its max to 15)."""
    n, k = w.shape
    g = w.float().reshape(n, k // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)  # a constant group: any scale, q = 0 gives lo exactly
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.int32)
    return q.reshape(n, k), scale, lo


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 weight [N, K] an int8 layer multiplies by (the reference of the tests)."""
    return q.float() * scale.float()[:, None]


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """The fp32 weight [N, K] an int4 layer multiplies by (the reference of the tests)."""
    n, k = q.shape
    groups = scale.shape[1]
    g = q.float().reshape(n, groups, k // groups) * scale.float()[..., None] + lo.float()[..., None]
    return g.reshape(n, k)


class QuantizedLinear(nn.Module):
    """A bias-optional linear whose weight is stored as int8 (per channel) or int4 (per group) on the CPU.

    Built from a dense layer by `from_dense`; forward(x [T, in]) -> [T, out] in x's dtype."""

    def __init__(self, in_features: int, out_features: int, method: str, group_size: int,
                 bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method, self.group_size = method, group_size
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.gemv = None  # CpuInt8Gemv / CpuInt4Gemv (engine/kernels/cpu) for fp32 inputs, when set

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None, method: str, group_size: int,
                   name: str = "linear") -> "QuantizedLinear":
        """Quantize weight [out, in] (any float dtype, CPU). The caller drops the dense weight afterwards."""
        out_features, in_features = weight.shape
        check_quantizable(method, out_features, in_features, group_size, name)
        if weight.device.type != "cpu":
            raise ValueError(f"quantization: {method} runs on CPU only; {name} is on {weight.device}")
        layer = cls(in_features, out_features, method, group_size, bias)
        # Row blocks keep the fp32 temporaries of quantizing small (a 14B MLP weight whole would need ~2 GB of
        # them); both kernels' layouts are row-local (packing row blocks gives the packing of the whole).
        rows = max(64, QUANT_BLOCK_ELEMENTS // in_features // 64 * 64)  # int4 packs rows in 32s
        if method == "int8":
            qs, scales = [], []
            for block in weight.split(rows):
                q, scale = quantize_int8(block)
                qs.append(q)
                scales.append(scale)
            layer.register_buffer("qweight", torch.cat(qs))  # [N, K] int8
            layer.register_buffer("scales", torch.cat(scales))  # [N] fp32 (the GEMV's; torch's kernel gets bf16)
        else:
            packed, sz = [], []
            for block in weight.split(rows):
                q, scale, lo = quantize_int4(block, group_size)
                packed.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))  # [rows, K / 2] uint8
                # (scale, zero) with the kernel's zero = lo + 8 * scale (it subtracts 8 from q)
                sz.append(torch.stack([scale.t(), (lo + 8.0 * scale).t()], dim=-1).to(KERNEL_DTYPE))
            layer.register_buffer("qweight", torch.cat(packed))
            layer.register_buffer("scales_and_zeros", torch.cat(sz, dim=1).contiguous())  # [K/G, N, 2]
        return layer

    def weight_bytes(self) -> int:
        """Bytes a forward reads for the weight (quantized values plus scales and zeros)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gemv is not None and x.dtype == torch.float32:  # fp32 throughout
            operands = ((self.qweight, self.scales) if self.method == "int8"
                        else (self.qweight, self.scales_and_zeros, self.group_size))
            if x.shape[0] <= self.gemv.max_rows:
                out = self.gemv(x.contiguous(), *operands)  # a fresh tensor: add in place
                return out if self.bias is None else out.add_(self.bias)
            return F.linear(x, self.gemv.dequantize(*operands), self.bias)
        xk = x.to(KERNEL_DTYPE)
        if self.method == "int8":
            out = torch.ops.aten._weight_int8pack_mm(xk, self.qweight, self.scales.to(KERNEL_DTYPE))
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(xk, self.qweight, self.group_size,
                                                             self.scales_and_zeros)
        out = out.to(x.dtype)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.method == "int4" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"method={self.method}{group}, bias={self.bias is not None}")


def use_quant_kernel(model: nn.Module, method: str, kernel) -> int:
    """Give every QuantizedLinear of `model` quantized with `method` the compiled kernel for fp32 inputs
    (engine.kernels.cpu.int8_gemv.CpuInt8Gemv for int8, engine.kernels.cpu.int4_gemv.CpuInt4Gemv for int4; None:
    torch's kernels for every input); return how many layers took it."""
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear) and m.method == method]
    for m in layers:
        m.gemv = kernel
    return len(layers)
