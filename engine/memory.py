"""Device memory for KV: the per-layer K/V pool and the request → token-slot table.

Slot bookkeeping (which slot is free, which request or cache node owns it) is pure Python in
engine/slot_allocator.py and engine/scheduler/kv_manager.py; this module only holds the tensors.
"""
from __future__ import annotations

import os

import torch


class KVPool:
    """K and V per layer, each [num_slots, num_kv_heads, head_dim]."""

    def __init__(self, num_slots: int, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str):
        shape = (num_slots, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots = num_slots

    def get_kv(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer_id], self.v[layer_id]

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """loc [T] slot ids; k, v [T, num_kv_heads, head_dim]."""
        loc = loc.long()  # index_copy_ wants int64; on CPU it is far faster than k_buf[loc] = k
        self.k[layer_id].index_copy_(0, loc, k.to(self.k[layer_id].dtype))
        self.v[layer_id].index_copy_(0, loc, v.to(self.v[layer_id].dtype))

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def available_memory_bytes(device: str) -> int:
    """Free memory the KV pool may draw from: device memory on CUDA, MemAvailable of the host otherwise."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def plan_kv_slots(kv_cache_tokens: int | None, mem_fraction: float, bytes_per_token: int, page_size: int,
                  device: str, cap_tokens: int = 1 << 20) -> int:
    """Pool size in slots (whole pages): the explicit flag, or a fraction of free memory capped at cap_tokens."""
    if kv_cache_tokens is not None:
        n = kv_cache_tokens
    else:
        n = min(int(available_memory_bytes(device) * mem_fraction) // bytes_per_token, cap_tokens)
    n = max(n - n % page_size, 2 * page_size)
    return n + page_size  # plus the reserved padding page
