"""FlashInfer attention backend (CUDA only, `gpu` extra): paged prefill wrapper for extend, paged decode for decode.

The KV pool is token-slot addressed ([num_slots, kv_heads, head_dim] per layer); FlashInfer reads it as pages,
[num_slots // page_size, page_size, kv_heads, head_dim] in the NHD layout, through a CSR page table per request:
request b's pages are kv_indices[kv_indptr[b]:kv_indptr[b + 1]] and its last page holds kv_last_page_len[b]
tokens. With page_size 1 every slot is a page, so any slot pattern works; with page_size P the pool must be
page-aligned (position j of a request at slot page * P + j % P), which the engine's slot allocator guarantees.

`plan()` runs once per step in `init_forward` (it copies the indptr arrays to the host, one sync per step) and
`run()` once per layer in `forward`. The metadata is built by `paged_kv_metadata` / `qo_indptr`, pure torch
functions testable without FlashInfer. Interface and ForwardBatch fields: engine/attention/base.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention.base import AttentionBackend, ForwardBatch
from engine.forward_mode import ForwardMode

# FlashInfer's kernels are instantiated for half-precision inputs only.
SUPPORTED_KV_DTYPES = (torch.float16, torch.bfloat16)
DEFAULT_WORKSPACE_BYTES = 128 << 20  # FlashInfer's recommended float workspace size


@dataclass
class PagedKVMeta:
    """FlashInfer's CSR page table for one step, every tensor int32 on the pool's device."""

    kv_indptr: torch.Tensor  # [B + 1], prefix sums of pages per request
    kv_indices: torch.Tensor  # [total_pages], page ids in position order, request after request
    kv_last_page_len: torch.Tensor  # [B], tokens in each request's last page, in [1, page_size]


def paged_kv_metadata(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                      seq_lens_list: list[int], page_size: int) -> PagedKVMeta:
    """Page table of positions [0, seq_lens[b]) of each request, read from its req_to_token row.

    req_to_token int32 [max_reqs, max_context]; req_pool_indices and seq_lens int64 [B] on one device;
    seq_lens_list is seq_lens on the host (sizes the output without a device sync). Every seq_len must be >= 1.
    A page's id is the slot of its first position // page_size.
    """
    if page_size < 1:
        raise ValueError(f"page_size: must be >= 1, got {page_size}")
    device = req_to_token.device
    batch = len(seq_lens_list)
    seq_lens = seq_lens.to(device=device, dtype=torch.int64)
    pages_per_req = (seq_lens + page_size - 1) // page_size  # [B]
    total_pages = sum(-(-n // page_size) for n in seq_lens_list)
    kv_indptr = torch.zeros(batch + 1, dtype=torch.int64, device=device)
    kv_indptr[1:] = torch.cumsum(pages_per_req, 0)
    # For every page of the batch: which request owns it, and which page of that request it is.
    owner = torch.repeat_interleave(torch.arange(batch, device=device), pages_per_req,
                                    output_size=total_pages)  # [total_pages]
    page_in_req = torch.arange(total_pages, device=device) - kv_indptr[owner]  # [total_pages]
    rows = req_pool_indices.to(device=device, dtype=torch.int64)[owner]
    first_slots = req_to_token[rows, page_in_req * page_size].to(torch.int64)  # [total_pages]
    return PagedKVMeta(
        kv_indptr=kv_indptr.to(torch.int32),
        kv_indices=(first_slots // page_size).to(torch.int32),
        kv_last_page_len=((seq_lens - 1) % page_size + 1).to(torch.int32),
    )


def qo_indptr(extend_lens: torch.Tensor) -> torch.Tensor:
    """int32 [B + 1] prefix sums of the new tokens per request: request b's queries are rows [qo[b], qo[b + 1])."""
    out = torch.zeros(extend_lens.shape[0] + 1, dtype=torch.int32, device=extend_lens.device)
    out[1:] = torch.cumsum(extend_lens, 0)
    return out


