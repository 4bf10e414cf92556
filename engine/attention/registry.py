"""The attention-backend factory: one name (`ServerArgs.attention_backend`) to one backend instance.

It lives apart from base.py so the interface never imports its implementations (each backend imports base.py;
base.py imports none of them). Backends are imported on demand, so a CPU install never imports Triton's
launcher code or FlashInfer.
"""
from __future__ import annotations

import logging
import os

from engine.attention.base import AttentionBackend

logger = logging.getLogger(__name__)


def create_backend(name: str, num_heads: int, num_kv_heads: int, head_dim: int, device: str) -> AttentionBackend:
    """`auto` is triton on CUDA; on CPU it is `cpu` (torch-native extend, compiled decode kernel), or `torch` where
    no C compiler can build that kernel. flashinfer needs CUDA and the `gpu` extra."""
    if name == "auto" and device.startswith("cuda"):
        name = "triton"
    if name in ("auto", "cpu"):
        if device.startswith("cuda"):
            raise ValueError("attention_backend: cpu runs only on CPU devices")
        from engine.attention.cpu_backend import CpuBackend
        from engine.kernels.cpu.decode_attention import CpuDecodeKernel
        from engine.kernels.cpu.build import KernelBuildError

        try:
            return CpuBackend(CpuDecodeKernel(), num_heads, num_kv_heads, head_dim)
        except KernelBuildError as e:
            if name == "cpu":
                raise ValueError(f"attention_backend: cpu: {e}") from e
            logger.warning("CPU decode kernel unavailable, using the torch backend: %s", e)
            name = "torch"
    if name == "torch":
        from engine.attention.torch_native import TorchNativeBackend

        return TorchNativeBackend()
    if name == "triton":
        if not device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("attention_backend: triton needs a CUDA device (or TRITON_INTERPRET=1 on CPU)")
        from engine.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend(num_heads, num_kv_heads, head_dim, device)
    if name == "flashinfer":
        if not device.startswith("cuda"):
            raise ValueError("attention_backend: flashinfer runs only on CUDA devices; use torch or triton on CPU")
        from engine.attention.flashinfer_backend import FlashInferBackend

        return FlashInferBackend(num_heads, num_kv_heads, head_dim, device)
    raise ValueError(f"attention_backend: unknown backend {name!r}")
