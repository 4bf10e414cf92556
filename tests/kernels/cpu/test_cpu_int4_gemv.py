"""The compiled int4 GEMV (engine/kernels/cpu/int4_gemv.py): torch's packed int4 layout as the kernel reads it
(checked byte by byte against torch's packer under each x86 CPU capability), and the kernel's output against the
fp32 reference and torch's own int4 kernel, in its vector, AVX2-only and portable builds, on poisoned outputs."""
import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch

from engine.kernels.cpu.int4_gemv import (AVX2_MARCH, X86_LAYOUTS, CpuInt4Gemv, Int4PackLayout,
                                          int4_gemv_reference, torch_int4pack_layout)

pytestmark = [pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler"),
              pytest.mark.skipif(torch_int4pack_layout() is None, reason="torch's int4 layout unknown here")]


def _cpu_flags() -> str:
    with open("/proc/cpuinfo") as f:
        return f.read()


HAS_AVX2 = " avx2" in _cpu_flags() and " fma" in _cpu_flags()


def pack_like_torch(q: torch.Tensor, layout: Int4PackLayout) -> torch.Tensor:
    """q int [N, K] in 0..15 -> uint8 [N, K / 2], written from the layout's description (int4_gemv.c's header)."""
    n, k = q.shape
    b = layout.block_n
    q = q.to(torch.uint8)
    blocks = []
    for start in range(0, n, b):
        blk = q[start:start + b].t()  # [K, nb]: k-major inside the block
        nb = blk.shape[1]
        if layout.interleaved and nb == b:
            blocks.append(blk[:, :b // 2] | (blk[:, b // 2:] << 4))
        else:
            blocks.append(blk[:, 0::2] | (blk[:, 1::2] << 4))
    return torch.cat([x.reshape(-1) for x in blocks]).reshape(n, k // 2)


def torch_pack_under(capability: str, q: torch.Tensor, tmp_path) -> torch.Tensor | None:
    """torch's packing of q in a subprocess under ATEN_CPU_CAPABILITY=capability (None if torch runs another)."""
    src, dst = tmp_path / f"q-{capability}.pt", tmp_path / f"p-{capability}.pt"
    torch.save(q, src)
    code = ("import sys, torch; q = torch.load(sys.argv[1]); "
            "torch.save(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), sys.argv[2]); "
            "print(torch.backends.cpu.get_cpu_capability())")
    done = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], capture_output=True, text=True,
                          env={**os.environ, "ATEN_CPU_CAPABILITY": capability.lower()}, check=True)
    return torch.load(dst) if done.stdout.strip() == capability else None


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 layouts")
@pytest.mark.parametrize("capability", sorted(X86_LAYOUTS))
def test_layout_is_torchs(capability, tmp_path, gen):
    """208 rows: three full 64-row blocks (six of 32) and a 16-row tail, the shapes each layout treats apart."""
    q = torch.randint(0, 16, (208, 96), dtype=torch.int32, generator=gen)
    packed = torch_pack_under(capability, q, tmp_path)
    if packed is None:
        pytest.skip(f"torch does not run {capability} here")
    assert torch.equal(packed, pack_like_torch(q, X86_LAYOUTS[capability]))


def test_host_layout_is_this_process():
    q = torch.randint(0, 16, (80, 64), dtype=torch.int32)
    assert torch_int4pack_layout() == X86_LAYOUTS[torch.backends.cpu.get_cpu_capability()]
    assert torch.equal(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1),
                       pack_like_torch(q, torch_int4pack_layout()))


@pytest.fixture(scope="module", params=["vectorised", "generic", "avx2"])
def build(request, tmp_path_factory):
    """(cache dir, builder kwargs): each test makes kernels of the layouts it needs from the same build."""
    if request.param == "avx2" and not HAS_AVX2:
        pytest.skip("the CPU lacks AVX2 + FMA")
    kwargs = {"generic": request.param == "generic", "march": AVX2_MARCH if request.param == "avx2" else "native"}
    cache = tmp_path_factory.mktemp("kernels")
    kernel = CpuInt4Gemv(cache, **kwargs)
    assert kernel.vectorised == (request.param == "avx2" or (request.param == "vectorised" and HAS_AVX2))
    return cache, kwargs


def _operands(gen, m, n, k, group):
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    scales = torch.rand(k // group, n, generator=gen) * 0.02 + 1e-3
    zeros = torch.randn(k // group, n, generator=gen) * 0.05
    sz = torch.stack([scales, zeros], dim=-1).bfloat16()  # [K / G, N, 2]
    return torch.randn(m, k, generator=gen), q, sz


def _rel_err(out, ref) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


# N: multiples of 16, most not of 32 or 64 (tail blocks); M crosses the kernel's 2-row tiles and its 16-row chunks
@pytest.mark.parametrize("n,k,group", [(16, 64, 32), (48, 256, 64), (80, 384, 128), (112, 512, 256), (208, 256, 32),
                                       (256, 768, 256), (1152, 896, 128)])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 16, 17])
def test_matches_reference_and_torch(build, gen, m, n, k, group):
    cache, kwargs = build
    x, q, sz = _operands(gen, m, n, k, group)
    ref = int4_gemv_reference(x, q, sz, group)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    out = torch.full((m, n), float("nan"))  # poisoned: every element must be written
    got = CpuInt4Gemv(cache, **kwargs)(x, packed, sz, group, out=out)
    assert got is out and not got.isnan().any()
    assert _rel_err(got, ref) <= 1e-5
    # torch's own kernel on the same operands: bf16 activations and output, so within bf16 rounding
    theirs = torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), packed, group, sz).float()
    assert _rel_err(got, theirs) <= 2e-2
    for layout in X86_LAYOUTS.values():  # every layout, packed as torch packs it under that capability
        other = CpuInt4Gemv(cache, layout=layout, **kwargs)(x, pack_like_torch(q, layout), sz, group)
        assert _rel_err(other, ref) <= 1e-5


