"""The compiled CPU int8 weight-only kernels (engine/kernels/cpu/csrc/int8_gemv.c) for fp32 activations, against
int8 weights w [N, K] with one fp32 scale per output channel [N]:

- the GEMV: out = (x @ w.T) * scale for a few rows x [M, K] (M up to GEMV_MAX_ROWS: decode steps);
- `dequantize`: the fp32 weight w * scale[:, None], into a scratch buffer the kernel object owns, for a dense fp32
  matmul of more rows (prefill).

fp32 models quantized with `--quantization int8` on the `cpu` backend use both (engine/models/quant.py): torch's
`_weight_int8pack_mm` wants bf16 activations, which a CPU without native bf16 (AVX2) computes at a fraction of
its fp32 rate. Measured on the 2-core AVX2 EPYC dev VM, weights streamed from DRAM (24 layers' worth of distinct
matrices per pass, `python -m bench.model_speed.int8_gemv_speed`), against torch's kernel fed bf16, over two runs:
1.2-2.0x at one row, 1.1-1.5x at 2-16, 1.4-1.6x at 64 (docs/quantization.md).

Retuned 2026-12-08 (03:56-04:03 UTC, same VM; the C file's top comment has the sweep): 4 weight rows x up to 3
activation rows per tile, prefetch 1 block ahead, 16 blocks per dynamic take, one pass for up to 64 rows. Against
the previous kernel in one interleaved run (04:01 UTC, medians of 7): 1.27x (0.5B, 11.5 -> 14.6 GB/s) and 1.28x
(1.5B, 11.3 -> 14.4 GB/s) at one row, 1.37-1.48x at 2-4, 1.08-1.22x at 8-16, 1.10-1.13x at 64; results unchanged
bit for bit. Against torch's kernel fed bf16 right after (04:03 UTC, best of 3): 1.62x / 1.44x at one row
(14.4 / 18.4 GB/s), 1.41-2.03x at 2-16, 1.60x / 1.75x at 64.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from engine.kernels.checks import check_shape, check_tensor, is_plain
from engine.kernels.cpu.build import build_library, check_kernel_rc

SOURCE = Path(__file__).parent / "csrc" / "int8_gemv.c"
CPU = torch.device("cpu")
GEMV_MAX_ROWS = 64  # decode batches; prefill-sized inputs dequantize once and run a dense fp32 matmul


def _check_operands(x, w, scale) -> None:
    """ValueError naming the first of w, x, scale that is not as a call needs it."""
    check_tensor("w", w, ndim=2, dtypes=(torch.int8,), device=CPU, contiguous=True)
    n, k = w.shape
    if k == 0:
        raise ValueError("w: the input width K must be >= 1")
    check_tensor("x", x, ndim=2, dtypes=(torch.float32,), device=CPU, contiguous=True)
    check_shape("x", x, (x.shape[0], k))
    check_tensor("scale", scale, ndim=1, dtypes=(torch.float32,), device=CPU, contiguous=True)
    check_shape("scale", scale, (n,))


class CpuInt8Gemv:
    """The loaded library; `kernel(x, w, scale)` -> fp32 [M, N] (callers send at most `max_rows` rows, more go
    through `dequantize` and a dense matmul). One model thread uses an instance: the scratch is not shared safely."""

    max_rows = GEMV_MAX_ROWS

    def __init__(self, cache_dir: Path | None = None, march: str = "native"):
        """`march`: the compiler's target (e.g. "x86-64" builds the portable path only; tests check both)."""
        self.path = build_library(SOURCE, cache_dir, march=march)
        lib = ctypes.CDLL(str(self.path))
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self._fn = lib.int8_gemv
        self._fn.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, ctypes.c_int]
        self._fn.restype = ctypes.c_int
        self._dequantize = lib.int8_dequantize
        self._dequantize.argtypes = [ptr, ptr, ptr, i64, i64, ctypes.c_int]
        self._dequantize.restype = ctypes.c_int
        self.vectorised = bool(lib.int8_gemv_vectorised())
        self._scratch = torch.empty(0, dtype=torch.float32)  # grows to the largest weight dequantized

    def dequantize(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """w int8 [N, K], scale fp32 [N] -> the fp32 weight [N, K] = w * scale[:, None], a view of this object's
        scratch buffer: valid until the next `dequantize` call (one buffer serves every layer of a model)."""
        check_tensor("w", w, ndim=2, dtypes=(torch.int8,), device=CPU, contiguous=True)
        n, k = w.shape
        check_tensor("scale", scale, ndim=1, dtypes=(torch.float32,), device=CPU, contiguous=True)
        check_shape("scale", scale, (n,))
        if self._scratch.numel() < n * k:
            self._scratch = torch.empty(n * k, dtype=torch.float32)
        out = self._scratch[:n * k].view(n, k)
        if n and k:
            check_kernel_rc("int8_dequantize", self._dequantize(w.data_ptr(), scale.data_ptr(), out.data_ptr(),
                                                                n, k, torch.get_num_threads()))
        return out

    def __call__(self, x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """x fp32 [M, K], w int8 [N, K], scale fp32 [N] (all contiguous, CPU) -> fp32 [M, N] (into `out` if given)."""
        # a decode step calls this for every projection: the naming checks run only when the cheap test fails
        if not (is_plain(w, torch.int8, 2) and is_plain(x, torch.float32, 2) and is_plain(scale, torch.float32, 1)
                and w.shape[1] > 0 and x.shape[1] == w.shape[1] and scale.shape[0] == w.shape[0]):
            _check_operands(x, w, scale)
        m, (n, k) = x.shape[0], w.shape
        if out is None:
            out = torch.empty(m, n, dtype=torch.float32)
        elif not (is_plain(out, torch.float32, 2) and out.shape == (m, n)):
            check_tensor("out", out, ndim=2, dtypes=(torch.float32,), device=CPU, contiguous=True)
            check_shape("out", out, (m, n))
        if m and n:
            check_kernel_rc("int8_gemv", self._fn(x.data_ptr(), w.data_ptr(), scale.data_ptr(), out.data_ptr(),
                                                  m, n, k, torch.get_num_threads()))
        return out


def int8_gemv_reference(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The torch reference: fp32 [M, N] = (x @ w.T) * scale, in fp64 for a tight comparison."""
    return ((x.double() @ w.double().t()) * scale.double()).float()
