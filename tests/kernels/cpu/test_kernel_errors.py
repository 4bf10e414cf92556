"""C-kernel failures are typed exceptions naming the kernel and its return code (never asserts, which `python -O`
strips): each wrapper's return-code path, with the library call replaced by one that fails."""
from __future__ import annotations

import pytest
import torch

from engine.kernels.cpu.build import KernelError, check_kernel_rc


def test_check_kernel_rc():
    check_kernel_rc("rotary", 0)
    with pytest.raises(KernelError, match=r"^rotary: .* return code -7$") as info:
        check_kernel_rc("rotary", -7)
    assert (info.value.kernel, info.value.code) == ("rotary", -7)


def test_rotary_wrapper_raises_kernel_error():
    from engine.kernels.cpu.rotary import CpuRotary

    rot = CpuRotary()
    q, k = torch.zeros(2, 2, 8), torch.zeros(2, 1, 8)
    positions, cos_sin = torch.tensor([0, 1]), torch.zeros(4, 8)
    rot(q, k, positions, cos_sin)  # the real kernel accepts it
    rot._fn = lambda *args: -1
    with pytest.raises(KernelError) as info:
        rot(q, k, positions, cos_sin)
    assert (info.value.kernel, info.value.code) == ("rotary", -1)


def test_decode_wrapper_raises_kernel_error():
    from engine.kernels.cpu.decode_attention import CpuDecodeKernel

    kern = CpuDecodeKernel()
    q = torch.zeros(1, 2, 16)
    k_buf = v_buf = torch.zeros(8, 1, 16)
    req_to_token = torch.arange(8, dtype=torch.int32).reshape(1, 8)
    idx, lens = torch.tensor([0]), torch.tensor([3])
    kern(q, k_buf, v_buf, req_to_token, idx, lens, 0.25)
    kern._fn = lambda *args: 5
    with pytest.raises(KernelError) as info:
        kern(q, k_buf, v_buf, req_to_token, idx, lens, 0.25)
    assert (info.value.kernel, info.value.code) == ("decode_attention", 5)
