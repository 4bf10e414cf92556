"""The torch-native backend's decode attention (engine/attention/torch_decode.py): length groups, shared-prefix
(cascade) groups and their merge, against the plain per-request reference."""
from __future__ import annotations

import pytest
import torch

from engine.attention.torch_decode import (GROUP_COST_KEYS, decode_attention, length_groups, plan_decode,
                                           shared_prefix_groups)
from engine.kernels.gpu.decode_attention import decode_attention_reference

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 32


def test_length_groups_split_only_when_padding_costs_more_than_a_group():
    assert length_groups([5, 60, 64], 4096, group_cost=0) == [(None, 64)]  # one bucket: one group, batch order
    # 10 short requests and one long one: padding the short ones to 1,024 costs 10 x 960 keys > one more group
    lens = [30] * 5 + [1000] + [30] * 5
    assert length_groups(lens, 4096, group_cost=512) == [([0, 1, 2, 3, 4, 6, 7, 8, 9, 10], 64), ([5], 1024)]
    assert length_groups(lens, 4096, group_cost=10_000) == [(None, 1024)]
    assert length_groups([70, 5, 130, 65], 4096, group_cost=0) == [([1], 64), ([0, 3], 128), ([2], 192)]
    assert length_groups([70, 5000], 4096, group_cost=0) == [([0], 128), ([1], 4096)]  # capped at the table width
    many = [64 * (i % 200) + 1 for i in range(400)]  # 200 distinct buckets: split points are coarsened
    groups = length_groups(many, 1 << 20, group_cost=0)
    assert 2 <= len(groups) <= 32
    assert sorted(r for rows, _ in groups for r in rows) == list(range(400))
    assert all(many[r] <= length for rows, length in groups for r in rows)


def _table(gen, prefixes, seq_lens, width=384, num_slots=4096):
    """Rows whose first prefixes[i][1] slots copy row prefixes[i][0]'s (a shared cached prefix), the rest private
    and distinct; table rows are a permutation so pool rows differ from batch order."""
    fresh = iter((torch.randperm(num_slots - 1, generator=gen) + 1).tolist())
    rows = [[next(fresh) for _ in range(width)] for _ in seq_lens]
    for i, (src, n) in enumerate(prefixes):
        if src is not None:
            rows[i][:n] = rows[src][:n]
    pool_rows = torch.randperm(len(seq_lens) + 2, generator=gen)[:len(seq_lens)]
    table = torch.zeros(len(seq_lens) + 2, width, dtype=torch.int32)
    table[pool_rows] = torch.tensor(rows, dtype=torch.int32)
    return table, pool_rows


# rows 1, 2 share 200 tokens with row 0 (3 full blocks); row 3 shares 70 (1 block); row 4 shares nothing; row 5
# shares its whole prompt with row 2 but only up to its own length
PREFIXES = [(None, 0), (0, 200), (0, 200), (0, 70), (None, 0), (2, 190)]
SEQ_LENS = [230, 260, 201, 300, 90, 194]


def test_shared_prefix_groups_find_the_deepest_shared_checkpoint():
    gen = torch.Generator().manual_seed(1)
    table, pool_rows = _table(gen, PREFIXES, SEQ_LENS)
    slots = table[pool_rows].long()
    groups = shared_prefix_groups(slots, SEQ_LENS, group_cost=0)
    # row 5's last full block below its new token ends at 127: it shares 2 blocks, so it is grouped at 128 tokens
    # alone with nobody (rows 0-2 share 3 blocks with each other) and row 3 shares 1 block: both left out
    assert sorted((sorted(rows), p) for rows, p in groups) == [([0, 1, 2], 192)]
    assert shared_prefix_groups(slots, SEQ_LENS, group_cost=384) == []  # it saves 2 x 192 keys: not worth it
    assert shared_prefix_groups(slots[:1], SEQ_LENS[:1], group_cost=0) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_cost, share", [(0, True), (0, False), (10 ** 9, True), (GROUP_COST_KEYS, True), (600, True)])
def test_decode_attention_plans_match_the_reference(dtype, group_cost, share):
    gen = torch.Generator().manual_seed(7)
    table, pool_rows = _table(gen, PREFIXES + [(0, 200), (None, 0)], SEQ_LENS + [203, 5])
    seq_lens = SEQ_LENS + [203, 5]
    k_buf = torch.randn(4096, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    v_buf = torch.randn(4096, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    eye = torch.eye(KV_HEADS, dtype=dtype).view(1, KV_HEADS, 1, KV_HEADS, 1)
    plan = plan_decode(table, pool_rows, seq_lens, eye, group_cost, share)
    assert bool(plan.prefix) == (share and group_cost < 3 * 192)  # rows 0, 1, 2, 6 share 192 tokens
    covered = sorted(r for sel, _, _ in plan.suffix for r in (range(len(seq_lens)) if sel is None else sel.tolist()))
    assert covered == list(range(len(seq_lens)))  # every request's suffix is attended exactly once
    q = torch.randn(len(seq_lens), HEADS, HEAD_DIM, generator=gen).to(dtype)
    out = decode_attention(q, k_buf, v_buf, plan, HEAD_DIM ** -0.5)
    ref = decode_attention_reference(q, k_buf, v_buf, table, pool_rows, torch.tensor(seq_lens), HEAD_DIM ** -0.5)
    assert out.shape == (len(seq_lens), HEADS * HEAD_DIM) and out.dtype == dtype
    err = (out.view_as(ref).float() - ref).abs().max().item() / ref.abs().max().item()
    assert err < (1e-5 if dtype == torch.float32 else 2e-2)
