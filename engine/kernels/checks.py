"""Input checks every kernel wrapper shares (CPU C kernels and GPU Triton kernels alike): ValueError naming the
argument, before any kernel touches memory."""
from __future__ import annotations

from typing import Iterable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(
    name: str,
    t: torch.Tensor,
    *,
    ndim: int,
    dtypes: Iterable[torch.dtype],
    device: torch.device | None = None,
    unit_last_stride: bool = True,
    contiguous: bool = False,
) -> None:
    """Raise ValueError naming `name` when `t` is not a tensor of the expected rank / dtype / device / layout."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")
    dtypes = tuple(dtypes)
    if t.dtype not in dtypes:
        raise ValueError(f"{name}: dtype must be one of {dtypes}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected device {device}, got {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")
    if unit_last_stride and t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name}: last dim must have stride 1, got strides {t.stride()}")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raise ValueError naming `name` when `t.shape != shape`."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def is_plain(t, dtype: torch.dtype, ndim: int) -> bool:
    """The common case of a CPU kernel's operand, cheaply: a contiguous CPU tensor of `dtype` and rank `ndim`.
    Wrappers on a hot path test this first and run the full (naming) checks only when it fails."""
    return (isinstance(t, torch.Tensor) and t.dtype == dtype and t.dim() == ndim and t.is_cpu
            and t.is_contiguous())
