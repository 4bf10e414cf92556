"""The CPU backend: extend attention as torch-native (SDPA per request), decode attention by the compiled kernel
(engine/kernels/cpu/decode_attention.py), which reads each request's K/V rows from the pool in place. Against the
torch-native decode (gather into padded copies, then batched matmuls) it reads every K/V byte once instead of
three times, and has no per-group call overheads; a model or dtype outside the kernel's limits (fp16, head_dim >
256) keeps the torch-native decode.

Where the kernel has its matrix-product paths (bf16 on a CPU with AVX512_BF16; on AMX tiles where it has them),
extend attention runs on them too (each request's new tokens over its cached prefix and causally each other, read
in place: 1.6-2.3x the SDPA path with its gathered copies on AMX, 3.4-5.9x on AVX512_BF16 vectors), and each step's
decode requests that share cached keys are grouped once per step into a tree of segments
(engine/attention/prefix_tree.py), so that every layer attends each segment once for all the requests below it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention.base import ForwardBatch
from engine.kernels.cpu.decode_attention import CpuDecodeKernel, PrefixGroups
from engine.attention.prefix_tree import prefix_segments
from engine.attention.torch_decode import LEN_BUCKET
from engine.attention.torch_native import TorchNativeBackend

SEGMENT_BLOCK = LEN_BUCKET  # requests are compared every this many keys


@dataclass(frozen=True)
class KernelDecodePlan:
    rows: torch.Tensor  # int64 [n]: the decode requests' rows of req_to_token
    seq_lens: torch.Tensor  # int64 [n]
    groups: PrefixGroups | None  # requests sharing a cached prefix, by index among the n (None: no cascade)


@dataclass(frozen=True)
class KernelExtendPlan:
    rows: torch.Tensor  # int64 [n]: the extend requests' rows of req_to_token
    prefix_lens: torch.Tensor  # int64 [n]
    extend_lens: torch.Tensor  # int64 [n]
    starts: torch.Tensor  # int64 [n]: each request's first row in the step's new tokens


class CpuBackend(TorchNativeBackend):
    def __init__(self, kernel: CpuDecodeKernel, num_heads: int, num_kv_heads: int, head_dim: int,
                 share_prefixes: bool = True):
        super().__init__(share_prefixes=share_prefixes)
        self.kernel = kernel
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim

    def _products(self, dtype: torch.dtype) -> bool:
        """Whether the kernel's matrix-product paths (cascade, extend) serve this model: an AVX512_BF16 build, bf16,
        head_dim % 32 == 0."""
        return (self.kernel.cascade and dtype == torch.bfloat16 and self.head_dim % 32 == 0
                and self.kernel.supports(dtype, self.num_heads, self.num_kv_heads, self.head_dim))

    def _plan_extend(self, fb: ForwardBatch, n: int):
        if not self._products(fb.kv_pool.get_kv(0)[0].dtype):
            return super()._plan_extend(fb, n)
        plan = KernelExtendPlan(fb.req_pool_indices[:n].contiguous(), fb.prefix_lens[:n].contiguous(),
                                fb.extend_lens[:n].contiguous(), fb.extend_start_loc[:n].contiguous())
        self.kernel.check_extend_indices(fb.req_to_token, plan.rows, plan.prefix_lens, plan.extend_lens, plan.starts,
                                         self._num_extend_tokens)  # once per step, not per layer
        return plan

    def _extend(self, q, k_new, v_new, k_buf, v_buf, fb: ForwardBatch) -> torch.Tensor:
        plan = self._extend_meta
        if not isinstance(plan, KernelExtendPlan):
            return super()._extend(q, k_new, v_new, k_buf, v_buf, fb)
        t, h, d = q.shape
        return self.kernel.extend(q.contiguous(), k_buf, v_buf, fb.req_to_token, plan.rows, plan.prefix_lens,
                                  plan.extend_lens, plan.starts, fb.sm_scale, indices_checked=True).view(t, h * d)

    def _plan_decode(self, fb: ForwardBatch, lo: int):
        dtype = fb.kv_pool.get_kv(0)[0].dtype
        if not self.kernel.supports(dtype, self.num_heads, self.num_kv_heads, self.head_dim):
            return super()._plan_decode(fb, lo)
        rows, seq_lens = fb.req_pool_indices[lo:].contiguous(), fb.seq_lens[lo:].contiguous()
        self.kernel.check_indices(fb.req_to_token, rows, seq_lens)  # once per step, not per layer
        groups = None
        if self.share_prefixes and self._products(dtype):
            lens = fb.seq_lens_list[lo:]
            marks = fb.req_to_token[rows, SEGMENT_BLOCK - 1:max(lens) - 1:SEGMENT_BLOCK].tolist()  # [n, blocks]
            segments = prefix_segments(marks, lens, SEGMENT_BLOCK)
            groups = PrefixGroups.build(segments) if segments else None
        return KernelDecodePlan(rows, seq_lens, groups)

    def _decode(self, q, k_buf, v_buf, fb: ForwardBatch) -> torch.Tensor:
        plan = self._decode_meta
        if not isinstance(plan, KernelDecodePlan):
            return super()._decode(q, k_buf, v_buf, fb)
        n, h, d = q.shape
        return self.kernel(q.contiguous(), k_buf, v_buf, fb.req_to_token, plan.rows, plan.seq_lens,
                           fb.sm_scale, indices_checked=True, groups=plan.groups).view(n, h * d)
