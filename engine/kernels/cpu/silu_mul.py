"""The compiled CPU SwiGLU activation (engine/kernels/cpu/csrc/silu_mul.c):

    kernel(gate_up [T, 2I]) -> out [T, I] = silu(gate_up[:, :I]) * gate_up[:, I:]

gate_up is the fused gate/up projection's output (GatedMLP), bf16 or fp32, contiguous; out is a fresh tensor of its
dtype. Numerics are HF's two ops (`act_fn(gate) * up`): silu in fp32 rounded to the dtype, then the product
rounded again, so bf16 results equal torch's bit for bit except where exp's last-bit rounding tips a rounding, and
fp32 results agree to a few ulp (the reference: `silu_mul_reference`). The `cpu` attention backend's models use it
for every GatedMLP (ModelRunner); `--attention-backend torch` keeps torch ops.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.kernels.checks import check_shape, check_tensor, is_plain
from engine.kernels.cpu.build import build_library, check_kernel_rc

SOURCE = Path(__file__).parent / "csrc" / "silu_mul.c"
DTYPES = (torch.bfloat16, torch.float32)
CPU = torch.device("cpu")


class CpuSiluMul:
    """The loaded library; `kernel(gate_up)` -> silu(gate) * up. Stateless: one instance may serve every layer."""

    def __init__(self, cache_dir: Path | None = None, march: str = "native"):
        """`march`: the compiler's target (e.g. "x86-64" builds without AVX2; the tests run both)."""
        self.path = build_library(SOURCE, cache_dir, march=march)
        self._fn = ctypes.CDLL(str(self.path)).silu_mul
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self._fn.argtypes = [ptr, ptr, i64, i64, ctypes.c_int, ctypes.c_int]
        self._fn.restype = ctypes.c_int

    def __call__(self, gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """gate_up [T, 2I] -> [T, I] in its dtype (into `out`, contiguous [T, I] of that dtype, if given)."""
        # every MLP of every step calls this: the naming checks run only when the cheap test fails
        if not ((is_plain(gate_up, torch.float32, 2) or is_plain(gate_up, torch.bfloat16, 2))
                and gate_up.shape[1] % 2 == 0):
            check_tensor("gate_up", gate_up, ndim=2, dtypes=DTYPES, device=CPU, contiguous=True)
            raise ValueError(f"gate_up: the width must be even (gate and up halves), got {gate_up.shape[1]}")
        rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
        if out is None:
            out = torch.empty(rows, inter, dtype=gate_up.dtype)
        elif not (is_plain(out, gate_up.dtype, 2) and out.shape == (rows, inter)):
            check_tensor("out", out, ndim=2, dtypes=(gate_up.dtype,), device=CPU, contiguous=True)
            check_shape("out", out, (rows, inter))
        if rows and inter:
            check_kernel_rc("silu_mul", self._fn(gate_up.data_ptr(), out.data_ptr(), rows, inter,
                                                 int(gate_up.dtype == torch.bfloat16), torch.get_num_threads()))
        return out


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """The torch reference (GatedMLP's torch path and HF's numerics): silu(gate) * up in gate_up's dtype."""
    gate, up = gate_up.split(gate_up.shape[-1] // 2, dim=-1)
    return F.silu(gate) * up
