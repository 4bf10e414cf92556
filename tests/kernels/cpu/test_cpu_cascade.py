"""The CPU kernel's matrix-product paths (csrc/decode_attention_cascade.h): decode requests that share cached keys,
in nested groups, against the torch reference and the kernel without groups, and extend attention against its
reference, on poisoned pools; groups or extend indices that break the contract are refused. Runs where the kernel
has them (a CPU with AVX512_BF16), on AVX512_BF16 vectors and, where the CPU has AMX-BF16, on tiles as well;
elsewhere only the refusal."""
import os
import shutil

import pytest
import torch

from engine.kernels.cpu.decode_attention import CpuDecodeKernel, PrefixGroups
from engine.attention.prefix_tree import Segment, prefix_segments
from engine.kernels.gpu.decode_attention import decode_attention_reference

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    return CpuDecodeKernel(tmp_path_factory.mktemp("kernels"))


@pytest.fixture(scope="module")
def vector_kernel(kernel, tmp_path_factory):
    """The build without AMX tiles, where the default build has them (elsewhere the two are the same)."""
    if not kernel.tiles:
        pytest.skip("no AMX tiles here: the default build already runs the vector products")
    built = CpuDecodeKernel(tmp_path_factory.mktemp("kernels_no_amx"), amx=False)
    assert built.cascade and not built.tiles
    return built


@pytest.fixture(params=["default", "vectors"])
def cascade(request, kernel):
    if not kernel.cascade:
        pytest.skip("no AVX512_BF16 here: the kernel has no cascade")
    return kernel if request.param == "default" else request.getfixturevalue("vector_kernel")


def _shared_pool(gen, tree, num_kv_heads, head_dim):
    """tree: per request (parent request or -1, keys copied from the parent's row, own keys after them). Own keys
    get fresh slots in random order; every slot no request holds is NaN. Returns (k_buf, v_buf, table [n + 2, L],
    rows [n], seq_lens [n])."""
    lens = []
    for parent, shared, own in tree:
        assert parent < len(lens) and shared <= (lens[parent] if parent >= 0 else 0)
        lens.append(shared + own)
    num_slots = sum(own for _, _, own in tree) + 7
    fresh = iter((torch.randperm(num_slots - 1, generator=gen) + 1).tolist())
    rows = torch.randperm(len(tree) + 2, generator=gen)[:len(tree)]
    table = torch.zeros(len(tree) + 2, max(lens) + 3, dtype=torch.int32)
    owned = torch.zeros(num_slots, dtype=torch.bool)
    for r, (parent, shared, own) in enumerate(tree):
        if shared:
            table[rows[r], :shared] = table[rows[parent], :shared]
        mine = torch.tensor([next(fresh) for _ in range(own)], dtype=torch.int32)
        table[rows[r], shared:shared + own] = mine
        owned[mine.long()] = True
    k_buf = torch.randn(num_slots, num_kv_heads, head_dim, generator=gen).bfloat16()
    v_buf = torch.randn(num_slots, num_kv_heads, head_dim, generator=gen).bfloat16()
    k_buf[~owned] = float("nan")
    v_buf[~owned] = float("nan")
    return k_buf, v_buf, table, rows.to(torch.int64), torch.tensor(lens)


# a 700-key root everyone shares (several 128-key chunks), two subtrees, a loner, and a member with one own key
TREE = [(-1, 0, 700), (0, 700, 90), (0, 640, 33), (1, 790, 1), (1, 777, 40), (2, 673, 5), (-1, 0, 300),
        (0, 700, 1), (4, 800, 20)]
SHAPES = [(8, 2, 64), (16, 2, 128), (4, 4, 64), (32, 2, 64)]  # 4, 8, 1 and 16 query heads per kv head


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", SHAPES)
@pytest.mark.parametrize("block", [64, 16, 5])
def test_tree_segments_match_reference(cascade, gen, rel_err, num_heads, num_kv_heads, head_dim, block):
    k_buf, v_buf, table, rows, seq_lens = _shared_pool(gen, TREE, num_kv_heads, head_dim)
    lens = seq_lens.tolist()
    marks = table[rows, block - 1:max(lens) - 1:block].tolist()
    segments = prefix_segments(marks, lens, block)
    assert len(segments) >= 2 and max(len(s.members) for s in segments) == 8  # all but the loner
    q = torch.randn(len(TREE), num_heads, head_dim, generator=gen).bfloat16()
    args = (q, k_buf, v_buf, table, rows, seq_lens, head_dim ** -0.5)
    out = torch.full_like(q, float("nan"))  # poisoned: every row must be written
    o = cascade(*args, out=out, groups=PrefixGroups.build(segments))
    assert o is out and not o.isnan().any()  # NaN also flags a read of a slot outside a request's keys
    ref = decode_attention_reference(*args)
    assert rel_err(o, ref) <= 1e-2
    assert rel_err(o, cascade(*args)) <= 1e-2  # the same attention as without groups


