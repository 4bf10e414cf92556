"""The compiled CPU fp32 GEMV (engine/kernels/cpu/csrc/f32_gemv.c): out = x @ w.T for a few activation rows.

Contract: x fp32 [M, K], w fp32 [N, K] (an nn.Linear weight as stored, no repacking), out fp32 [M, N]; all
contiguous CPU tensors; K >= 1, any M >= 0 and N >= 0. Results agree with torch's matmul to fp32 rounding (another
summation order), not bitwise. Callers send at most `max_rows` rows: more are computed correctly but in further
passes over the weight, and from there a dense matmul is the better tool.

Why: a decode step streams an fp32 LM head once per token (Qwen2.5-0.5B: [151936, 896] = 545 MB), and oneDNN's
packed linear (`torch.ops.mkldnn._linear_pointwise` on `_reorder_linear_weight(w, 64)`, what BucketedLinear runs)
and F.linear (MKL) read it well below the memory's read rate. Measured on the 2-core AVX2 EPYC dev VM with
`python -m bench.model_speed.f32_gemv_speed` (LM heads of the 0.5B, 1.5B and 7B shapes, medians of 15
interleaved rounds, two runs; ranges over shapes and runs):
- 1-4 rows: 15-23 GB/s of weight bytes, about a plain read's rate (0.5B at one row: 29-33 ms against 38-44 ms
  packed and 55-75 ms MKL): 1.3-1.8x faster than the packed path, 1.7-2.3x than MKL at one row, 3.6-6.8x at 2-4;
- 8 rows: FMA-bound (13-17 GB/s), 1.4-1.8x faster than packed, 4.2-6.2x than MKL;
- 16 rows: 1.2-1.55x faster than packed, 3.2-4.1x than MKL;
- 24-64 rows (further passes over the weight): 0.8-1.0x of packed, so GEMV_MAX_ROWS is 16.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from engine.kernels.checks import check_shape, check_tensor, is_plain
from engine.kernels.cpu.build import build_library, check_kernel_rc

SOURCE = Path(__file__).parent / "csrc" / "f32_gemv.c"
CPU = torch.device("cpu")
GEMV_MAX_ROWS = 16  # one pass over the weight (GROUP in the C file); from 24 rows oneDNN's packed path is faster


def _check_operands(x, w) -> None:
    """ValueError naming the first of w, x that is not as a call needs it."""
    check_tensor("w", w, ndim=2, dtypes=(torch.float32,), device=CPU, contiguous=True)
    if w.shape[1] == 0:
        raise ValueError("w: the input width K must be >= 1")
    check_tensor("x", x, ndim=2, dtypes=(torch.float32,), device=CPU, contiguous=True)
    check_shape("x", x, (x.shape[0], w.shape[1]))


class CpuF32Gemv:
    """The loaded library; `kernel(x, w)` -> fp32 [M, N] = x @ w.T (callers send at most `max_rows` rows).
    Stateless between calls: one instance may serve every layer and thread."""

    max_rows = GEMV_MAX_ROWS

    def __init__(self, cache_dir: Path | None = None, march: str = "native"):
        """`march`: the compiler's target (e.g. "x86-64" builds the portable path only; tests check both)."""
        self.path = build_library(SOURCE, cache_dir, march=march)
        lib = ctypes.CDLL(str(self.path))
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self._fn = lib.f32_gemv
        self._fn.argtypes = [ptr, ptr, ptr, i64, i64, i64, ctypes.c_int]
        self._fn.restype = ctypes.c_int
        self.vectorised = bool(lib.f32_gemv_vectorised())

    def __call__(self, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x fp32 [M, K], w fp32 [N, K] (both contiguous, CPU) -> fp32 [M, N] (into `out` if given: contiguous
        fp32 [M, N]). Raises ValueError naming the operand that is wrong."""
        # a decode step calls this every token: the naming checks run only when the cheap test fails
        if not (is_plain(w, torch.float32, 2) and is_plain(x, torch.float32, 2) and w.shape[1] > 0
                and x.shape[1] == w.shape[1]):
            _check_operands(x, w)
        m, (n, k) = x.shape[0], w.shape
        if out is None:
            out = torch.empty(m, n, dtype=torch.float32)
        elif not (is_plain(out, torch.float32, 2) and out.shape == (m, n)):
            check_tensor("out", out, ndim=2, dtypes=(torch.float32,), device=CPU, contiguous=True)
            check_shape("out", out, (m, n))
        if m and n:
            check_kernel_rc("f32_gemv", self._fn(x.data_ptr(), w.data_ptr(), out.data_ptr(), m, n, k,
                                                 torch.get_num_threads()))
        return out


def f32_gemv_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The torch reference: fp32 [M, N] = x @ w.T, summed in fp64 for a tight comparison."""
    return (x.double() @ w.double().t()).float()
