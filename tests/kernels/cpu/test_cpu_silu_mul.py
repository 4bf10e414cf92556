"""The compiled SwiGLU activation (engine/kernels/cpu/silu_mul.py) against torch's silu(gate) * up, on its
vectorised and portable builds, irregular shapes and poisoned outputs; and its place in the `cpu` backend's models."""
import os
import shutil

import pytest
import torch

from engine.kernels.cpu.silu_mul import CpuSiluMul, silu_mul_reference

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


@pytest.fixture(scope="module", params=["native", "x86-64"])
def kernel(request, tmp_path_factory):
    return CpuSiluMul(tmp_path_factory.mktemp("kernels"), march=request.param)


# widths not a multiple of the vector width (7, 75) or of the 2,048-column task (2,051); 1 row of a wide MLP splits
# over the threads, 40 x 900 is past the size where rows do
@pytest.mark.parametrize("rows,inter", [(1, 1), (3, 7), (1, 4864), (5, 75), (40, 900), (2, 2051)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_torch_and_fills_every_output(kernel, gen, rows, inter, dtype):
    gate_up = (4 * torch.randn(rows, 2 * inter, generator=gen)).to(dtype)
    out = torch.full((rows, inter), float("nan"), dtype=dtype)  # poisoned: every element must be written
    got = kernel(gate_up, out=out)
    assert got.data_ptr() == out.data_ptr() and got.shape == (rows, inter) and got.dtype == dtype
    want = silu_mul_reference(gate_up)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-7)
    else:  # exp's last bit can tip a bf16 rounding: then one ulp of silu, carried through the product
        torch.testing.assert_close(got, want, rtol=2 ** -7, atol=1e-6)
        assert (got != want).float().mean() < 0.02


def test_extremes(kernel):
    """Large |gate| saturates as torch does (silu(g) -> g and -> -0), without overflow or NaN; NaN propagates."""
    g = torch.tensor([-1e4, -100.0, -88.5, -20.0, 0.0, 20.0, 88.5, 100.0, 1e4, float("nan")])
    gate_up = torch.cat([g, torch.full_like(g, 3.0)])[None]
    got, want = kernel(gate_up), silu_mul_reference(gate_up)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-30, equal_nan=True)


def test_fresh_output_and_empty(kernel, gen):
    gate_up = torch.randn(4, 12, generator=gen)
    torch.testing.assert_close(kernel(gate_up), silu_mul_reference(gate_up), rtol=2e-6, atol=1e-7)
    assert kernel(torch.empty(0, 12)).shape == (0, 6)
    assert kernel(torch.empty(3, 0)).shape == (3, 0)


@pytest.mark.parametrize("args,match", [
    (dict(gate_up=torch.randn(4, 8).half()), "gate_up: dtype"),
    (dict(gate_up=torch.randn(8, 4).t()), "gate_up: must be contiguous"),
    (dict(gate_up=torch.randn(4, 8, 2)), "gate_up: expected 2 dims"),
    (dict(gate_up=torch.randn(4, 7)), "gate_up: the width must be even"),
    (dict(out=torch.empty(4, 5)), "out: expected shape"),
    (dict(out=torch.empty(4, 4).bfloat16()), "out: dtype"),
])
def test_rejects_bad_input(kernel, args, match):
    call = {"gate_up": torch.randn(4, 8), "out": None, **args}
    with pytest.raises(ValueError, match=match):
        kernel(**call)


@pytest.mark.parametrize("backend,uses_kernel", [("cpu", True), ("torch", False)])
def test_cpu_backend_models_use_it(tiny_model_dir, make_engine, backend, uses_kernel):
    """On the cpu backend every GatedMLP runs the kernel (the torch backend keeps torch ops); the model generates."""
    from engine.models.layers import GatedMLP

    eng = make_engine(tiny_model_dir, attention_backend=backend, dtype="float32")
    mlps = [m for m in eng.loop.runner.model.modules() if isinstance(m, GatedMLP)]
    assert mlps and all(isinstance(m.kernel, CpuSiluMul) == uses_kernel for m in mlps)
    out = eng.generate(input_ids=[5, 6, 7, 8], sampling_params={"max_new_tokens": 3, "temperature": 0})
    assert len(out["output_ids"]) == 3
