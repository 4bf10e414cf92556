"""The compiled CPU int4 weight-only GEMV (engine/kernels/cpu/csrc/int4_gemv.c) on torch's packed int4 layout.

    out [M, N] fp32 = x [M, K] fp32 @ W.T,   W[n, k] = (q[n, k] - 8) * scale[k // G, n] + zero[k // G, n]

with q packed by `torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)` (uint8 [N, K / 2]) and
`scales_and_zeros` bf16 [K / G, N, 2], the operands of `torch.ops.aten._weight_int4pack_mm_for_cpu`: a layer keeps
one copy of its weights for both kernels. Meant for decode (M = batch, small); its numerics are fp32 throughout
(torch's kernel takes bf16 activations and rounds its output to bf16).

torch's packed layout depends on the CPU capability its packer ran under (the C file's header states it); the
kernel takes it as an `Int4PackLayout`, by default the one `torch_int4pack_layout()` reads off this process.
"""
from __future__ import annotations

import ctypes
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.kernels.checks import check_shape, check_tensor, is_plain
from engine.kernels.cpu.build import build_library, check_kernel_rc

SOURCE = Path(__file__).parent / "csrc" / "int4_gemv.c"
AVX2_MARCH = "x86-64-v3"  # AVX2 + FMA, no AVX-512: the vector path's target
CPU = torch.device("cpu")
# how far ahead of its weight reads the vector path prefetches (swept by bench/model_speed/int4_gemv_speed.py)
PREFETCH_BYTES = 2048
GEMV_MAX_ROWS = 64  # decode batches; prefill-sized inputs dequantize once and run a dense fp32 matmul


@dataclass(frozen=True)
class Int4PackLayout:
    """How `_convert_weight_to_int4pack_for_cpu` arranged the nibbles: rows in blocks of `block_n`, k-major inside
    a block; a full block's byte j holds rows j (low nibble) and j + block_n / 2 (high) when `interleaved`, else
    rows 2 j and 2 j + 1 (as a partial tail block always does)."""
    block_n: int
    interleaved: bool


# torch 2.13's packer per capability (torch.backends.cpu.get_cpu_capability()) on x86-64, each checked byte by
# byte by tests/kernels/cpu/test_cpu_int4_gemv.py (ATEN_CPU_CAPABILITY=default / avx2 / avx512 in a subprocess)
X86_LAYOUTS = {"DEFAULT": Int4PackLayout(32, False), "AVX2": Int4PackLayout(32, True),
               "AVX512": Int4PackLayout(64, True)}


