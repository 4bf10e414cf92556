"""The compiled CPU decode-attention kernel (engine/attention/csrc/decode_attention.c): build, load, call.

The C source is compiled once per machine by engine/cpu_build.py for the host CPU (AVX-512 registers when the CPU
has them, a portable loop otherwise). It is called through ctypes (which releases the GIL) on the tensors' memory,
in place: no copies, no gathers.

Contract of `CpuDecodeKernel.__call__` (the layouts of engine.kernels.decode_attention, which holds the torch
reference `decode_attention_reference` of the same contract):
  q             [B, H, D] bf16 or fp32, contiguous: one query token per request
  k_buf, v_buf  [num_slots, KVH, D], q's dtype, contiguous: one layer of the pool; H % KVH == 0
  req_to_token  int32 [max_reqs, max_context], contiguous: request row, position -> slot (every slot < num_slots)
  req_pool_indices, seq_lens  int64 [B]: request b attends to positions [0, seq_lens[b]) of its row
  returns o [B, H, D] in q's dtype (written into `out` when given).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from engine.cpu_build import build_library
from engine.kernels import check_shape, check_tensor

SOURCE = Path(__file__).parent / "csrc" / "decode_attention.c"
KERNEL_DTYPES = (torch.bfloat16, torch.float32)


class CpuDecodeKernel:
    """The loaded library; call it like engine.kernels.decode_attention.decode_attention (see module doc)."""

    def __init__(self, cache_dir: Path | None = None, generic: bool = False):
        self.path = build_library(SOURCE, cache_dir, ("DA_GENERIC",) if generic else ())
        self._lib = ctypes.CDLL(str(self.path))
        fn = self._lib.decode_attention
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        fn.argtypes = [ptr, ptr, ptr, ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_float, ctypes.c_int,
                       ctypes.c_int]
        fn.restype = ctypes.c_int
        self._fn = fn
        self.max_head_dim = int(self._lib.decode_attention_max_head_dim())
        self.max_group = int(self._lib.decode_attention_max_group())
        self.vectorised = bool(self._lib.decode_attention_vectorised())

    def supports(self, dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
        return (dtype in KERNEL_DTYPES and num_heads % num_kv_heads == 0 and head_dim <= self.max_head_dim
                and num_heads // num_kv_heads <= self.max_group)

    @staticmethod
    def check_indices(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor) -> None:
        """ValueError unless every row and length is inside req_to_token: the kernel reads memory by these values."""
        if seq_lens.numel() == 0:
            return
        if int(seq_lens.min()) < 1 or int(seq_lens.max()) > req_to_token.shape[1]:
            raise ValueError(f"seq_lens: each must be in [1, {req_to_token.shape[1]}]")
        if int(req_pool_indices.min()) < 0 or int(req_pool_indices.max()) >= req_to_token.shape[0]:
            raise ValueError(f"req_pool_indices: each must be in [0, {req_to_token.shape[0]})")

    def __call__(self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, req_to_token: torch.Tensor,
                 req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float,
                 out: torch.Tensor | None = None, indices_checked: bool = False) -> torch.Tensor:
        """`indices_checked`: the caller ran check_indices on these index tensors already (once per step serves
        every layer)."""
        cpu = torch.device("cpu")
        check_tensor("q", q, ndim=3, dtypes=KERNEL_DTYPES, device=cpu, contiguous=True)
        batch, num_heads, head_dim = q.shape
        check_tensor("k_buf", k_buf, ndim=3, dtypes=(q.dtype,), device=cpu, contiguous=True)
        num_slots, num_kv_heads, _ = k_buf.shape
        check_shape("k_buf", k_buf, (num_slots, num_kv_heads, head_dim))
        check_tensor("v_buf", v_buf, ndim=3, dtypes=(q.dtype,), device=cpu, contiguous=True)
        check_shape("v_buf", v_buf, tuple(k_buf.shape))
        if not self.supports(q.dtype, num_heads, num_kv_heads, head_dim):
            raise ValueError(f"q: {num_heads} heads over {num_kv_heads} kv heads of dim {head_dim} is outside the "
                             f"kernel's limits (head_dim <= {self.max_head_dim}, <= {self.max_group} heads per kv head)")
        check_tensor("req_to_token", req_to_token, ndim=2, dtypes=(torch.int32,), device=cpu, contiguous=True)
        check_tensor("req_pool_indices", req_pool_indices, ndim=1, dtypes=(torch.int64,), device=cpu, contiguous=True)
        check_shape("req_pool_indices", req_pool_indices, (batch,))
        check_tensor("seq_lens", seq_lens, ndim=1, dtypes=(torch.int64,), device=cpu, contiguous=True)
        check_shape("seq_lens", seq_lens, (batch,))
        if out is None:
            out = torch.empty_like(q)
        check_tensor("out", out, ndim=3, dtypes=(q.dtype,), device=cpu, contiguous=True)
        check_shape("out", out, tuple(q.shape))
        if batch == 0:
            return out
        if not indices_checked:
            self.check_indices(req_to_token, req_pool_indices, seq_lens)
        rc = self._fn(q.data_ptr(), k_buf.data_ptr(), v_buf.data_ptr(), req_to_token.data_ptr(),
                      req_to_token.stride(0), req_pool_indices.data_ptr(), seq_lens.data_ptr(), out.data_ptr(),
                      batch, num_heads, num_kv_heads, head_dim, float(sm_scale), int(q.dtype == torch.bfloat16),
                      torch.get_num_threads())  # torch's intra-op setting (--num-threads) holds for the kernel too
        assert rc == 0, "decode_attention rejected shapes that passed the wrapper's checks"
        return out
