"""decode_attention vs its torch reference on scattered paged pools (interpreter, see conftest.py)."""
import pytest
import torch

from engine.kernels.gpu.decode_attention import decode_attention, decode_attention_reference
from engine.kernels.gpu.extend_attention import extend_attention

# Tolerance on max|out - ref| / max|ref|; fp16/bf16 are bounded by the rounding of the output itself.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}

# (seq_lens, num_heads, num_kv_heads, head_dim, page_size, num_kv_splits, dtype): a covering subset.
# [1, 2, 3] with 8 splits leaves most splits empty; 130 keys span several blocks of one split.
CASES = [
    ([1, 9, 70], 7, 1, 64, 1, 4, torch.float32),
    ([1, 2, 3], 2, 2, 128, 16, 8, torch.float32),
    ([33, 130], 8, 2, 128, 16, 3, torch.float16),
    ([17, 5], 4, 1, 64, 16, 1, torch.float32),
    ([40, 1, 7], 4, 1, 64, 1, 2, torch.bfloat16),
]


@pytest.mark.parametrize("seq_lens,num_heads,num_kv_heads,head_dim,page_size,num_kv_splits,dtype", CASES)
def test_matches_reference(make_pool, gen, rel_err, seq_lens, num_heads, num_kv_heads, head_dim, page_size,
                           num_kv_splits, dtype):
    pool = make_pool(seq_lens, page_size, num_kv_heads, head_dim, dtype)
    q = torch.randn(len(seq_lens), num_heads, head_dim, generator=gen).to(dtype)
    o = torch.full_like(q, float("nan"))  # poisoned: every row must be written
    args = (pool.req_to_token, pool.req_pool_indices, torch.tensor(seq_lens), head_dim ** -0.5)
    decode_attention(q, pool.k_buf, pool.v_buf, o, *args, num_kv_splits=num_kv_splits)
    ref = decode_attention_reference(q, pool.k_buf, pool.v_buf, *args)
    assert not o.isnan().any()
    assert rel_err(o, ref) <= TOLERANCE[dtype]


def test_agrees_with_extend_of_one_token(make_pool, gen, rel_err):
    """A decode step is an extend of one token whose prefix is everything before it."""
    seq_lens = [5, 38]
    pool = make_pool(seq_lens, 16, 2, 64, torch.float32)
    q = torch.randn(2, 4, 64, generator=gen)
    seq_lens_t = torch.tensor(seq_lens)
    decode_out = decode_attention(q, pool.k_buf, pool.v_buf, torch.empty_like(q), pool.req_to_token,
                                  pool.req_pool_indices, seq_lens_t, 0.125, num_kv_splits=2)
    ones = torch.ones(2, dtype=torch.int64)
    extend_out = extend_attention(q, pool.k_buf, pool.v_buf, torch.empty_like(q), pool.req_to_token,
                                  pool.req_pool_indices, seq_lens_t - 1, ones, torch.arange(2), 0.125)
    assert rel_err(decode_out, extend_out) <= 1e-5


def test_reuses_caller_scratch_buffers(make_pool, gen, rel_err):
    pool = make_pool([12, 3], 1, 1, 64, torch.float32)
    q = torch.randn(2, 4, 64, generator=gen)
    part_out = torch.full((2, 4, 3, 64), float("nan"))
    part_lse = torch.full((2, 4, 3), float("nan"))
    args = (pool.req_to_token, pool.req_pool_indices, torch.tensor([12, 3]), 0.125)
    o = decode_attention(q, pool.k_buf, pool.v_buf, torch.empty_like(q), *args, num_kv_splits=3,
                         part_out=part_out, part_lse=part_lse)
    assert not part_lse.isnan().any()  # every split, empty or not, was written
    assert rel_err(o, decode_attention_reference(q, pool.k_buf, pool.v_buf, *args)) <= 1e-3


def _valid_args(gen):
    k_buf = torch.randn(8, 1, 16, generator=gen)
    return dict(q=torch.randn(2, 2, 16, generator=gen), k_buf=k_buf, v_buf=k_buf.clone(), o=torch.empty(2, 2, 16),
                req_to_token=torch.arange(8, dtype=torch.int32).view(2, 4), req_pool_indices=torch.tensor([0, 1]),
                seq_lens=torch.tensor([4, 2]), sm_scale=0.25, num_kv_splits=2)


@pytest.mark.parametrize("overrides,match", [
    ({"num_kv_splits": 0}, "num_kv_splits"),
    ({"seq_lens": torch.tensor([4])}, "seq_lens: expected shape"),
    ({"o": torch.empty(2, 2, 16, dtype=torch.float16)}, "o: dtype"),
    ({"req_to_token": torch.arange(8, dtype=torch.int32)}, "req_to_token: expected 2 dims"),
    ({"part_out": torch.empty(2, 2, 3, 16)}, "part_out: expected shape"),
    ({"part_lse": torch.empty(2, 2, 2, dtype=torch.float16)}, "part_lse: dtype"),
    ({"k_buf": torch.randn(8, 3, 16), "v_buf": torch.randn(8, 3, 16)}, "num_kv_heads"),
])
def test_rejects_bad_input(gen, overrides, match):
    args = {**_valid_args(gen), **overrides}
    with pytest.raises(ValueError, match=match):
        decode_attention(**args)


def test_valid_args_are_accepted(gen):
    """Guards test_rejects_bad_input: the unmodified arguments run and give the reference."""
    args = _valid_args(gen)
    out = decode_attention(**args)
    ref_args = {k: v for k, v in args.items() if k not in ("o", "num_kv_splits")}
    torch.testing.assert_close(out, decode_attention_reference(**ref_args))
