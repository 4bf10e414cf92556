"""pairserve engine. `from engine import Engine` (imported lazily so the pure-Python layers stay torch-free)."""
from __future__ import annotations

__all__ = ["Engine", "ServerArgs"]


def __getattr__(name: str):
    if name == "Engine":
        from engine.engine import Engine

        return Engine
    if name == "ServerArgs":
        from engine.config import ServerArgs

        return ServerArgs
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
