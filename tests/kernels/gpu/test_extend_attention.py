"""extend_attention vs its torch reference on scattered paged pools (interpreter, see conftest.py)."""
import pytest
import torch

from engine.kernels.gpu.extend_attention import extend_attention, extend_attention_reference

# Tolerance on max|out - ref| / max|ref|; fp16/bf16 are bounded by the rounding of the output itself.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}

# (prefix_lens, extend_lens, num_heads, num_kv_heads, head_dim, page_size, dtype): a covering subset,
# not the cross product. 70 new tokens span two query blocks; prefixes of 40/65 span key blocks.
CASES = [
    ([0], [1], 1, 1, 64, 1, torch.float32),
    ([0, 5, 40], [7, 1, 33], 4, 1, 64, 16, torch.float32),
    ([17, 0], [70, 7], 7, 1, 64, 1, torch.float32),
    ([3, 0], [33, 1], 2, 2, 128, 16, torch.float32),
    ([20, 0], [33, 7], 8, 2, 128, 16, torch.float16),
    ([9, 65], [7, 1], 4, 1, 64, 1, torch.bfloat16),
]


def _run(make_pool, gen, prefix_lens, extend_lens, num_heads, num_kv_heads, head_dim, page_size, dtype):
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    pool = make_pool(seq_lens, page_size, num_kv_heads, head_dim, dtype)
    extend_lens_t = torch.tensor(extend_lens)
    args = dict(
        req_to_token=pool.req_to_token, req_pool_indices=pool.req_pool_indices,
        prefix_lens=torch.tensor(prefix_lens), extend_lens=extend_lens_t,
        extend_start_loc=torch.cumsum(extend_lens_t, 0) - extend_lens_t, sm_scale=head_dim ** -0.5,
    )
    q = torch.randn(sum(extend_lens), num_heads, head_dim, generator=gen).to(dtype)
    o = torch.full_like(q, float("nan"))  # poisoned: every row must be written
    extend_attention(q, pool.k_buf, pool.v_buf, o, **args)
    ref = extend_attention_reference(q, pool.k_buf, pool.v_buf, **args)
    return o, ref


@pytest.mark.parametrize("prefix_lens,extend_lens,num_heads,num_kv_heads,head_dim,page_size,dtype", CASES)
def test_matches_reference(make_pool, gen, rel_err, prefix_lens, extend_lens, num_heads, num_kv_heads,
                           head_dim, page_size, dtype):
    o, ref = _run(make_pool, gen, prefix_lens, extend_lens, num_heads, num_kv_heads, head_dim, page_size, dtype)
    assert not o.isnan().any()
    assert o.dtype == dtype
    assert rel_err(o, ref) <= TOLERANCE[dtype]


def test_reference_is_causal_softmax_of_one_request(gen):
    """Pins the reference itself: a hand-written causal softmax for one request with identity slots."""
    prefix_len, extend_len, head_dim = 3, 4, 8
    seq_len = prefix_len + extend_len
    k_buf = torch.randn(seq_len, 1, head_dim, generator=gen)
    v_buf = torch.randn(seq_len, 1, head_dim, generator=gen)
    q = torch.randn(extend_len, 1, head_dim, generator=gen)
    req_to_token = torch.arange(seq_len, dtype=torch.int32)[None, :]
    ref = extend_attention_reference(q, k_buf, v_buf, req_to_token, torch.tensor([0]), torch.tensor([prefix_len]),
                                     torch.tensor([extend_len]), torch.tensor([0]), 0.5)
    for i in range(extend_len):
        visible = prefix_len + i + 1
        weights = torch.softmax(k_buf[:visible, 0] @ q[i, 0] * 0.5, dim=0)
        torch.testing.assert_close(ref[i, 0], weights @ v_buf[:visible, 0])


def _valid_args(gen):
    k_buf = torch.randn(8, 1, 16, generator=gen)
    return dict(q=torch.randn(2, 2, 16, generator=gen), k_buf=k_buf, v_buf=k_buf.clone(),
                o=torch.empty(2, 2, 16), req_to_token=torch.arange(8, dtype=torch.int32)[None, :],
                req_pool_indices=torch.tensor([0]), prefix_lens=torch.tensor([0]), extend_lens=torch.tensor([2]),
                extend_start_loc=torch.tensor([0]), sm_scale=0.25)


@pytest.mark.parametrize("overrides,match", [
    ({"req_to_token": torch.zeros(1, 8, dtype=torch.int64)}, "req_to_token: dtype"),
    ({"o": torch.empty(3, 2, 16)}, "o: expected shape"),
    ({"k_buf": torch.randn(8, 1, 16).half()}, "k_buf: dtype"),
    ({"v_buf": torch.randn(8, 1, 8)}, "v_buf: expected shape"),
    ({"q": torch.randn(2, 16, 2).transpose(1, 2)}, "q: last dim must have stride 1"),
    ({"k_buf": torch.randn(8, 3, 16), "v_buf": torch.randn(8, 3, 16)}, "num_kv_heads"),
    ({"extend_lens": torch.tensor([2, 2])}, "extend_lens: expected shape"),
    ({"prefix_lens": torch.tensor([0.0])}, "prefix_lens: dtype"),
])
def test_rejects_bad_input(gen, overrides, match):
    args = {**_valid_args(gen), **overrides}
    with pytest.raises(ValueError, match=match):
        extend_attention(**args)


def test_valid_args_are_accepted(gen):
    """Guards test_rejects_bad_input: the unmodified arguments run and give the reference."""
    args = _valid_args(gen)
    out = extend_attention(**args)
    ref_args = {k: v for k, v in args.items() if k != "o"}
    torch.testing.assert_close(out, extend_attention_reference(**ref_args))
