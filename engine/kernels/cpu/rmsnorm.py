"""The compiled CPU RMSNorm (engine/kernels/cpu/csrc/rmsnorm.c), with the contract of engine.kernels.gpu.rmsnorm.rmsnorm:
rmsnorm(x) * weight, or with `residual` the pair (rmsnorm(x + residual) * weight, x + residual), HF's numerics
(torch reference: engine.kernels.gpu.rmsnorm.rmsnorm_reference). The `cpu` attention backend's models use it for every
RMSNorm (ModelRunner), so `--attention-backend torch` keeps all-torch ops."""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from engine.kernels.cpu.build import build_library
from engine.kernels.checks import check_shape, check_tensor

SOURCE = Path(__file__).parent / "csrc" / "rmsnorm.c"
DTYPES = (torch.bfloat16, torch.float32)


class CpuRMSNorm:
    def __init__(self, cache_dir: Path | None = None):
        self.path = build_library(SOURCE, cache_dir)
        self._fn = ctypes.CDLL(str(self.path)).rmsnorm
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self._fn.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, ctypes.c_float, ctypes.c_int, ctypes.c_int]
        self._fn.restype = None

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        cpu = torch.device("cpu")
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError("x: expected a tensor with at least 1 dim")
        check_tensor("x", x, ndim=x.dim(), dtypes=DTYPES, device=cpu, contiguous=True)
        hidden = x.shape[-1]
        check_tensor("weight", weight, ndim=1, dtypes=(x.dtype,), device=cpu, contiguous=True)
        check_shape("weight", weight, (hidden,))
        if residual is not None:
            check_tensor("residual", residual, ndim=x.dim(), dtypes=(x.dtype,), device=cpu, contiguous=True)
            check_shape("residual", residual, tuple(x.shape))
        out = torch.empty_like(x)
        res_out = None if residual is None else torch.empty_like(x)
        if x.numel():
            self._fn(x.data_ptr(), None if residual is None else residual.data_ptr(), weight.data_ptr(),
                     out.data_ptr(), None if res_out is None else res_out.data_ptr(), x.numel() // hidden, hidden,
                     float(eps), int(x.dtype == torch.bfloat16), torch.get_num_threads())
        return out if residual is None else (out, res_out)
