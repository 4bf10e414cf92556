"""The compiled CPU decode kernel (engine/kernels/cpu/decode_attention.py) vs the torch reference on scattered, poisoned
paged pools, in both of its builds: the vectorised one this machine compiles and the portable loop."""
import os
import shutil

import pytest
import torch

from engine.kernels.cpu.decode_attention import AVX2_MARCH, CpuDecodeKernel
from engine.kernels.gpu.decode_attention import decode_attention_reference

# Users without a C compiler get the torch backend (tests/test_attention_backends.py checks that fallback).
pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # bf16: the rounding of the output itself

# (seq_lens, num_heads, num_kv_heads, head_dim, page_size, dtype). Lengths cross the 16-key blocks (1, 15, 16,
# 17, 33, 300). The vectorised build takes bf16 with head_dim 64/128 and <= 8 heads per kv head through its
# specialised copies (bf16 dot products where the CPU has them: head_dim % 32 == 0), other multiples of 16 through
# the general one (80: fp32 products; 96 with 12 heads per kv head: bf16 dots), and 24 or 8 through the portable loop.
CASES = [
    ([1, 17, 300], 8, 2, 64, 1, torch.bfloat16),
    ([16, 15, 33], 8, 2, 64, 16, torch.float32),
    ([5, 130], 12, 2, 128, 1, torch.bfloat16),
    ([40, 1, 7], 4, 4, 80, 1, torch.float32),
    ([40, 1, 7], 3, 1, 80, 1, torch.bfloat16),
    ([23, 70], 12, 1, 96, 16, torch.bfloat16),
    ([64, 2], 6, 3, 24, 16, torch.bfloat16),
    ([9], 16, 1, 8, 1, torch.float32),
]


def _cpu_flags() -> str:
    with open("/proc/cpuinfo") as f:
        return f.read()


HAS_AVX2 = " avx2" in _cpu_flags() and " fma" in _cpu_flags()


# "avx2": decode_attention_avx2.h, which -march=native never picks on an AVX-512 CPU, built for AVX2 + FMA alone
# so that it runs here on the same cases as the native build.
@pytest.fixture(scope="module", params=["vectorised", "generic", "avx2"])
def kernel(request, tmp_path_factory):
    if request.param == "avx2" and not HAS_AVX2:
        pytest.skip("the CPU lacks AVX2 + FMA")
    return CpuDecodeKernel(tmp_path_factory.mktemp("kernels"), generic=request.param == "generic",
                           march=AVX2_MARCH if request.param == "avx2" else "native")


def test_build_picks_its_path(kernel, request):
    flags = _cpu_flags()
    avx512 = " avx512f" in flags
    param = request.node.callspec.params["kernel"]
    assert kernel.vectorised == (param == "avx2" or (param == "vectorised" and (avx512 or HAS_AVX2)))
    if param == "avx2":
        assert not kernel.cascade  # nothing of the AVX-512 build leaked in


@pytest.mark.parametrize("seq_lens,num_heads,num_kv_heads,head_dim,page_size,dtype", CASES)
def test_matches_reference(kernel, make_pool, gen, rel_err, seq_lens, num_heads, num_kv_heads, head_dim, page_size,
                           dtype):
    pool = make_pool(seq_lens, page_size, num_kv_heads, head_dim, dtype)
    q = torch.randn(len(seq_lens), num_heads, head_dim, generator=gen).to(dtype)
    out = torch.full_like(q, float("nan"))  # poisoned: every row must be written
    args = (pool.req_to_token, pool.req_pool_indices, torch.tensor(seq_lens), head_dim ** -0.5)
    o = kernel(q, pool.k_buf, pool.v_buf, *args, out=out)
    assert o is out and not o.isnan().any()  # NaN also flags a read of a slot or position outside the request
    assert rel_err(o, decode_attention_reference(q, pool.k_buf, pool.v_buf, *args)) <= TOLERANCE[dtype]


def test_large_scores_do_not_overflow(kernel, make_pool, gen, rel_err):
    """Scores of ~±500 (softmax concentrated on a few keys): the running max keeps every exp in range."""
    pool = make_pool([50, 3], 1, 2, 64, torch.float32)
    q = torch.randn(2, 4, 64, generator=gen) * 60
    args = (pool.req_to_token, pool.req_pool_indices, torch.tensor([50, 3]), 0.125)
    o = kernel(q, pool.k_buf, pool.v_buf, *args)
    # An overflow gives inf/NaN or O(1) errors; fp32 scores of this size differ by summation order alone by
    # ~1e-5 relative once exponentiated (seen: 1.6e-5 on some seeds), so the bound sits above that.
    assert rel_err(o, decode_attention_reference(q, pool.k_buf, pool.v_buf, *args)) <= 1e-4


def _valid_args(gen):
    k_buf = torch.randn(8, 1, 16, generator=gen)
    return dict(q=torch.randn(2, 2, 16, generator=gen), k_buf=k_buf, v_buf=k_buf.clone(),
                req_to_token=torch.arange(8, dtype=torch.int32).view(2, 4), req_pool_indices=torch.tensor([0, 1]),
                seq_lens=torch.tensor([4, 2]), sm_scale=0.25)


@pytest.mark.parametrize("overrides,match", [
    ({"q": torch.randn(2, 2, 16).half()}, "q: dtype"),
    ({"q": torch.randn(2, 16, 2).transpose(1, 2)}, "q: must be contiguous"),
    ({"v_buf": torch.randn(8, 1, 16).bfloat16()}, "v_buf: dtype"),
    ({"q": torch.randn(2, 3, 16)}, "q: 3 heads over 2 kv heads"),
    ({"req_to_token": torch.arange(8).view(2, 4)}, "req_to_token: dtype"),
    ({"seq_lens": torch.tensor([4])}, "seq_lens: expected shape"),
    ({"seq_lens": torch.tensor([5, 2])}, r"seq_lens: each must be in \[1, 4\]"),
    ({"seq_lens": torch.tensor([0, 2])}, "seq_lens: each must be in"),
    ({"req_pool_indices": torch.tensor([0, 2])}, r"req_pool_indices: each must be in \[0, 2\)"),
])
def test_rejects_bad_input(kernel, gen, overrides, match):
    args = {**_valid_args(gen), **overrides}
    if "k_buf" not in overrides and args["q"].shape[1] == 3:
        args["k_buf"] = args["v_buf"] = torch.randn(8, 2, 16)
    with pytest.raises(ValueError, match=match):
        kernel(**args)
