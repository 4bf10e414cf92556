"""The compiled CPU rotary embedding (engine/kernels/cpu/csrc/rotary.c), with the contract of RotaryEmbedding.kernel
(the one engine/kernels/gpu/rotary.py's Triton kernel has): `kernel(q, k, positions, cos_sin) -> (q, k)`, rotating
IN PLACE
  q          [T, num_heads, head_dim] bf16 or fp32, last dim contiguous (token and head strides free: q and k are
             views of the fused q/k/v projection's output)
  k          [T, num_kv_heads, head_dim], q's dtype, likewise
  positions  int64 [T], each in [0, max_pos)
  cos_sin    fp32 [max_pos, head_dim], contiguous: row p = [cos(p * f), sin(p * f)] (RotaryEmbedding.cos_sin)
Its numerics are those of RotaryEmbedding's torch path (the reference), bit for bit: cos and sin rounded to the
model dtype, then each product and the sum rounded as torch and HF round them. The `cpu` attention backend's models
use it (ModelRunner); `--attention-backend torch` keeps torch ops."""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from engine.kernels.cpu.build import build_library
from engine.kernels.checks import check_shape, check_tensor

SOURCE = Path(__file__).parent / "csrc" / "rotary.c"
DTYPES = (torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 512  # rotary.c's MAX_HALF * 2


class CpuRotary:
    def __init__(self, cache_dir: Path | None = None):
        self.path = build_library(SOURCE, cache_dir)
        self._fn = ctypes.CDLL(str(self.path)).rotary
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self._fn.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, i64, ptr, ptr, i64, i64, ctypes.c_int, ctypes.c_int]
        self._fn.restype = ctypes.c_int
        self._checked: tuple[torch.Tensor, int] | None = None  # (positions, table rows) last checked: every layer
        # of a forward passes the same positions tensor, and two reductions per layer cost more than the rotation


    def __call__(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                 cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cpu = torch.device("cpu")
        check_tensor("q", q, ndim=3, dtypes=DTYPES, device=cpu)
        tokens, num_heads, head_dim = q.shape
        if head_dim % 2 or head_dim > MAX_HEAD_DIM:
            raise ValueError(f"q: head_dim must be even and <= {MAX_HEAD_DIM}, got {head_dim}")
        check_tensor("k", k, ndim=3, dtypes=(q.dtype,), device=cpu)
        check_shape("k", k, (tokens, k.shape[1], head_dim))
        check_tensor("positions", positions, ndim=1, dtypes=(torch.int64,), device=cpu, contiguous=True)
        for name, t in (("q", q), ("k", k)):  # rotated in place: no two heads or tokens may share memory
            if (t.shape[1] > 1 and t.stride(1) < head_dim) or (tokens > 1 and t.stride(0) < t.stride(1) * t.shape[1]):
                raise ValueError(f"{name}: heads and tokens must not overlap in memory, got strides {t.stride()}")
        check_shape("positions", positions, (tokens,))
        check_tensor("cos_sin", cos_sin, ndim=2, dtypes=(torch.float32,), device=cpu, contiguous=True)
        check_shape("cos_sin", cos_sin, (cos_sin.shape[0], head_dim))
        if tokens == 0:
            return q, k
        if self._checked is None or self._checked[0] is not positions or self._checked[1] != cos_sin.shape[0]:
            if int(positions.min()) < 0 or int(positions.max()) >= cos_sin.shape[0]:
                raise ValueError(f"positions: each must be in [0, {cos_sin.shape[0]})")
            self._checked = (positions, cos_sin.shape[0])  # holds `positions`: its identity cannot be reused
        rc = self._fn(q.data_ptr(), q.stride(0), q.stride(1), num_heads, k.data_ptr(), k.stride(0), k.stride(1),
                      k.shape[1], positions.data_ptr(), cos_sin.data_ptr(), tokens, head_dim // 2,
                      int(q.dtype == torch.bfloat16), torch.get_num_threads())
        assert rc == 0, "rotary rejected a head_dim that passed the wrapper's checks"
        return q, k
