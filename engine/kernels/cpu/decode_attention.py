"""The compiled CPU decode-attention kernel (engine/kernels/cpu/csrc/decode_attention.c): build, load, call.

The C source is compiled once per machine by engine/kernels/cpu/build.py for the host CPU (AVX-512 registers when the CPU
has them, a portable loop otherwise). It is called through ctypes (which releases the GIL) on the tensors' memory,
in place: no copies, no gathers.

Contract of `CpuDecodeKernel.__call__` (the layouts of engine.kernels.gpu.decode_attention, which holds the torch
reference `decode_attention_reference` of the same contract):
  q             [B, H, D] bf16 or fp32, contiguous: one query token per request
  k_buf, v_buf  [num_slots, KVH, D], q's dtype, contiguous: one layer of the pool; H % KVH == 0
  req_to_token  int32 [max_reqs, max_context], contiguous: request row, position -> slot (every slot < num_slots)
  req_pool_indices, seq_lens  int64 [B]: request b attends to positions [0, seq_lens[b]) of its row
  returns o [B, H, D] in q's dtype (written into `out` when given).
`CpuDecodeKernel.extend` (where `cascade` is true) is the extend counterpart on the same matrix products: each
request's new tokens over its cached prefix and, causally, each other.
  groups        optional `PrefixGroups`, where `cascade` is true (an AVX512_BF16 build, bf16, head_dim % 32 == 0):
                each group's keys are attended once for all of its members, as matrix products on AMX tiles where
                the CPU has them (`tiles`), else on AVX512_BF16 vectors (csrc/decode_attention_cascade.h); the result
                is the same attention.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.attention.prefix_tree import Segment
from engine.kernels.cpu.build import build_library
from engine.kernels.checks import check_shape, check_tensor

SOURCE = Path(__file__).parent / "csrc" / "decode_attention.c"
AVX2_MARCH = "x86-64-v3"  # AVX2 + FMA (+ F16C, BMI2), no AVX-512: what decode_attention_avx2.h compiles for
KERNEL_DTYPES = (torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class PrefixGroups:
    """Decode requests that share cached keys: group g's members are the batch indices
    members[group_start[g]:group_start[g + 1]], and its keys their positions [key_start[g], key_end[g]), the same
    slots in each member's table row. A request's groups tile its positions from 0 to below its seq_len (one per
    level of engine.attention.prefix_tree's segments). All int64, contiguous."""
    group_start: torch.Tensor  # [G + 1], from 0, increasing
    members: torch.Tensor  # [group_start[-1]]
    key_start: torch.Tensor  # [G]
    key_end: torch.Tensor  # [G]

    @classmethod
    def build(cls, segments: list[Segment]) -> "PrefixGroups":
        start = [0]
        for seg in segments:
            start.append(start[-1] + len(seg.members))
        return cls(torch.tensor(start, dtype=torch.int64),
                   torch.tensor([r for seg in segments for r in seg.members], dtype=torch.int64),
                   torch.tensor([seg.key_start for seg in segments], dtype=torch.int64),
                   torch.tensor([seg.key_end for seg in segments], dtype=torch.int64))


def _check_int64_vectors(batch: int, **tensors: torch.Tensor) -> None:
    """ValueError naming the first that is not a contiguous int64 CPU vector of `batch` entries."""
    for name, t in tensors.items():
        check_tensor(name, t, ndim=1, dtypes=(torch.int64,), device=torch.device("cpu"), contiguous=True)
        check_shape(name, t, (batch,))


class CpuDecodeKernel:
    """The loaded library; call it like engine.kernels.gpu.decode_attention.decode_attention (see module doc)."""

    def __init__(self, cache_dir: Path | None = None, generic: bool = False, amx: bool = True,
                 march: str = "native"):
        """`generic`: the portable loop only (no vector paths, no cascade); `amx=False`: the cascade's vector
        products even where the CPU has AMX tiles (tests check both there); `march`: the compiler's target, e.g.
        AVX2_MARCH for the AVX2 + FMA path on any CPU that has those (no cascade: it needs AVX512_BF16)."""
        defines = (("DA_GENERIC",) if generic else ()) + (() if amx else ("DA_NO_AMX",))
        self.path = build_library(SOURCE, cache_dir, defines, march)
        self._lib = ctypes.CDLL(str(self.path))
        fn = self._lib.decode_attention
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        fn.argtypes = [ptr, ptr, ptr, ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_float, ctypes.c_int,
                       ctypes.c_int]
        fn.restype = ctypes.c_int
        self._fn = fn
        cascade = self._lib.decode_attention_cascade
        cascade.argtypes = fn.argtypes[:13] + [ctypes.c_int, i64, ptr, ptr, ptr, ptr]
        cascade.restype = ctypes.c_int
        self._cascade_fn = cascade
        extend = self._lib.extend_attention_cascade
        extend.argtypes = [ptr] * 4 + [i64] + [ptr] * 5 + [i64] * 4 + [ctypes.c_float, ctypes.c_int]
        extend.restype = ctypes.c_int
        self._extend_fn = extend
        # an AVX512_BF16 build; the call also asks Linux once for AMX tile data, where the build has tiles
        self.cascade = bool(self._lib.decode_attention_cascade_supported())
        self.tiles = bool(self._lib.decode_attention_cascade_tiles())  # its products on AMX tiles, else vectors
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

    @classmethod
    def check_extend_indices(cls, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                             prefix_lens: torch.Tensor, extend_lens: torch.Tensor, extend_starts: torch.Tensor,
                             tokens: int) -> None:
        """ValueError unless every request's positions lie in its table row and its tokens in q's `tokens` rows."""
        if int(extend_lens.min()) < 1 or int(prefix_lens.min()) < 0:
            raise ValueError("extend_lens, prefix_lens: each extend must be >= 1 and each prefix >= 0")
        if int(extend_starts.min()) < 0 or int((extend_starts + extend_lens).max()) > tokens:
            raise ValueError(f"extend_starts: each request's tokens must lie in q's {tokens} rows")
        cls.check_indices(req_to_token, req_pool_indices, prefix_lens + extend_lens)

    def __call__(self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, req_to_token: torch.Tensor,
                 req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float,
                 out: torch.Tensor | None = None, indices_checked: bool = False,
                 groups: PrefixGroups | None = None) -> torch.Tensor:
        """`indices_checked`: the caller ran check_indices on these index tensors already (once per step serves
        every layer). `groups`: see the module doc (the kernel checks them against the table)."""
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
        _check_int64_vectors(batch, req_pool_indices=req_pool_indices, seq_lens=seq_lens)
        if out is None:
            out = torch.empty_like(q)
        check_tensor("out", out, ndim=3, dtypes=(q.dtype,), device=cpu, contiguous=True)
        check_shape("out", out, tuple(q.shape))
        if batch == 0:
            return out
        if not indices_checked:
            self.check_indices(req_to_token, req_pool_indices, seq_lens)
        if groups is not None:
            return self._call_cascade(q, k_buf, v_buf, req_to_token, req_pool_indices, seq_lens, sm_scale, out, groups)
        rc = self._fn(q.data_ptr(), k_buf.data_ptr(), v_buf.data_ptr(), req_to_token.data_ptr(),
                      req_to_token.stride(0), req_pool_indices.data_ptr(), seq_lens.data_ptr(), out.data_ptr(),
                      batch, num_heads, num_kv_heads, head_dim, float(sm_scale), int(q.dtype == torch.bfloat16),
                      torch.get_num_threads())  # torch's intra-op setting (--num-threads) holds for the kernel too
        assert rc == 0, "decode_attention rejected shapes that passed the wrapper's checks"
        return out

    def _call_cascade(self, q, k_buf, v_buf, req_to_token, req_pool_indices, seq_lens, sm_scale, out,
                      groups: PrefixGroups) -> torch.Tensor:
        batch, num_heads, head_dim = q.shape
        if not self.cascade or q.dtype != torch.bfloat16 or head_dim % 32:
            raise ValueError(f"groups: the cascade needs an AVX512_BF16 build (this one: {self.cascade}), bf16 and "
                             f"head_dim % 32 == 0 (got {q.dtype}, head_dim {head_dim})")
        n = groups.key_start.numel()
        cpu = torch.device("cpu")
        for name in ("group_start", "members", "key_start", "key_end"):
            check_tensor(f"groups.{name}", getattr(groups, name), ndim=1, dtypes=(torch.int64,), device=cpu,
                         contiguous=True)
        check_shape("groups.group_start", groups.group_start, (n + 1,))
        check_shape("groups.members", groups.members, (int(groups.group_start[-1]),))
        check_shape("groups.key_end", groups.key_end, (n,))
        rc = self._cascade_fn(q.data_ptr(), k_buf.data_ptr(), v_buf.data_ptr(), req_to_token.data_ptr(),
                              req_to_token.stride(0), req_pool_indices.data_ptr(), seq_lens.data_ptr(), out.data_ptr(),
                              batch, num_heads, k_buf.shape[1], head_dim, float(sm_scale), torch.get_num_threads(), n,
                              groups.group_start.data_ptr(), groups.members.data_ptr(), groups.key_start.data_ptr(),
                              groups.key_end.data_ptr())
        if rc == -3:
            raise ValueError("groups: each request's groups must tile its positions from 0 to below its seq_len, "
                             "with the same slots as its group's first member, in a table row of the batch")
        if rc == -2:
            raise MemoryError("decode_attention_cascade: out of memory for its partial states")
        assert rc == 0, "decode_attention_cascade rejected shapes that passed the wrapper's checks"
        return out

    def extend(self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, req_to_token: torch.Tensor,
               req_pool_indices: torch.Tensor, prefix_lens: torch.Tensor, extend_lens: torch.Tensor,
               extend_starts: torch.Tensor, sm_scale: float, out: torch.Tensor | None = None,
               indices_checked: bool = False) -> torch.Tensor:
        """Extend attention, bf16, where `cascade` is true (AMX tiles or AVX512_BF16 vectors). q, out [T, H, D]:
        request b's extend_lens[b] new tokens are rows extend_starts[b] .. of q, at positions prefix_lens[b] .. of table row req_pool_indices[b], and
        their K/V are already in the pool; token i of request b attends to its positions [0, prefix_lens[b] + i].
        `indices_checked`: the caller ran check_extend_indices on these tensors (once per step)."""
        cpu = torch.device("cpu")
        if not self.cascade:
            raise ValueError("extend: the kernel's extend needs an AVX512_BF16 build (this one has none)")
        check_tensor("q", q, ndim=3, dtypes=(torch.bfloat16,), device=cpu, contiguous=True)
        tokens, num_heads, head_dim = q.shape
        if head_dim % 32 or not self.supports(q.dtype, num_heads, k_buf.shape[1], head_dim):
            raise ValueError(f"q: {num_heads} heads of dim {head_dim} over {k_buf.shape[1]} kv heads is outside the "
                             f"extend kernel's limits (head_dim % 32 == 0)")
        for name, buf in (("k_buf", k_buf), ("v_buf", v_buf)):
            check_tensor(name, buf, ndim=3, dtypes=(torch.bfloat16,), device=cpu, contiguous=True)
            check_shape(name, buf, (k_buf.shape[0], k_buf.shape[1], head_dim))
        check_tensor("req_to_token", req_to_token, ndim=2, dtypes=(torch.int32,), device=cpu, contiguous=True)
        batch = req_pool_indices.numel()
        _check_int64_vectors(batch, req_pool_indices=req_pool_indices, prefix_lens=prefix_lens,
                             extend_lens=extend_lens, extend_starts=extend_starts)
        if out is None:
            out = torch.empty_like(q)
        check_tensor("out", out, ndim=3, dtypes=(torch.bfloat16,), device=cpu, contiguous=True)
        check_shape("out", out, tuple(q.shape))
        if batch == 0:
            return out
        if not indices_checked:
            self.check_extend_indices(req_to_token, req_pool_indices, prefix_lens, extend_lens, extend_starts, tokens)
        rc = self._extend_fn(q.data_ptr(), k_buf.data_ptr(), v_buf.data_ptr(), req_to_token.data_ptr(),
                             req_to_token.stride(0), req_pool_indices.data_ptr(),
                             prefix_lens.data_ptr(), extend_lens.data_ptr(), extend_starts.data_ptr(), out.data_ptr(),
                             batch, num_heads, k_buf.shape[1], head_dim, float(sm_scale), torch.get_num_threads())
        if rc == -2:
            raise MemoryError("extend_attention_cascade: out of memory")
        assert rc == 0, "extend_attention_cascade rejected shapes that passed the wrapper's checks"
        return out