def torch_int4pack_layout(capability: str | None = None) -> Int4PackLayout | None:
    """The layout torch's int4 packer writes under `capability` (default: this process's), or None where it is
    not verified (other architectures: their vector width sets other blocks); callers then keep torch's kernel."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    return X86_LAYOUTS.get(capability or torch.backends.cpu.get_cpu_capability())


def int4_gemv_reference(x: torch.Tensor, q: torch.Tensor, scales_and_zeros: torch.Tensor,
                        group_size: int) -> torch.Tensor:
    """The contract in torch, fp32: x [M, K], q [N, K] unpacked in 0..15, scales_and_zeros [K / G, N, 2]."""
    n, k = q.shape
    sz = scales_and_zeros.float().repeat_interleave(group_size, dim=0)  # [K, N, 2]
    w = (q.float() - 8.0) * sz[..., 0].t() + sz[..., 1].t()  # [N, K]
    return x.float() @ w.t()


def _check_x(x) -> tuple[int, int]:
    check_tensor("x", x, ndim=2, dtypes=(torch.float32,), device=CPU, contiguous=True)
    return tuple(x.shape)


def _weights_fit(k: int, qweight, scales_and_zeros, group_size) -> bool:
    """The common case, cheaply: every check of _check_weights passes."""
    if not (is_plain(qweight, torch.uint8, 2) and is_plain(scales_and_zeros, torch.bfloat16, 3)
            and type(group_size) is int and group_size > 0 and group_size % 32 == 0 and k > 0 and k % group_size == 0):
        return False
    n = qweight.shape[0]
    return n % 16 == 0 and qweight.shape[1] * 2 == k and scales_and_zeros.shape == (k // group_size, n, 2)


def _check_weights(k: int, qweight, scales_and_zeros, group_size) -> None:
    """ValueError naming the first of qweight, group_size, scales_and_zeros that does not fit x's width k."""
    check_tensor("qweight", qweight, ndim=2, dtypes=(torch.uint8,), device=CPU, contiguous=True)
    n = qweight.shape[0]
    if k <= 0 or k % 2 or n % 16:
        raise ValueError(f"qweight: needs a positive even input width and a multiple of 16 rows (K={k}, N={n})")
    check_shape("qweight", qweight, (n, k // 2))
    if type(group_size) is not int or group_size <= 0 or group_size % 32 or k % group_size:
        raise ValueError(f"group_size: must be a multiple of 32 dividing the input width {k} (got {group_size})")
    check_tensor("scales_and_zeros", scales_and_zeros, ndim=3, dtypes=(torch.bfloat16,), device=CPU,
                 contiguous=True)
    check_shape("scales_and_zeros", scales_and_zeros, (k // group_size, n, 2))


class CpuInt4Gemv:
    """The loaded library; call it as kernel(x, qweight, scales_and_zeros, group_size, out=None) -> out for up to
    `max_rows` rows of x; more rows go through `dequantize` and a dense fp32 matmul (engine/models/quant.py). One
    model thread uses an instance: the dequantization scratch is not shared safely."""

    max_rows = GEMV_MAX_ROWS

    def __init__(self, cache_dir: Path | None = None, generic: bool = False, march: str = "native",
                 layout: Int4PackLayout | None = None, prefetch_bytes: int = PREFETCH_BYTES):
        """`generic`: the portable loop only; `march`: the compiler's target (AVX2_MARCH: the AVX2 + FMA path on
        any CPU that has those); `layout`: of the packed weights, by default torch_int4pack_layout()."""
        layout = layout or torch_int4pack_layout()
        if layout is None:
            raise ValueError(f"layout: torch's int4 packing under {torch.backends.cpu.get_cpu_capability()} on "
                             f"{platform.machine()} is not known to this kernel; pass it")
        if layout.block_n not in (32, 64):
            raise ValueError(f"layout: block_n must be 32 or 64 (got {layout.block_n})")
        self.layout, self.prefetch_bytes = layout, int(prefetch_bytes)
        self.path = build_library(SOURCE, cache_dir, ("INT4_GENERIC",) if generic else (), march)
        lib = ctypes.CDLL(str(self.path))
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self._fn = lib.int4_gemv
        self._fn.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int, ctypes.c_int, i64]
        self._fn.restype = ctypes.c_int
        self._dequantize = lib.int4_dequantize
        self._dequantize.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_int, ctypes.c_int]
        self._dequantize.restype = ctypes.c_int
        self.vectorised = bool(lib.int4_gemv_vectorised())
        self._scratch = torch.empty(0, dtype=torch.float32)  # grows to the largest weight dequantized

    def dequantize(self, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
        """The fp32 weight [N, K] = (q - 8) * scale + zero of packed `qweight` (operands as for a call), a view of
        this object's scratch buffer: valid until the next `dequantize` call (one buffer serves every layer)."""
        k = 2 * qweight.shape[1] if isinstance(qweight, torch.Tensor) and qweight.dim() == 2 else 0
        if not _weights_fit(k, qweight, scales_and_zeros, group_size):
            _check_weights(k, qweight, scales_and_zeros, group_size)
        n = qweight.shape[0]
        if self._scratch.numel() < n * k:
            self._scratch = torch.empty(n * k, dtype=torch.float32)
        out = self._scratch[:n * k].view(n, k)
        if n:
            check_kernel_rc("int4_dequantize", self._dequantize(
                qweight.data_ptr(), scales_and_zeros.data_ptr(), out.data_ptr(), n, k, group_size,
                self.layout.block_n, int(self.layout.interleaved), torch.get_num_threads()))
        return out

    def __call__(self, x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """x fp32 [M, K]; qweight uint8 [N, K / 2] (N % 16 == 0); scales_and_zeros bf16 [K / G, N, 2]; `out` fp32
        [M, N] to write into (every element is written), else a new tensor. ValueError naming the argument."""
        m, k = x.shape if is_plain(x, torch.float32, 2) else _check_x(x)
        if not _weights_fit(k, qweight, scales_and_zeros, group_size):
            _check_weights(k, qweight, scales_and_zeros, group_size)
        n = qweight.shape[0]
        if out is None:
            out = torch.empty(m, n, dtype=torch.float32)
        elif not (is_plain(out, torch.float32, 2) and out.shape == (m, n)):
            check_tensor("out", out, ndim=2, dtypes=(torch.float32,), device=CPU, contiguous=True)
            check_shape("out", out, (m, n))
        rc = self._fn(x.data_ptr(), qweight.data_ptr(), scales_and_zeros.data_ptr(), out.data_ptr(), m, n, k,
                      group_size, self.layout.block_n, int(self.layout.interleaved), torch.get_num_threads(),
                      self.prefetch_bytes)
        check_kernel_rc("int4_gemv", rc)
        return out