def test_ranges_off_the_block_grid_and_many_query_tiles(cascade, gen, rel_err):
    """Hand-made levels of odd lengths ([0, 37), [37, 300)) and a group of 20 members x 4 heads = 80 query rows."""
    tree = [(-1, 0, 301)] + [(0, 300, 1 + i) for i in range(19)] + [(0, 37, 9)]
    k_buf, v_buf, table, rows, seq_lens = _shared_pool(gen, tree, 2, 64)
    groups = PrefixGroups.build([Segment(list(range(20)), 37, 300), Segment(list(range(21)), 0, 37)])
    q = torch.randn(len(tree), 8, 64, generator=gen).bfloat16() * 4  # peaked softmax: the merges' max matters
    args = (q, k_buf, v_buf, table, rows, seq_lens, 0.125)
    assert rel_err(cascade(*args, groups=groups), decode_attention_reference(*args)) <= 1e-2


def test_empty_groups_are_the_plain_kernel(cascade, gen):
    k_buf, v_buf, table, rows, seq_lens = _shared_pool(gen, TREE, 2, 64)
    q = torch.randn(len(TREE), 8, 64, generator=gen).bfloat16()
    args = (q, k_buf, v_buf, table, rows, seq_lens, 0.125)
    assert torch.equal(cascade(*args, groups=PrefixGroups.build([])), cascade(*args))


@pytest.mark.parametrize("segments", [
    [Segment([0, 1], 0, 701)],  # request 1 holds its own slot at 700
    [Segment([0, 1], 1, 600)],  # does not start at 0
    [Segment([0, 7], 0, 701)],  # request 7's whole row: nothing of its own left
    [Segment([0, 1, 2], 0, 600), Segment([0, 1], 640, 700)],  # a gap between levels
    [Segment([0, 1], 0, 600), Segment([0, 1], 0, 600)],  # the same level twice
    [Segment([0, 9], 0, 10)],  # member 9 is outside the batch
])
def test_groups_that_break_the_contract_are_refused(cascade, gen, segments):
    k_buf, v_buf, table, rows, seq_lens = _shared_pool(gen, TREE, 2, 64)
    q = torch.randn(len(TREE), 8, 64, generator=gen).bfloat16()
    with pytest.raises(ValueError, match="groups: each request's groups must tile"):
        cascade(q, k_buf, v_buf, table, rows, seq_lens, 0.125, groups=PrefixGroups.build(segments))


def test_groups_need_the_cascade(kernel, gen):
    """fp32 (and any build without AVX512_BF16) cannot take groups: a clear error, not a silent fallback."""
    k_buf, v_buf, table, rows, seq_lens = _shared_pool(gen, TREE, 2, 64)
    q = torch.randn(len(TREE), 8, 64, generator=gen)
    with pytest.raises(ValueError, match="groups: the cascade needs"):
        kernel(q, k_buf.float(), v_buf.float(), table, rows, seq_lens, 0.125,
               groups=PrefixGroups.build([Segment([0, 1], 0, 600)]))


