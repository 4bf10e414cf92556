"""GPU kernels in Triton, one per module, each beside a pure-torch reference of the same contract.

Modules: `extend_attention` (prefill / chunked prefill over the token-slot KV pool), `decode_attention`
(split-KV flash decoding), `rmsnorm` (optionally fused with the residual add), `rotary` (neox-style RoPE and
its cos/sin cache).

Kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter. The interpreter is chosen when
`@triton.jit` runs, i.e. when a kernel module is first imported: set `TRITON_INTERPRET=1` before that.

This package module holds what the kernel modules share: the interpreter checks and `round_to`, a
`@triton.jit` cast helper (so importing this package already fixes interpreter mode). It imports no kernel
module: a function re-exported here would shadow the submodule of the same name.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

def is_interpreted(kernel: object) -> bool:
    """True when `kernel` was built by `@triton.jit` under TRITON_INTERPRET=1."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def check_launchable(kernel: object, device: torch.device) -> None:
    """Raise ValueError when `kernel` cannot run on `device` (CPU needs the interpreter)."""
    if device.type == "cpu" and not is_interpreted(kernel):
        raise ValueError(
            "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before engine.kernels.gpu modules "
            "are imported"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device}")


def dot_in_fp32(kernel: object, dtype: torch.dtype) -> bool:
    """Whether a kernel should upcast its `tl.dot` operands to fp32 and multiply in full precision.

    Always under the interpreter, whose bf16 `tl.dot` is silently wrong; for fp32 inputs also on GPU, where
    fp32 dots would otherwise run as tf32 (~1e-3 relative error). fp16/bf16 on GPU keep tensor-core dots with
    fp32 accumulation.
    """
    return is_interpreted(kernel) or dtype == torch.float32


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """Cast fp32 `x` to DTYPE rounding to nearest even.

    A plain `.to(tl.bfloat16)` (and a store of fp32 into a bf16 pointer) truncates under the interpreter, so
    bf16 is rounded by hand here: the fp32 bits are rounded to the 16 kept bits first, after which the cast
    is exact on every backend. NaN and inf keep their class.
    """
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + (((bits >> 16) & 1) + 0x7FFF)
        x = ((bits >> 16) << 16).to(tl.float32, bitcast=True)
    return x.to(DTYPE)
