"""rmsnorm vs its torch reference and HF's LlamaRMSNorm (interpreter, see conftest.py)."""
import pytest
import torch

from engine.kernels.gpu.rmsnorm import rmsnorm, rmsnorm_reference

# Kernel and reference differ only in the summation order of the mean: at most one ulp of the output dtype.
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=1e-3, atol=1e-5),
             torch.bfloat16: dict(rtol=8e-3, atol=1e-5)}


@pytest.mark.parametrize("shape,dtype,with_residual", [
    ((5, 96), torch.float32, False),  # hidden not a power of two
    ((3, 4, 64), torch.float16, True),
    ((7, 576), torch.bfloat16, True),
    ((1, 128), torch.bfloat16, False),
    ((6, 33), torch.float32, True),
])
def test_matches_reference(gen, shape, dtype, with_residual):
    x = (torch.randn(*shape, generator=gen) * 3).to(dtype)
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(dtype)
    residual = torch.randn(*shape, generator=gen).to(dtype) if with_residual else None
    x_before = x.clone()
    out = rmsnorm(x, weight, 1e-6, residual)
    ref = rmsnorm_reference(x, weight, 1e-6, residual)
    if with_residual:
        (out, h), (ref, ref_h) = out, ref
        assert torch.equal(h, ref_h)  # the add is exact in the model dtype
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out, ref, **TOLERANCE[dtype])
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_hf_llama_rmsnorm(gen, dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    hidden = 64
    hf = LlamaRMSNorm(hidden, eps=1e-5).to(dtype)
    with torch.no_grad():
        hf.weight.copy_(1 + 0.1 * torch.randn(hidden, generator=gen))
    x = torch.randn(9, hidden, generator=gen).to(dtype)
    residual = torch.randn(9, hidden, generator=gen).to(dtype)
    with torch.no_grad():
        expected_h = residual + x
        expected = hf(expected_h)
    out, h = rmsnorm(x, hf.weight.detach(), 1e-5, residual)
    assert torch.equal(h, expected_h)
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=torch.randn(2, 8).to(torch.int32), weight=torch.ones(8)), "x: dtype"),
    (dict(x=torch.randn(2, 8), weight=torch.ones(4)), "weight: expected shape"),
    (dict(x=torch.randn(8, 2).t(), weight=torch.ones(8)), "x: must be contiguous"),
    (dict(x=torch.randn(2, 8), weight=torch.ones(8), residual=torch.randn(2, 8).half()), "residual: dtype"),
    (dict(x=torch.randn(2, 8), weight=torch.ones(8), eps=0.0), "eps"),
    (dict(x=torch.tensor(1.0), weight=torch.ones(1)), "x: expected a tensor"),
])
def test_rejects_bad_input(kwargs, match):
    kwargs.setdefault("eps", 1e-6)
    with pytest.raises(ValueError, match=match):
        rmsnorm(**kwargs)


def test_cpu_launch_without_interpreter_is_a_clear_error():
    from engine.kernels.gpu import check_launchable
    from engine.kernels.gpu.rmsnorm import _rmsnorm_kernel

    check_launchable(_rmsnorm_kernel, torch.device("cpu"))  # interpreted here (conftest.py)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        check_launchable(object(), torch.device("cpu"))  # stands in for a compiled-mode kernel
