"""Torch-native attention (the CPU default): SDPA per request for extend, one padded SDPA for decode."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.attention.base import AttentionBackend, ForwardBatch
from engine.scheduler.batch import ForwardMode

_LEN_BUCKET = 64  # decode key lengths are padded to a multiple of this


class TorchNativeBackend(AttentionBackend):
    def init_forward(self, fb: ForwardBatch) -> None:
        self._decode_meta = None
        if fb.mode is ForwardMode.DECODE:
            # Round the key length up to a bucket: oneDNN builds a primitive per new bf16 matmul shape, and a
            # fresh length every step made cold decode ~2x slower. Padded positions read whatever slot index
            # the table holds there (always a valid slot) and are masked out.
            max_len = min(-(-max(fb.seq_lens_list) // _LEN_BUCKET) * _LEN_BUCKET, fb.req_to_token.shape[1])
            idx = fb.req_to_token[fb.req_pool_indices, :max_len].long().contiguous()  # [B, L]
            valid = torch.arange(max_len, device=idx.device)[None, :] < fb.seq_lens[:, None]  # [B, L]
            self._decode_meta = (idx, valid[:, None, None, :])  # valid [B, 1, 1, L]

    def forward(self, q, k, v, layer_id: int, fb: ForwardBatch) -> torch.Tensor:
        fb.kv_pool.set_kv(layer_id, fb.out_cache_loc, k, v)
        k_buf, v_buf = fb.kv_pool.get_kv(layer_id)
        if fb.mode is ForwardMode.DECODE:
            return self._decode(q, k_buf, v_buf, fb)
        return self._extend(q, k, v, k_buf, v_buf, fb)

    def _decode(self, q, k_buf, v_buf, fb: ForwardBatch) -> torch.Tensor:
        # Explicit batched matmuls: CPU SDPA with a mask for one query row is ~50x slower than this.
        # index_select (not k_buf[idx]) and contiguous [B, KVH, L, D] operands: advanced indexing and matmuls
        # over permuted views were each several times slower on CPU.
        idx, valid = self._decode_meta
        B, H, D = q.shape
        kvh = k_buf.shape[1]
        L = idx.shape[1]
        flat = idx.view(-1)
        k = k_buf.index_select(0, flat).view(B, L, kvh, D).transpose(1, 2).contiguous().to(q.dtype)  # [B, KVH, L, D]
        v = v_buf.index_select(0, flat).view(B, L, kvh, D).transpose(1, 2).contiguous().to(q.dtype)
        qg = q.view(B, kvh, H // kvh, D)  # query heads grouped by their kv head
        scores = torch.matmul(qg, k.transpose(-1, -2)).float() * fb.sm_scale  # [B, KVH, G, L]
        scores.masked_fill_(~valid, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        return torch.matmul(probs, v).reshape(B, H * D)  # [B, KVH, G, D] -> [B, H*D]

    def _extend(self, q, k_new, v_new, k_buf, v_buf, fb: ForwardBatch) -> torch.Tensor:
        T, H, D = q.shape
        out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
        start = 0
        rows = fb.req_pool_indices.tolist()
        for b, (prefix, ext) in enumerate(zip(fb.prefix_lens_list, fb.extend_lens_list)):
            qb = q[start:start + ext].transpose(0, 1)[None]  # [1, H, ext, D]
            if prefix == 0:
                kb = k_new[start:start + ext].transpose(0, 1)[None]  # [1, KVH, ext, D]
                vb = v_new[start:start + ext].transpose(0, 1)[None]
                mask, causal = None, True
            else:
                idx = fb.req_to_token[rows[b], :prefix + ext].long()
                kb = k_buf.index_select(0, idx).transpose(0, 1)[None].to(q.dtype)  # [1, KVH, S, D]
                vb = v_buf.index_select(0, idx).transpose(0, 1)[None].to(q.dtype)
                # new token i sits at position prefix + i and sees keys 0..prefix + i
                qpos = torch.arange(prefix, prefix + ext, device=q.device)[:, None]
                mask = torch.arange(prefix + ext, device=q.device)[None, :] <= qpos  # [ext, S]
                causal = False
            o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, is_causal=causal, scale=fb.sm_scale,
                                               enable_gqa=True)
            out[start:start + ext] = o[0].transpose(0, 1)
            start += ext
        return out.view(T, H * D)
