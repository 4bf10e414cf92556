"""The compiled int8 weight-only GEMV (engine/kernels/cpu/int8_gemv.py) against its torch reference, on its AVX2 and
portable paths, irregular shapes and poisoned outputs; and its place in QuantizedLinear."""
import os
import shutil

import pytest
import torch

from engine.kernels.cpu.int8_gemv import GEMV_MAX_ROWS, CpuInt8Gemv, int8_gemv_reference

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.fixture(scope="module", params=["native", "x86-64"])
def kernel(request, tmp_path_factory):
    """'native': the AVX2 path where the host has it; 'x86-64': the portable loop (no AVX2 compiled in)."""
    k = CpuInt8Gemv(tmp_path_factory.mktemp("kernels"), march=request.param)
    assert k.vectorised == (request.param == "native" and AVX2)
    return k


def _inputs(gen, m, n, k):
    x = torch.randn(m, k, generator=gen)
    w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, generator=gen) * 0.01 + 1e-4
    return x, w, scale


# N not a multiple of the 4-row block (1, 3, 21, 37); K not a multiple of 8 (13, 75); blocks enough to prefetch
@pytest.mark.parametrize("n,k", [(1, 8), (3, 13), (21, 75), (37, 64), (64, 200), (130, 96)])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 16, 65])
def test_matches_reference_and_fills_every_output(kernel, gen, m, n, k):
    x, w, scale = _inputs(gen, m, n, k)
    out = torch.full((m, n), float("nan"))  # poisoned: every element must be written
    got = kernel(x, w, scale, out=out)
    assert got.data_ptr() == out.data_ptr()
    want = int8_gemv_reference(x, w, scale)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_rows_do_not_leak_into_each_other(kernel, gen):
    x, w, scale = _inputs(gen, 5, 40, 24)
    whole = kernel(x, w, scale)
    poisoned = torch.cat([x[:2], torch.full((3, 24), float("inf"))])
    assert torch.equal(kernel(poisoned, w, scale)[:2], whole[:2])
    for i in range(5):  # one row alone takes the single-row loop; results equal the paired loop's
        assert torch.equal(kernel(x[i:i + 1].contiguous(), w, scale)[0], whole[i])


def test_empty_batch(kernel):
    assert kernel(torch.empty(0, 16), torch.zeros(4, 16, dtype=torch.int8), torch.ones(4)).shape == (0, 4)


@pytest.mark.parametrize("args,match", [
    (dict(x=torch.randn(2, 16).bfloat16()), "x: dtype"),
    (dict(x=torch.randn(16, 2).t()), "x: must be contiguous"),
    (dict(x=torch.randn(2, 15)), "x: expected shape"),
    (dict(w=torch.zeros(4, 16, dtype=torch.int32)), "w: dtype"),
    (dict(scale=torch.ones(5)), "scale: expected shape"),
    (dict(scale=torch.ones(4).bfloat16()), "scale: dtype"),
    (dict(out=torch.empty(2, 5)), "out: expected shape"),
])
def test_bad_input_names_the_argument(kernel, args, match):
    call = dict(x=torch.randn(2, 16), w=torch.zeros(4, 16, dtype=torch.int8), scale=torch.ones(4), out=None)
    call.update(args)
    with pytest.raises(ValueError, match=match):
        kernel(**call)


@pytest.mark.parametrize("n,k", [(3, 13), (37, 64), (130, 96)])
def test_dequantize_equals_torch_and_reuses_its_scratch(kernel, gen, n, k):
    big_w, big_s = _inputs(gen, 1, 2 * n, k)[1:]
    kernel.dequantize(big_w, big_s)
    kernel._scratch.fill_(float("nan"))  # poisoned: the smaller weight must overwrite what it returns
    x, w, scale = _inputs(gen, 1, n, k)
    got = kernel.dequantize(w, scale)
    assert got.shape == (n, k) and got.dtype == torch.float32
    assert torch.equal(got, w.float() * scale[:, None])  # one rounding, the same as torch's


@pytest.mark.parametrize("rows", [1, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1, 130])
def test_quantized_linear_takes_the_compiled_kernels_for_fp32(rows, gen):
    """fp32 rows take the compiled GEMV (up to GEMV_MAX_ROWS) or the dequantized weight's dense matmul: fp32
    activations, so both sit on the dequantized reference to fp32 rounding, closer than torch's bf16 kernel; bf16
    rows always take torch's kernel."""
    from engine.models.quant import QuantizedLinear, dequantize_int8, quantize_int8, use_quant_kernel

    w = torch.randn(48, 64, generator=gen) * 0.05
    bias = torch.randn(48, generator=gen)
    layer = QuantizedLinear.from_dense(w, bias, "int8", 128)
    x = torch.randn(rows, 64, generator=gen)
    ref = x @ dequantize_int8(*quantize_int8(w)).t() + bias
    torch_path, bf16_path = layer(x), layer(x.bfloat16())
    assert use_quant_kernel(layer, "int8", CpuInt8Gemv()) == 1
    ours = layer(x)
    scale = ref.abs().max().item()
    assert (torch_path - ref).abs().max().item() <= 2 ** -7 * scale
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * scale)
    assert (ours - ref).abs().max() < (torch_path - ref).abs().max()
    assert torch.equal(layer(x.bfloat16()), bf16_path)  # bf16 models keep torch's kernel