def test_cpu_backend_plans_the_tree_and_matches_the_torch_backend(cascade, gen, rel_err):
    """A decode step through CpuBackend: it groups the requests into the prefix tree's segments once per step and
    gives the torch backend's attention (the torch backend's own shared-prefix cascade, in matmuls)."""
    from engine.attention.base import ForwardBatch
    from engine.attention.cpu_backend import CpuBackend, KernelDecodePlan
    from engine.attention.torch_native import TorchNativeBackend
    from engine.memory import KVPool
    from engine.forward_mode import ForwardMode

    k_buf, v_buf, table, rows, seq_lens = _shared_pool(gen, TREE, 2, 64)
    pool = KVPool(k_buf.shape[0], 1, 2, 64, torch.bfloat16, "cpu")
    pool.k[0].copy_(k_buf)
    pool.v[0].copy_(v_buf)
    pool.k[0][0] = pool.v[0][0] = 0  # the engine's padding slot, which the torch backend reads past each row's end
    n = len(TREE)
    last = table[rows, seq_lens - 1].long()  # each request's newest key: this step's token
    fb = ForwardBatch(mode=ForwardMode.DECODE, batch_size=n, req_pool_indices=rows, seq_lens=seq_lens,
                      prefix_lens=seq_lens - 1, extend_lens=torch.ones(n, dtype=torch.int64),
                      extend_start_loc=torch.arange(n), positions=seq_lens - 1, out_cache_loc=last,
                      last_token_index=torch.arange(n), req_to_token=table, kv_pool=pool, attn_backend=None,
                      sm_scale=0.125, seq_lens_list=seq_lens.tolist(), prefix_lens_list=(seq_lens - 1).tolist(),
                      extend_lens_list=[1] * n)
    q = torch.randn(n, 8, 64, generator=gen).bfloat16()
    k_new, v_new = k_buf[last], v_buf[last]  # stored again by each backend: the pool does not change
    cpu = CpuBackend(cascade, 8, 2, 64)
    cpu.init_forward(fb)
    plan = cpu._decode_meta
    assert isinstance(plan, KernelDecodePlan) and plan.groups is not None and plan.groups.key_start.numel() == 2
    out = cpu.forward(q, k_new, v_new, 0, fb)
    ref_backend = TorchNativeBackend()
    ref_backend.init_forward(fb)
    assert rel_err(out, ref_backend.forward(q, k_new, v_new, 0, fb)) <= 2e-2
    solo = CpuBackend(cascade, 8, 2, 64, share_prefixes=False)
    solo.init_forward(fb)
    assert solo._decode_meta.groups is None
    assert rel_err(out, solo.forward(q, k_new, v_new, 0, fb)) <= 1e-2


# extend on tiles: (prefix_lens, extend_lens) per request. Prefixes across 128-key chunks, pure causal requests,
# one new token, and 40-130 new tokens (several 128-row tasks of 32 tokens x 4 heads)
EXTEND_CASES = [([0, 17, 300], [40, 3, 129]), ([0], [1]), ([5, 1000], [1, 7]), ([0, 0], [200, 33])]


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", SHAPES)
@pytest.mark.parametrize("prefix_lens,extend_lens", EXTEND_CASES)
def test_extend_matches_reference(cascade, make_pool, gen, rel_err, num_heads, num_kv_heads, head_dim, prefix_lens,
                                  extend_lens):
    from engine.kernels.gpu.extend_attention import extend_attention_reference

    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    pool = make_pool(seq_lens, 1, num_kv_heads, head_dim, torch.bfloat16)
    ext = torch.tensor(extend_lens)
    q = torch.randn(int(ext.sum()), num_heads, head_dim, generator=gen).bfloat16()
    args = (q, pool.k_buf, pool.v_buf, pool.req_to_token, pool.req_pool_indices, torch.tensor(prefix_lens), ext,
            torch.cumsum(ext, 0) - ext, head_dim ** -0.5)
    out = torch.full_like(q, float("nan"))
    o = cascade.extend(*args, out=out)
    assert o is out and not o.isnan().any()
    assert rel_err(o, extend_attention_reference(*args)) <= 1e-2


@pytest.mark.parametrize("field,value,match", [
    ("extend_lens", torch.tensor([0, 3]), "extend_lens, prefix_lens: each extend must be >= 1"),
    ("prefix_lens", torch.tensor([8, 1]), r"seq_lens: each must be in \[1, 9\]"),
    ("extend_starts", torch.tensor([0, 3]), "extend_starts: each request's tokens must lie in q's 5 rows"),
    ("req_pool_indices", torch.tensor([0, 9]), r"req_pool_indices: each must be in \[0, "),
])
def test_extend_rejects_bad_input(cascade, make_pool, gen, field, value, match):
    pool = make_pool([4, 4], 1, 2, 64, torch.bfloat16)
    args = dict(q=torch.randn(5, 8, 64, generator=gen).bfloat16(), k_buf=pool.k_buf, v_buf=pool.v_buf,
                req_to_token=pool.req_to_token, req_pool_indices=pool.req_pool_indices,
                prefix_lens=torch.tensor([2, 1]), extend_lens=torch.tensor([2, 3]), extend_starts=torch.tensor([0, 2]),
                sm_scale=0.125)
    args[field] = value
    with pytest.raises(ValueError, match=match):
        cascade.extend(**args)