def test_engine_int4_buffers(build, gen):
    """The buffers QuantizedLinear keeps for torch's kernel feed this one as they are."""
    from engine.models.quant import QuantizedLinear, dequantize_int4, quantize_int4

    cache, kwargs = build
    w = torch.randn(96, 256, generator=gen) * 0.05
    layer = QuantizedLinear.from_dense(w, None, "int4", 64)
    x = torch.randn(3, 256, generator=gen)
    got = CpuInt4Gemv(cache, **kwargs)(x, layer.qweight, layer.scales_and_zeros, 64)
    want = x @ dequantize_int4(*quantize_int4(w, 64)).t()
    assert _rel_err(got, want) <= 1e-2  # the layer's scales and zeros are stored in bf16



@pytest.mark.parametrize("n,k,group", [(16, 64, 32), (208, 256, 32), (112, 512, 256)])
def test_dequantize_equals_reference_and_reuses_its_scratch(build, gen, n, k, group):
    """Every layout, tail blocks included; the scratch is poisoned after a bigger weight was dequantized."""
    cache, kwargs = build
    for layout in X86_LAYOUTS.values():
        kernel = CpuInt4Gemv(cache, layout=layout, **kwargs)
        _, big_q, big_sz = _operands(gen, 1, 2 * n, k, group)
        kernel.dequantize(pack_like_torch(big_q, layout), big_sz, group)
        kernel._scratch.fill_(float("nan"))
        _, q, sz = _operands(gen, 1, n, k, group)
        got = kernel.dequantize(pack_like_torch(q, layout), sz, group)
        s = sz.float().repeat_interleave(group, dim=0)  # [K, N, 2]
        want = (q.float() - 8.0) * s[..., 0].t() + s[..., 1].t()
        assert got.shape == (n, k) and torch.equal(got, want)


@pytest.mark.parametrize("rows", [1, 64, 65, 130])
def test_quantized_linear_takes_the_kernels_for_fp32(gen, rows):
    """fp32 rows go through the GEMV (up to max_rows = 64) or the dequantized weight's dense matmul, both in fp32 and
    so closer to the layer's own dequantized weight than torch's bf16 kernel; bf16 rows keep torch's kernel."""
    from engine.models.quant import QuantizedLinear, quantize_int4, use_quant_kernel

    w = torch.randn(96, 256, generator=gen) * 0.05
    bias = torch.randn(96, generator=gen)
    layer = QuantizedLinear.from_dense(w, bias, "int4", 64)
    x = torch.randn(rows, 256, generator=gen)
    q, scale, lo = quantize_int4(w, 64)  # the layer keeps scale and zero = lo + 8 scale in bf16
    zero = (lo + 8.0 * scale).bfloat16().float().repeat_interleave(64, dim=1)
    deq = (q.float() - 8.0) * scale.bfloat16().float().repeat_interleave(64, dim=1) + zero
    ref = x @ deq.t() + bias
    kernel = CpuInt4Gemv()
    torch_path, bf16_path = layer(x), layer(x.bfloat16())
    assert use_quant_kernel(layer, "int4", kernel) == 1 and use_quant_kernel(layer, "int8", kernel) == 0
    ours = layer(x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    assert (ours - ref).abs().max() < (torch_path - ref).abs().max()
    assert torch.equal(layer(x.bfloat16()), bf16_path)

def test_empty_batch(build):
    cache, kwargs = build
    q = torch.zeros(32, 32, dtype=torch.uint8)
    out = CpuInt4Gemv(cache, **kwargs)(torch.empty(0, 64), q, torch.zeros(2, 32, 2, dtype=torch.bfloat16), 32)
    assert out.shape == (0, 32)


@pytest.mark.parametrize("args,match", [
    (dict(x=torch.randn(2, 64).bfloat16()), "x: dtype"),
    (dict(x=torch.randn(64, 2).t()), "x: must be contiguous"),
    (dict(x=torch.randn(1, 2, 64)), "x: expected 2 dims"),
    (dict(x=torch.randn(2, 0), qweight=torch.zeros(32, 0, dtype=torch.uint8)), "qweight: needs"),
    (dict(qweight=torch.zeros(32, 32, dtype=torch.int8)), "qweight: dtype"),
    (dict(qweight=torch.zeros(24, 32, dtype=torch.uint8)), "qweight: needs"),
    (dict(qweight=torch.zeros(32, 16, dtype=torch.uint8)), "qweight: expected shape"),
    (dict(group_size=48), "group_size"),
    (dict(group_size=128), "group_size"),
    (dict(scales_and_zeros=torch.zeros(2, 32, 2)), "scales_and_zeros: dtype"),
    (dict(scales_and_zeros=torch.zeros(1, 32, 2, dtype=torch.bfloat16)), "scales_and_zeros: expected shape"),
    (dict(out=torch.empty(2, 16)), "out: expected shape"),
    (dict(out=torch.empty(2, 32, dtype=torch.float64)), "out: dtype"),
])
def test_rejects_bad_input(tmp_path_factory, args, match):
    kernel = CpuInt4Gemv(tmp_path_factory.mktemp("kernels"))
    call = {"x": torch.randn(2, 64), "qweight": torch.zeros(32, 32, dtype=torch.uint8),
            "scales_and_zeros": torch.zeros(2, 32, 2, dtype=torch.bfloat16), "group_size": 32, "out": None, **args}
    with pytest.raises(ValueError, match=match):
        kernel(**call)


def test_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="layout: block_n"):
        CpuInt4Gemv(tmp_path, layout=Int4PackLayout(16, False))