class FlashInferBackend(AttentionBackend):
    """Attention through FlashInfer's paged-KV wrappers, planned once per step and run once per layer.

    Needs a CUDA device, `flashinfer` importable (the `gpu` extra), and a float16 / bfloat16 KV pool. Decode
    uses FlashInfer's tensor-core decode path when 4 or more query heads share a kv head, where it is faster.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, device: str | torch.device,
                 *, page_size: int = 1, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES):
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads: {num_heads} is not a positive multiple of num_kv_heads {num_kv_heads}")
        if head_dim < 1:
            raise ValueError(f"head_dim: must be >= 1, got {head_dim}")
        if page_size < 1:
            raise ValueError(f"page_size: must be >= 1, got {page_size}")
        self.device = torch.device(device)  # CUDA: create_backend refuses others before FlashInfer would fail
        try:
            import flashinfer
        except ImportError as e:
            raise ValueError("attention_backend: flashinfer is not installed; install the `gpu` extra "
                             "(pip install 'pairserve[gpu]') or use triton") from e
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.page_size = page_size
        # FlashInfer asks for a zeroed float workspace; one step plans one wrapper, so both can share it.
        self._workspace = torch.zeros(workspace_bytes, dtype=torch.uint8, device=self.device)
        self._prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace, "NHD")
        self._decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self._workspace, "NHD", use_tensor_cores=num_heads // num_kv_heads >= 4)
        self._planned_mode: ForwardMode | None = None

    def init_forward(self, fb: ForwardBatch) -> None:
        kv_dtype = fb.kv_pool.get_kv(0)[0].dtype
        if kv_dtype not in SUPPORTED_KV_DTYPES:
            raise ValueError(f"dtype: flashinfer needs a float16 or bfloat16 KV cache, got {kv_dtype}")
        meta = paged_kv_metadata(fb.req_to_token, fb.req_pool_indices, fb.seq_lens, fb.seq_lens_list,
                                 self.page_size)
        # The first 8 arguments are positional in every FlashInfer release since 0.2; the rest are keywords
        # (later releases deprecate passing them positionally).
        if fb.mode is ForwardMode.DECODE:
            self._decode.plan(meta.kv_indptr, meta.kv_indices, meta.kv_last_page_len, self.num_heads,
                              self.num_kv_heads, self.head_dim, self.page_size,
                              q_data_type=kv_dtype, kv_data_type=kv_dtype, sm_scale=fb.sm_scale)
        elif fb.mode in (ForwardMode.EXTEND, ForwardMode.MIXED):  # a decode token is a 1-token extend here
            # causal=True aligns the mask bottom-right: new token i (of extend_len) sees kv [0, prefix + i].
            self._prefill.plan(qo_indptr(fb.extend_lens), meta.kv_indptr, meta.kv_indices, meta.kv_last_page_len,
                               self.num_heads, self.num_kv_heads, self.head_dim, self.page_size,
                               causal=True, sm_scale=fb.sm_scale, q_data_type=kv_dtype, kv_data_type=kv_dtype)
        else:
            raise ValueError(f"mode: unsupported forward mode {fb.mode!r}")
        self._planned_mode = fb.mode

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                fb: ForwardBatch) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D] of the step's new tokens -> o [T, H * D] in q's dtype."""
        if self._planned_mode is not fb.mode:
            raise ValueError("fb: init_forward was not called for this step")
        fb.kv_pool.set_kv(layer_id, fb.out_cache_loc, k, v)
        k_buf, v_buf = fb.kv_pool.get_kv(layer_id)
        num_pages = k_buf.shape[0] // self.page_size
        pages_shape = (num_pages, self.page_size, self.num_kv_heads, self.head_dim)
        paged_kv = (k_buf[:num_pages * self.page_size].view(pages_shape),
                    v_buf[:num_pages * self.page_size].view(pages_shape))

        num_tokens = q.shape[0]
        # q may be a strided view of a fused qkv projection; the wrappers read it densely.
        q_kernel = q.reshape(num_tokens, self.num_heads, self.head_dim).to(k_buf.dtype).contiguous()
        wrapper = self._decode if fb.mode is ForwardMode.DECODE else self._prefill
        o = wrapper.run(q_kernel, paged_kv)  # [T, H, D]
        return o.to(q.dtype).reshape(num_tokens, self.num_heads * self.head_dim)
