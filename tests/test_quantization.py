"""Weight-only int8 / int4 linears (engine/models/quant.py) against a dequantized torch reference, and the
flags' bad-input errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from engine.config import ServerArgs
from engine.models.quant import (QuantizedLinear, check_quantizable, dequantize_int4, dequantize_int8,
                                 quantize_int4, quantize_int8)


def _weight(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[0] = 0.0  # an all-zero output channel (int8) / constant groups (int4) must not divide by zero
    w[1, :k // 2] = 0.3  # a constant group next to a varied one
    return w


def _reference(layer: QuantizedLinear, w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None):
    """fp32 matmul of the bf16-rounded input by the dequantized weight (what the kernels compute)."""
    if layer.method == "int8":
        deq = dequantize_int8(*quantize_int8(w))
    else:
        deq = dequantize_int4(*quantize_int4(w, layer.group_size))
    return F.linear(x.to(torch.bfloat16).float(), deq, None if bias is None else bias.float())


@pytest.mark.parametrize("method,n,k,group", [
    ("int8", 24, 40, 128), ("int8", 257, 96, 128), ("int8", 2, 8, 128),
    ("int4", 48, 96, 32), ("int4", 80, 256, 64), ("int4", 16, 256, 256), ("int4", 272, 384, 128),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_dequantized_reference(method, n, k, group, dtype):
    w = _weight(n, k, seed=n + k)
    bias = torch.randn(n) * 0.1
    layer = QuantizedLinear.from_dense(w.to(dtype), bias.to(dtype), method, group)
    g = torch.Generator().manual_seed(7)
    for rows in (1, 3, 17, 130):
        x = torch.randn(rows, k, generator=g).to(dtype)
        out = layer(x)
        assert out.shape == (rows, n) and out.dtype == dtype
        assert torch.isfinite(out).all()
        ref = _reference(layer, w.to(dtype).float(), x, bias.to(dtype))
        # the kernels round their output to bf16: 2^-8 relative, plus the bias added after in `dtype`
        tol = 2 ** -7 * ref.abs().amax().item() + 1e-3
        assert (out.float() - ref).abs().max().item() <= tol


@pytest.mark.parametrize("method,group", [("int8", 128), ("int4", 32)])
def test_rows_are_independent(method, group):
    """A row's result does not depend on the rows beside it (callers pad row counts and slice)."""
    layer = QuantizedLinear.from_dense(_weight(64, 96, 1), None, method, group)
    x = torch.randn(9, 96)
    whole = layer(x)
    poisoned = torch.cat([x[:4], torch.full((5, 96), 1e30)])  # huge neighbours must not leak into rows 0..3
    assert torch.equal(layer(poisoned)[:4], whole[:4])
    for i in range(9):
        assert torch.equal(layer(x[i:i + 1])[0], whole[i])


def test_quantization_error_is_bounded():
    w = _weight(64, 256, 3)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    assert ((dequantize_int8(q, scale) - w).abs() <= scale[:, None] / 2 + 1e-7).all()
    q4, s4, lo = quantize_int4(w, 64)
    assert q4.min() >= 0 and q4.max() <= 15 and s4.shape == (64, 4) == lo.shape
    err = (dequantize_int4(q4, s4, lo) - w).abs().reshape(64, 4, 64)
    assert (err <= s4[..., None] / 2 + 1e-6).all()


def test_int4_uses_less_memory_than_int8():
    w = _weight(512, 1024, 4)
    i8 = QuantizedLinear.from_dense(w, None, "int8", 128).weight_bytes()
    i4 = QuantizedLinear.from_dense(w, None, "int4", 128).weight_bytes()
    assert i8 == 512 * 1024 + 512 * 4  # int8 values + fp32 scales
    assert i4 == 512 * 1024 // 2 + (1024 // 128) * 512 * 2 * 2  # packed nibbles + bf16 (scale, zero) per group


@pytest.mark.parametrize("method,n,k,group,field", [
    ("int4", 64, 200, 32, "quant_group_size: 32 does not divide the input width 200 of x.down"),
    ("int4", 40, 128, 32, "quantization: int4 needs an output width divisible by 16"),
    ("int4", 64, 128, 100, "quant_group_size: must be one of"),
    ("int8", 64, 12, 128, "quantization: int8 needs an input width divisible by 8"),
    ("int2", 64, 128, 128, "quantization: must be one of"),
])
def test_unquantizable_shapes_are_refused(method, n, k, group, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        check_quantizable(method, n, k, group, "x.down")
    with pytest.raises(ValueError):
        QuantizedLinear.from_dense(torch.randn(n, k), None, method, group, "x.down")


@pytest.mark.parametrize("flags,field", [
    (dict(quantization="int3"), "quantization"),
    (dict(quantization="int8", device="cuda"), "quantization"),
    (dict(quantization="int4", quant_group_size=100), "quant_group_size"),
    (dict(quantize_lm_head=True), "quantize_lm_head"),
    (dict(load_format="pt"), "load_format"),
])
def test_server_args_refuse_bad_flags(flags, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        ServerArgs(**flags).validate()


def test_valid_flags_pass():
    args = ServerArgs(quantization="int4", quant_group_size=64, quantize_lm_head=True, load_format="dummy")
    assert args.validate() is args


def _server(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *argv], capture_output=True, text=True, timeout=120)


def test_cli_group_size_not_dividing_width_exits_with_one_error(tiny_model_dir):
    """Caught before any process starts: one line naming the flag and the layer, exit status 2."""
    r = _server("--model", tiny_model_dir, "--quantization", "int4", "--quant-group-size", "256", "--port", "1")
    assert r.returncode == 2
    assert "quant_group_size: 256 does not divide the input width 128 of layers.0.self_attn.qkv_proj" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_quantization_on_cuda_is_refused(tiny_model_dir):
    r = _server("--model", tiny_model_dir, "--quantization", "int8", "--device", "cuda")
    assert r.returncode == 2
    assert "quantization: has CPU kernels only" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_blockwise_quantization_equals_whole(method, monkeypatch):
    """Quantizing in row blocks (to bound temporaries) stores exactly what quantizing the whole matrix would."""
    from engine.models import quant

    w = _weight(272, 256, 5)
    monkeypatch.setattr(quant, "QUANT_BLOCK_ELEMENTS", 1 << 40)
    whole = QuantizedLinear.from_dense(w, None, method, 64)
    monkeypatch.setattr(quant, "QUANT_BLOCK_ELEMENTS", 64 * 256)  # 64-row blocks and a 16-row tail
    blocks = QuantizedLinear.from_dense(w, None, method, 64)
    assert [n for n, _ in whole.named_buffers()] == [n for n, _ in blocks.named_buffers()]
    assert all(torch.equal(a, b) for a, b in zip(whole.buffers(), blocks.buffers()))
