"""Torch-native attention (`--attention-backend torch`): SDPA per extend request; the decode requests in batched
matmuls, shared cached prefixes attended once per group (engine/attention/torch_decode.py). A MIXED step runs both
parts. It is the CPU fallback where no C compiler can build the `cpu` backend's decode kernel, and that backend's
extend path."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.attention.base import AttentionBackend, ForwardBatch
from engine.attention.torch_decode import GROUP_COST_KEYS, DecodePlan, decode_attention, plan_decode


class TorchNativeBackend(AttentionBackend):
    def __init__(self, decode_group_cost: int = GROUP_COST_KEYS, share_prefixes: bool = True):
        self.decode_group_cost = decode_group_cost  # torch_decode.length_groups: 0 splits at every distinct bucket
        self.share_prefixes = share_prefixes  # attend each shared cached prefix once per group of decode requests

    def init_forward(self, fb: ForwardBatch) -> None:
        n = fb.num_extend  # requests [0, n) extend, [n, B) decode
        self._num_extend_tokens = sum(fb.extend_lens_list[:n])
        self._extend_meta = self._plan_extend(fb, n) if n > 0 else None
        self._decode_meta = self._plan_decode(fb, n) if n < fb.batch_size else None

    def _plan_decode(self, fb: ForwardBatch, lo: int) -> DecodePlan:
        """The decode plan for requests [lo, B), the step's decode requests (engine/attention/torch_decode.py)."""
        k0 = fb.kv_pool.get_kv(0)[0]  # [slots, KVH, D]
        kvh = k0.shape[1]
        eye = torch.eye(kvh, dtype=k0.dtype, device=k0.device).view(1, kvh, 1, kvh, 1)
        return plan_decode(fb.req_to_token, fb.req_pool_indices[lo:], fb.seq_lens_list[lo:], eye,
                           self.decode_group_cost, self.share_prefixes)

    def forward(self, q, k, v, layer_id: int, fb: ForwardBatch) -> torch.Tensor:
        fb.kv_pool.set_kv(layer_id, fb.out_cache_loc, k, v)
        k_buf, v_buf = fb.kv_pool.get_kv(layer_id)
        if self._extend_meta is None:
            return self._decode(q, k_buf, v_buf, fb)
        if self._decode_meta is None:
            return self._extend(q, k, v, k_buf, v_buf, fb)
        t = self._num_extend_tokens  # MIXED: the extend requests' tokens come first
        return torch.cat([self._extend(q[:t], k[:t], v[:t], k_buf, v_buf, fb), self._decode(q[t:], k_buf, v_buf, fb)])

    def _decode(self, q, k_buf, v_buf, fb: ForwardBatch) -> torch.Tensor:
        return decode_attention(q, k_buf, v_buf, self._decode_meta, fb.sm_scale)

    @staticmethod
    def _plan_extend(fb: ForwardBatch, n: int) -> list[tuple[int, int, torch.Tensor | None, torch.Tensor | None]]:
        """For each of the first n (extend) requests: (start, extend_len, key slots [S] or None, additive mask
        [extend_len, S] or None), built once per step rather than per layer: the mask build and SDPA's
        bool-to-float conversion cost ~10% of a cached-prefix extend's attention otherwise."""
        dtype = fb.kv_pool.get_kv(0)[0].dtype
        device = fb.req_to_token.device
        plan = []
        start = 0
        rows = fb.req_pool_indices[:n].tolist()
        for row, prefix, ext in zip(rows, fb.prefix_lens_list[:n], fb.extend_lens_list[:n]):
            if prefix == 0:  # keys are just the new tokens: plain causal attention
                plan.append((start, ext, None, None))
            else:
                idx = fb.req_to_token[row, :prefix + ext].long()  # [S]
                # new token i sits at position prefix + i and sees keys 0..prefix + i
                seen = torch.arange(prefix + ext, device=device)[None, :] <= torch.arange(
                    prefix, prefix + ext, device=device)[:, None]  # [ext, S]
                mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(~seen, float("-inf"))
                plan.append((start, ext, idx, mask))
            start += ext
        return plan

    def _extend(self, q, k_new, v_new, k_buf, v_buf, fb: ForwardBatch) -> torch.Tensor:
        T, H, D = q.shape
        out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
        for start, ext, idx, mask in self._extend_meta:
            qb = q[start:start + ext].transpose(0, 1)[None]  # [1, H, ext, D]
            if idx is None:
                kb = k_new[start:start + ext].transpose(0, 1)[None]  # [1, KVH, ext, D]
                vb = v_new[start:start + ext].transpose(0, 1)[None]
            else:
                kb = k_buf.index_select(0, idx).transpose(0, 1)[None].to(q.dtype)  # [1, KVH, S, D]
                vb = v_buf.index_select(0, idx).transpose(0, 1)[None].to(q.dtype)
            o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=None if mask is None else mask.to(q.dtype),
                                               is_causal=idx is None, scale=fb.sm_scale, enable_gqa=True)
            out[start:start + ext] = o[0].transpose(0, 1)
        return out.view(T, H * D)
