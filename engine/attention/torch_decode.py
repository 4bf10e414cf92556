"""Decode attention for the torch-native backend: one new token per request over its cached keys, on CPU.

A step's plan (built once, used by every layer) has two parts:
- **Shared prefixes** (cascade): requests whose key slots agree up to a 64-token checkpoint share that prefix's KV
  (the radix tree hands one set of slots to everyone who matched it), so the prefix is gathered once per group
  and attended by all of the group's queries together. A slot is owned by the tree or by one request, never
  both, and a tree slot sits at one depth of one path, so equal slots at position p mean equal slots on [0, p].
- **Suffixes**: each request's remaining keys (all of them outside a group), in groups of similar length, each
  padded to its own 64-token bucket (`length_groups`).
Where a request has both parts, the two normalised outputs merge by their log-sum-exp. Matmuls run in q's dtype
(layouts: `attend`, `attend_shared`); scores, softmax and merging in fp32.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

LEN_BUCKET = 64  # key lengths are padded to a multiple of this (and prefixes are shared in blocks of it)
# One more batched attention per layer costs about as much as this many padded keys (bench preset, 2 cores: ~100 us
# of small ops against ~0.1-0.2 us per gathered key), so groups split only where padding or sharing pays for it.
GROUP_COST_KEYS = 512
MAX_SPLIT_POINTS = 32
MAX_SHARING_BATCH = 512  # prefix detection compares every pair of requests' checkpoints (B * B * K bytes)


def length_groups(lens: list[int], limit: int, group_cost: int = GROUP_COST_KEYS) -> list[tuple[list[int] | None, int]]:
    """Split requests of key lengths `lens` into groups, each padded to its own bucketed length (at most `limit`),
    minimising sum(group_cost + rows * padded length) by dynamic programming over the distinct buckets.
    Returns [(rows, padded length)]; a single group is (None, length): all rows in batch order."""
    padded = [min(-(-n // LEN_BUCKET) * LEN_BUCKET, limit) for n in lens]
    distinct = sorted(set(padded))
    if len(distinct) == 1:
        return [(None, distinct[0])]
    count = Counter(padded)
    cum = [0]
    for length in distinct:
        cum.append(cum[-1] + count[length])
    if len(distinct) > MAX_SPLIT_POINTS:  # the DP is quadratic: cut only between coarser units of buckets
        ends = sorted({(i + 1) * len(distinct) // MAX_SPLIT_POINTS - 1 for i in range(MAX_SPLIT_POINTS)})
        distinct, cum = [distinct[e] for e in ends], [0] + [cum[e + 1] for e in ends]
    m = len(distinct)
    best = [0] * (m + 1)  # best[j]: cheapest split of the requests in the j shortest buckets
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


def shared_prefix_groups(slots: torch.Tensor, seq_lens: list[int], group_cost: int = GROUP_COST_KEYS
                         ) -> list[tuple[list[int], int]]:
    """Groups of requests that share a cached prefix: [(rows, prefix length)], prefix lengths in whole buckets.

    slots [B, L] int: each request's key slots (L ≥ its length); only positions below seq_len - 1 are compared
    (the last key is the new token's own slot). Each request joins a group at the checkpoint depth that saves most
    per member; a group is kept only when the keys it saves outweigh `group_cost`."""
    n_blocks = [(n - 1) // LEN_BUCKET for n in seq_lens]
    k = max(n_blocks)
    if k == 0 or not 2 <= len(seq_lens) <= MAX_SHARING_BATCH:
        return []
    marks = slots[:, LEN_BUCKET - 1:k * LEN_BUCKET:LEN_BUCKET]  # [B, K]: the slot ending each full block
    first = marks[[r for r, n in enumerate(n_blocks) if n > 0], 0]
    if first.unique().numel() == first.numel():
        return []  # no two requests share even their first block (always so with the radix cache off)
    valid = torch.arange(k, device=slots.device)[None, :] < torch.tensor(n_blocks, device=slots.device)[:, None]
    same = (marks[:, None, :] == marks[None, :, :]) & valid[:, None, :] & valid[None, :, :]  # [B, B, K], bytes
    differ = (~same).to(torch.uint8)
    depth = torch.where(same.all(-1), k, differ.argmax(-1))  # [B, B]: leading blocks shared by each pair
    depth.fill_diagonal_(0)
    # Each request picks the depth d that saves most per member if all c requests sharing >= d blocks with it
    # join: d * c / (c + 1) (a deep pair can save less than a shallower crowd).
    ranked = depth.sort(dim=1, descending=True).values[:, :-1]  # [B, B-1]: j+1 requests share >= ranked[:, j]
    c = torch.arange(1, ranked.shape[1] + 1, device=slots.device)
    pick = (ranked * c / (c + 1)).argmax(dim=1, keepdim=True)
    best = ranked.gather(1, pick)[:, 0].tolist()
    by_key: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row, d in enumerate(best):
        if d > 0:
            by_key[(d, int(marks[row, d - 1]))].append(row)
    return [(rows, d * LEN_BUCKET) for (d, _), rows in by_key.items()
            if len(rows) > 1 and (len(rows) - 1) * d * LEN_BUCKET > group_cost]


@dataclass
class DecodePlan:
    eye: torch.Tensor  # [1, KVH, 1, KVH, 1]: keeps each query head's own block of a block-diagonal query
    # suffix groups: (rows among the decode requests, or None for all in order; key slots [n, L]; valid [n, 1, L])
    suffix: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]
    # shared prefixes, in batches of groups of similar prefix length: (members [G, N]: rows among the decode
    # requests, short groups padded by repeating a member; key slots [G, P]; valid [G, 1, 1, P]; where the real
    # members sit in the flattened [G * N])
    prefix: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    prefix_rows: torch.Tensor | None  # the real members' rows, in the batches' flattened order


def plan_decode(req_to_token: torch.Tensor, pool_rows: torch.Tensor, seq_lens: list[int], eye: torch.Tensor,
                group_cost: int = GROUP_COST_KEYS, share_prefixes: bool = True) -> DecodePlan:
    """Plan one decode step for requests in table rows `pool_rows` [B] with `seq_lens` keys each (new one included)."""
    device = req_to_token.device
    width = min(-(-max(seq_lens) // LEN_BUCKET) * LEN_BUCKET, req_to_token.shape[1])
    slots = req_to_token[pool_rows, :width].long()  # [B, W]
    groups = shared_prefix_groups(slots, seq_lens, group_cost) if share_prefixes else []
    start = [0] * len(seq_lens)
    prefix, prefix_rows = [], []
    for batch, width_p in length_groups([p for _, p in groups], width, group_cost):
        batch_groups = groups if batch is None else [groups[i] for i in batch]
        n_max = max(len(rows) for rows, _ in batch_groups)
        members, real = [], []
        for g, (rows, p) in enumerate(batch_groups):
            members.append(rows + [rows[0]] * (n_max - len(rows)))
            real.extend(range(g * n_max, g * n_max + len(rows)))
            prefix_rows.extend(rows)
            for r in rows:
                start[r] = p
        kv = slots[[rows[0] for rows, _ in batch_groups], :width_p]  # [G, P]
        lens_p = torch.tensor([p for _, p in batch_groups], device=device)
        valid = torch.arange(width_p, device=device)[None, :] < lens_p[:, None]  # [G, P]
        prefix.append((torch.tensor(members, device=device), kv, valid[:, None, None, :],
                       torch.tensor(real, device=device)))
    suffix = []
    suffix_lens = [n - s for n, s in zip(seq_lens, start)]
    starts = torch.tensor(start, dtype=torch.long, device=device)
    lens = torch.tensor(suffix_lens, dtype=torch.long, device=device)
    for rows, length in length_groups(suffix_lens, width, group_cost):
        sel = None if rows is None else torch.tensor(rows, dtype=torch.long, device=device)
        st, ln = (starts, lens) if sel is None else (starts[sel], lens[sel])
        src = slots if sel is None else slots[sel]
        pos = (st[:, None] + torch.arange(length, device=device)[None, :]).clamp_(max=width - 1)  # [n, L]
        idx = src.gather(1, pos)  # positions past a request's end read a valid slot and are masked out
        valid = torch.arange(length, device=device)[None, :] < ln[:, None]  # [n, L]
        suffix.append((sel, idx, valid[:, None, :]))
    return DecodePlan(eye, suffix, prefix, torch.tensor(prefix_rows, device=device) if prefix else None)


def _softmax_lse(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax over the last dim and its log-sum-exp, max(s) - log(max(softmax)): logsumexp itself costs ~4x a
    softmax here, and exp(scores - lse) of underflowing scores takes a denormal slow path (~100x)."""
    probs = torch.softmax(scores, dim=-1)
    return probs, scores.amax(dim=-1) - torch.log(probs.amax(dim=-1))


def attend(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor,
           eye: torch.Tensor, sm_scale: float, with_lse: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q [n, H, D] (one query per request) over key slots idx [n, L] (valid [n, 1, L]) → (o [n, H, D] in q's dtype,
    log-sum-exp of the scaled scores [n, H] in fp32, or None without `with_lse`).

    The gathered keys stay in the pool's [token, kv head, dim] order, so each K/V byte is copied once (index_select)
    and read once (matmul as a transposed operand); per kv head they would need a transposed copy or strided
    operands, both slower on CPU. Each query head is scored against all kv heads' keys with its own head's block of
    a block-diagonal query (the other blocks are zero): KVH x the flops of these memory-bound matmuls, still far
    below the CPU's flop/byte ratio for the few kv heads of CPU-sized models (bench preset, one layer: B=8 x 1,024
    keys 629 vs 737 us with per-head copies; B=7 x 1,664 keys 858 vs 3,882 us). CPU SDPA with a mask for one
    query row is ~50x slower than this."""
    n, h, d = q.shape
    kvh = k_buf.shape[1]
    length = idx.shape[1]
    flat = idx.view(-1)
    k = k_buf.index_select(0, flat).view(n, length, kvh * d).to(q.dtype)  # [n, L, KVH*D]
    v = v_buf.index_select(0, flat).view(n, length, kvh * d).to(q.dtype)
    qe = (q.view(n, kvh, h // kvh, 1, d) * eye).view(n, h, kvh * d)  # block-diagonal
    scores = torch.matmul(qe, k.transpose(1, 2)).float() * sm_scale  # [n, H, L]
    scores.masked_fill_(~valid, float("-inf"))
    probs, lse = _softmax_lse(scores) if with_lse else (torch.softmax(scores, dim=-1), None)  # lse [n, H]
    probs = probs.to(q.dtype)
    o = torch.matmul(probs, v).view(n, kvh, h // kvh, kvh, d)  # [n, KVH, G, KVH, D]: own block on the diagonal
    return torch.diagonal(o, dim1=1, dim2=3).permute(0, 3, 1, 2).reshape(n, h, d), lse  # [n, G, D, KVH] -> [n, H, D]


def attend_shared(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor,
                  sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q [G, N, H, D]: each group's N queries over its key slots idx [G, P] (valid [G, 1, 1, P]) → (o [G, N, H, D]
    in q's dtype, lse [G, N, H] fp32).

    Many queries per key: per kv head matmuls (the transposed copy of a gathered prefix is cheap next to the N
    queries reading it), not the block-diagonal form, which would multiply these compute-bound flops by KVH."""
    g, n, h, d = q.shape
    kvh = k_buf.shape[1]
    p = idx.shape[1]
    k = k_buf.index_select(0, idx.view(-1)).view(g, p, kvh, d).transpose(1, 2).contiguous().to(q.dtype)
    v = v_buf.index_select(0, idx.view(-1)).view(g, p, kvh, d).transpose(1, 2).contiguous().to(q.dtype)
    qh = q.view(g, n, kvh, h // kvh, d).transpose(1, 2).reshape(g, kvh, n * (h // kvh), d)  # [G, KVH, N*Gh, D]
    scores = torch.matmul(qh, k.transpose(2, 3)).float() * sm_scale  # [G, KVH, N*Gh, P]
    scores.masked_fill_(~valid, float("-inf"))
    probs, lse = _softmax_lse(scores)  # lse [G, KVH, N*Gh]
    o = torch.matmul(probs.to(q.dtype), v)  # [G, KVH, N*Gh, D]
    o = o.view(g, kvh, n, h // kvh, d).transpose(1, 2).reshape(g, n, h, d)
    return o, lse.view(g, kvh, n, h // kvh).transpose(1, 2).reshape(g, n, h)


def decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, plan: DecodePlan,
                     sm_scale: float) -> torch.Tensor:
    """q [B, H, D] → o [B, H * D] in q's dtype, by `plan` (from plan_decode)."""
    b, h, d = q.shape
    eye = plan.eye.to(q.dtype)
    if not plan.prefix and len(plan.suffix) == 1:
        _, idx, valid = plan.suffix[0]
        return attend(q, k_buf, v_buf, idx, valid, eye, sm_scale, with_lse=False)[0].reshape(b, h * d)
    o = torch.empty((b, h, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h), dtype=torch.float32, device=q.device) if plan.prefix else None
    for sel, idx, valid in plan.suffix:
        og, lg = attend(q if sel is None else q.index_select(0, sel), k_buf, v_buf, idx, valid, eye, sm_scale,
                        with_lse=lse is not None)
        if sel is None:
            o.copy_(og)
            if lse is not None:
                lse.copy_(lg)
        else:
            o.index_copy_(0, sel, og)
            if lse is not None:
                lse.index_copy_(0, sel, lg)
    if not plan.prefix:
        return o.view(b, h * d)
    op, lp = [], []
    for members, idx, valid, real in plan.prefix:
        qm = q.index_select(0, members.view(-1)).view(*members.shape, h, d)  # [G, N, H, D]
        og, lg = attend_shared(qm, k_buf, v_buf, idx, valid, sm_scale)
        op.append(og.view(-1, h, d).index_select(0, real))
        lp.append(lg.view(-1, h).index_select(0, real))
    op, lp = torch.cat(op).float(), torch.cat(lp)  # [M, H, D], [M, H]: members in plan.prefix_rows order
    rows = plan.prefix_rows
    os_, ls = o.index_select(0, rows).float(), lse.index_select(0, rows)
    total = torch.logaddexp(lp, ls)
    merged = op * torch.exp(lp - total)[..., None] + os_ * torch.exp(ls - total)[..., None]
    o.index_copy_(0, rows, merged.to(q.dtype))
    return o.view(b, h * d)
