"""The compiled CPU RMSNorm (engine/kernels/cpu/rmsnorm.py) vs the torch reference of the same contract, and its
wiring: models served on the `cpu` attention backend use it, the `torch` backend keeps torch ops."""
import os
import shutil

import pytest
import torch

from engine.kernels.gpu.rmsnorm import rmsnorm_reference
from engine.kernels.cpu.rmsnorm import CpuRMSNorm

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    return CpuRMSNorm(tmp_path_factory.mktemp("kernels"))


# rows x hidden: 340 x 512 is past the size where rows split over threads; 100 and 76 are not multiples of 16.
@pytest.mark.parametrize("rows,hidden", [(1, 512), (37, 100), (340, 512), (3, 76)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("with_residual", [False, True])
def test_matches_reference(kernel, gen, rows, hidden, dtype, with_residual):
    x = (3 * torch.randn(rows, hidden, generator=gen)).to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)
    residual = torch.randn(rows, hidden, generator=gen).to(dtype) if with_residual else None
    got, want = kernel(x, weight, 1e-6, residual), rmsnorm_reference(x, weight, 1e-6, residual)
    if with_residual:
        assert torch.equal(got[1], want[1])  # the residual sum, rounded to x's dtype like HF's add
        got, want = got[0], want[0]
    assert got.dtype == dtype and got.shape == x.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:  # the mean sums in another order: at most one bf16 ulp apart, and almost always equal
        assert ((got.float() - want.float()).abs() <= want.float().abs() * 2 ** -7).all()
        assert (got != want).float().mean() < 1e-3


def test_three_dims_and_empty(kernel, gen):
    x = torch.randn(2, 3, 64, generator=gen)
    w = torch.rand(64, generator=gen)
    torch.testing.assert_close(kernel(x, w, 1e-5), rmsnorm_reference(x, w, 1e-5), rtol=1e-5, atol=1e-6)
    assert kernel(torch.empty(0, 64), w, 1e-5).shape == (0, 64)


@pytest.mark.parametrize("args,match", [
    (dict(x=torch.randn(4, 8).half()), "x: dtype"),
    (dict(x=torch.randn(8, 4).t()), "x: must be contiguous"),
    (dict(weight=torch.ones(8).bfloat16()), "weight: dtype"),
    (dict(weight=torch.ones(9)), "weight: expected shape"),
    (dict(residual=torch.randn(3, 8)), "residual: expected shape"),
])
def test_rejects_bad_input(kernel, args, match):
    call = {"x": torch.randn(4, 8), "weight": torch.ones(8), "eps": 1e-6, "residual": None, **args}
    with pytest.raises(ValueError, match=match):
        kernel(**call)


@pytest.mark.parametrize("backend,dtype,uses_kernel", [("cpu", "float32", True), ("torch", "float32", False),
                                                      ("cpu", "float16", False)])
def test_cpu_backend_models_use_it(tiny_model_dir, make_engine, backend, dtype, uses_kernel):
    """On the cpu backend every RMSNorm runs the kernel, except in dtypes it does not take (fp16 keeps torch)."""
    from engine.models.layers import RMSNorm

    eng = make_engine(tiny_model_dir, attention_backend=backend, dtype=dtype)
    norms = [m for m in eng.loop.runner.model.modules() if isinstance(m, RMSNorm)]
    assert norms and all(isinstance(m.kernel, CpuRMSNorm) == uses_kernel for m in norms)
    out = eng.generate(input_ids=[5, 6, 7, 8], sampling_params={"max_new_tokens": 3, "temperature": 0})
    assert len(out["output_ids"]) == 3
