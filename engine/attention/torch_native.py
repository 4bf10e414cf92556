"""Torch-native attention (the CPU default): SDPA per extend request, padded batched matmuls for the decode requests
(in groups of similar length); a MIXED step runs its extend requests then its decode requests that way."""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from engine.attention.base import AttentionBackend, ForwardBatch

_LEN_BUCKET = 64  # decode key lengths are padded to a multiple of this
# One more decode group per layer costs about as much as this many padded keys (bench preset, 2 cores: ~100 us of
# small ops against ~0.1-0.2 us per gathered key), so groups split only batches of very uneven lengths.
GROUP_COST_KEYS = 512
_MAX_SPLIT_POINTS = 32


def length_groups(lens: list[int], limit: int, group_cost: int = GROUP_COST_KEYS) -> list[tuple[list[int] | None, int]]:
    """Split decode requests of key lengths `lens` into groups, each padded to its own bucketed length (at most
    `limit`), minimising sum(group_cost + rows * padded length) by dynamic programming over the distinct buckets.
    Returns [(rows, padded length)]; a single group is (None, length): all rows in batch order."""
    padded = [min(-(-n // _LEN_BUCKET) * _LEN_BUCKET, limit) for n in lens]
    distinct = sorted(set(padded))
    if len(distinct) == 1:
        return [(None, distinct[0])]
    count = Counter(padded)
    cum = [0]
    for length in distinct:
        cum.append(cum[-1] + count[length])
    if len(distinct) > _MAX_SPLIT_POINTS:  # the DP is quadratic: cut only between coarser units of buckets
        ends = sorted({(i + 1) * len(distinct) // _MAX_SPLIT_POINTS - 1 for i in range(_MAX_SPLIT_POINTS)})
        distinct, cum = [distinct[e] for e in ends], [0] + [cum[e + 1] for e in ends]
    m = len(distinct)
    best = [0] + [0] * m  # best[j]: cheapest split of the requests in the j shortest buckets
    cut = [0] * (m + 1)  # cut[j]: the first bucket of the last group in that split
    for j in range(1, m + 1):
        best[j], cut[j] = min((best[i] + group_cost + (cum[j] - cum[i]) * distinct[j - 1], i) for i in range(j))
    bounds = []
    j = m
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    if len(bounds) == 1:
        return [(None, distinct[-1])]
    groups = []
    for i, j in reversed(bounds):
        lo, hi = (distinct[i - 1] if i > 0 else 0), distinct[j - 1]
        groups.append(([r for r, p in enumerate(padded) if lo < p <= hi], hi))
    return groups


class TorchNativeBackend(AttentionBackend):
    def __init__(self, decode_group_cost: int = GROUP_COST_KEYS):
        self.decode_group_cost = decode_group_cost  # see length_groups; 0 splits at every distinct bucket

    def init_forward(self, fb: ForwardBatch) -> None:
        n = fb.num_extend  # requests [0, n) extend, [n, B) decode
        self._num_extend_tokens = sum(fb.extend_lens_list[:n])
        self._extend_meta = self._plan_extend(fb, n) if n > 0 else None
        self._decode_meta = self._plan_decode(fb, n) if n < fb.batch_size else None

    def _plan_decode(self, fb: ForwardBatch, lo: int) -> tuple[torch.Tensor, list]:
        """For requests [lo, B), the step's decode requests: (block-diagonal selector [1, KVH, 1, KVH, 1], length
        groups [(rows among them as a tensor, or None for all in order; key slots [n, L]; valid [n, 1, L])])."""
        # Round key lengths up to a bucket: oneDNN builds a primitive per new bf16 matmul shape, and a fresh
        # length every step made cold decode ~2x slower. Padded positions read whatever slot index the table
        # holds there (always a valid slot) and are masked out. Uneven lengths are split into groups so that
        # short requests do not pay for the longest one (a 64-request log-parsing batch is 58-96% keys, 42-4% pad).
        device = fb.req_to_token.device
        pool_rows, seq_lens = fb.req_pool_indices[lo:], fb.seq_lens[lo:]
        groups = []
        for rows, max_len in length_groups(fb.seq_lens_list[lo:], fb.req_to_token.shape[1], self.decode_group_cost):
            sel = None if rows is None else torch.tensor(rows, dtype=torch.long, device=device)
            pr, sl = (pool_rows, seq_lens) if sel is None else (pool_rows[sel], seq_lens[sel])
            idx = fb.req_to_token[pr, :max_len].long().contiguous()  # [n, L]
            valid = torch.arange(max_len, device=device)[None, :] < sl[:, None]  # [n, L]
            groups.append((sel, idx, valid[:, None, :]))
        k0 = fb.kv_pool.get_kv(0)[0]  # [slots, KVH, D]
        kvh = k0.shape[1]
        eye = torch.eye(kvh, dtype=k0.dtype, device=k0.device).view(1, kvh, 1, kvh, 1)
        return eye, groups

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
        # Explicit batched matmuls: CPU SDPA with a mask for one query row is ~50x slower than this.
        # The gathered keys stay in the pool's [token, kv head, dim] order, so each K/V byte is copied once
        # (index_select) and read once (matmul as a transposed operand). Per kv head they would need a transposed
        # copy or strided matmul operands, both slower on CPU. Instead every query head is scored against all kv
        # heads' keys with its own head's block of a block-diagonal query, so the other blocks contribute zero:
        # KVH x the flops of the memory-bound decode matmuls, still far below the CPU's flop/byte ratio for
        # the few kv heads of CPU-sized models (bench preset, one layer in isolation: B=8 x 1,024 keys 629 vs
        # 737 us with per-head copies; B=7 x 1,664 keys 858 vs 3,882 us; whole decode steps ~5% faster).
        eye, groups = self._decode_meta
        eye = eye.to(q.dtype)
        if len(groups) == 1:
            return self._decode_group(q, k_buf, v_buf, groups[0][1], groups[0][2], eye, fb.sm_scale)
        out = torch.empty((q.shape[0], q.shape[1] * q.shape[2]), dtype=q.dtype, device=q.device)  # [B, H*D]
        for rows, idx, valid in groups:
            out.index_copy_(0, rows, self._decode_group(q.index_select(0, rows), k_buf, v_buf, idx, valid, eye,
                                                        fb.sm_scale))
        return out

    @staticmethod
    def _decode_group(q, k_buf, v_buf, idx, valid, eye, sm_scale: float) -> torch.Tensor:
        """Attention of q [n, H, D] (one token per request) over key slots idx [n, L] (valid [n, 1, L])."""
        B, H, D = q.shape
        kvh = k_buf.shape[1]
        L = idx.shape[1]
        flat = idx.view(-1)
        k = k_buf.index_select(0, flat).view(B, L, kvh * D).to(q.dtype)  # [B, L, KVH*D]
        v = v_buf.index_select(0, flat).view(B, L, kvh * D).to(q.dtype)
        qe = (q.view(B, kvh, H // kvh, 1, D) * eye).view(B, H, kvh * D)  # block-diagonal
        scores = torch.matmul(qe, k.transpose(1, 2)).float() * sm_scale  # [B, H, L]
        scores.masked_fill_(~valid, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        o = torch.matmul(probs, v).view(B, kvh, H // kvh, kvh, D)  # [B, KVH, G, KVH, D]: own block is on the diagonal
        return torch.diagonal(o, dim1=1, dim2=3).permute(0, 3, 1, 2).reshape(B, H * D)  # [B, G, D, KVH] -> [B, H*D]

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
