"""pairserve engine. `from engine import Engine` (imported lazily so the pure-Python layers stay torch-free)."""
from __future__ import annotations

import os

# Tensors of 2 MB and more on transparent huge pages: torch's own switch, read once at its first CPU allocation, so
# it is set here, on import, before any tensor exists (an explicit THP_MEM_ALLOC_ENABLE=0 wins; spawned engine
# processes inherit it). A decode step streams every weight byte, and on 4 KB pages a VM pays a nested page walk
# every 4 KB: a 0.5B int8 decode step at batch 1 took 80-89 ms with it against 100-111 ms without (2-core AVX2
# VM, docs/quantization.md).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__all__ = ["Engine", "ServerArgs"]


def __getattr__(name: str):
    if name == "Engine":
        from engine.engine import Engine

        return Engine
    if name == "ServerArgs":
        from engine.config import ServerArgs

        return ServerArgs
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
