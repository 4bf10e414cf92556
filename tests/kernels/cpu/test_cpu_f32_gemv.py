"""The compiled fp32 GEMV (engine/kernels/cpu/f32_gemv.py) against its fp64 reference, on its AVX2 and portable
paths: irregular shapes, poisoned outputs, rows that must not leak into each other, and named input errors."""
import os
import shutil

import pytest
import torch

from engine.kernels.cpu.f32_gemv import GEMV_MAX_ROWS, CpuF32Gemv, f32_gemv_reference

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.fixture(scope="module", params=["native", "x86-64"])
def kernel(request, tmp_path_factory):
    """'native': the AVX2 path where the host has it; 'x86-64': the portable loop (no AVX2 compiled in)."""
    k = CpuF32Gemv(tmp_path_factory.mktemp("kernels"), march=request.param)
    assert k.vectorised == (request.param == "native" and AVX2)
    return k


def assert_fp32_close(got, x, w):
    """Every element within the worst-case bound of an fp32 sum of K products in any order, K u sum |x w|
    (u = 2^-24): tight enough that one dropped or doubled product shows."""
    want = f32_gemv_reference(x, w)
    bound = x.shape[1] * 2.0 ** -24 * (x.double().abs() @ w.double().abs().t()) + 1e-30
    assert torch.isfinite(got).all()
    assert ((got.double() - want.double()).abs() <= bound).all(), (got - want).abs().max()


# N around the 6-row block (1, 5, 7, 13, 50: tail rows; 96: none); K: 1, under 8 (7), not a multiple of 8 (13, 75,
# 300 and 520 also cross the 256-wide k chunks), and the 0.5B width 896
@pytest.mark.parametrize("n,k", [(1, 8), (5, 1), (7, 7), (13, 13), (50, 75), (96, 300), (37, 520), (20, 896)])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1, 40])
def test_matches_reference_and_fills_every_output(kernel, gen, m, n, k):
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    out = torch.full((m, n), float("nan"))  # poisoned: every element must be written
    got = kernel(x, w, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert_fp32_close(got, x, w)


def test_allocates_its_output(kernel, gen):
    x, w = torch.randn(3, 40, generator=gen), torch.randn(11, 40, generator=gen)
    got = kernel(x, w)
    assert got.shape == (3, 11) and got.dtype == torch.float32 and got.is_contiguous()
    assert_fp32_close(got, x, w)


def test_rows_do_not_leak_into_each_other(kernel, gen):
    """Each output row depends on its activation row only, and sums in the same order whatever the batch (pairs,
    a lone row, a second pass past 16 rows): equal bitwise."""
    x, w = torch.randn(19, 300, generator=gen), torch.randn(40, 300, generator=gen)
    whole = kernel(x, w)
    poisoned = torch.cat([x[:2], torch.full((3, 300), float("inf"))])
    assert torch.equal(kernel(poisoned, w)[:2], whole[:2])
    for i in (0, 1, 4, 16, 18):
        assert torch.equal(kernel(x[i:i + 1].contiguous(), w)[0], whole[i])


@pytest.mark.parametrize("m,n", [(0, 4), (3, 0), (0, 0)])
def test_empty_sizes(kernel, m, n):
    x, w = torch.randn(m, 16), torch.randn(n, 16)
    assert kernel(x, w).shape == (m, n)
    out = torch.empty(m, n)
    assert kernel(x, w, out=out) is out


@pytest.mark.parametrize("args,match", [
    (dict(x=torch.randn(2, 16).bfloat16()), "x: dtype"),
    (dict(x=torch.randn(2, 16).double()), "x: dtype"),
    (dict(x=torch.randn(16, 2).t()), "x: must be contiguous"),
    (dict(x=torch.randn(2, 15)), "x: expected shape"),
    (dict(x=torch.randn(16)), "x: expected 2 dims"),
    (dict(w=torch.randn(4, 16).bfloat16()), "w: dtype"),
    (dict(w=torch.randn(16, 4).t()), "w: must be contiguous"),
    (dict(w=torch.randn(4, 0), x=torch.randn(2, 0)), "w: the input width K"),
    (dict(out=torch.empty(2, 5)), "out: expected shape"),
    (dict(out=torch.empty(2, 4).double()), "out: dtype"),
    (dict(out=torch.empty(4, 2).t()), "out: must be contiguous"),
])
def test_bad_input_names_the_argument(kernel, args, match):
    call = dict(x=torch.randn(2, 16), w=torch.randn(4, 16), out=None)
    call.update(args)
    with pytest.raises(ValueError, match=match):
        kernel(**call)


# ---- its place in the model: the tied fp32 LM head of the `cpu` backend

@pytest.mark.parametrize("model,backend,dtype,uses", [
    ("tiny_model_dir", "cpu", "float32", True),  # tied: the embedding table is the plain weight it reads
    ("tiny_llama_dir", "cpu", "float32", False),  # untied: only a packed copy is resident
    ("tiny_model_dir", "torch", "float32", False),  # the torch backend keeps torch ops
    ("tiny_model_dir", "cpu", "bfloat16", False),
])
def test_lm_head_takes_it_where_tied_fp32_on_the_cpu_backend(request, make_engine, model, backend, dtype, uses):
    eng = make_engine(request.getfixturevalue(model), attention_backend=backend, dtype=dtype)
    assert isinstance(eng.loop.runner.model.lm_head.gemv, CpuF32Gemv) == uses
    out = eng.generate(input_ids=[5, 6, 7, 8], sampling_params={"max_new_tokens": 3, "temperature": 0})
    assert len(out["output_ids"]) == 3


def test_lm_head_gemv_serves_decode_sized_calls_and_matches_the_packed_path(tiny_model_dir, make_engine, gen):
    eng = make_engine(tiny_model_dir, attention_backend="cpu", dtype="float32")
    model = eng.loop.runner.model
    head, kernel = model.lm_head, model.lm_head.gemv
    calls = []

    class Spy:
        max_rows = kernel.max_rows

        def __call__(self, x, w):
            calls.append(x.shape[0])
            assert w.data_ptr() == model.embed_tokens.weight.data_ptr()  # the table itself, no copy
            return kernel(x, w)

    x = torch.randn(kernel.max_rows + 1, head.in_features, generator=gen)
    head.use_gemv(Spy(), model.embed_tokens.weight)
    got = [head(x[:m]) for m in (1, 5, kernel.max_rows, kernel.max_rows + 1)]
    assert calls == [1, 5, kernel.max_rows]  # more rows than max_rows go the packed way
    head.use_gemv(None)
    for g in got:
        torch.testing.assert_close(g, head(x[:g.shape[0]]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="weight: expected shape"):
        head.use_gemv(kernel, model.embed_tokens.weight[:-1])


def test_greedy_tokens_equal_with_and_without_the_lm_head_gemv(tiny_model_dir, make_engine):
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23, 24, 25, 26]]
    params = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
    eng = make_engine(tiny_model_dir, attention_backend="cpu", dtype="float32", disable_radix_cache=True)
    with_gemv = [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=params)]
    eng.loop.runner.model.use_lm_head_gemv(None)
    assert eng.loop.runner.model.lm_head.gemv is None
    without = [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=params)]
    assert with_gemv == without
