"""Model names the benchmarks accept → checkpoint directories.

`tiny` and `bench` are the project's deterministic random Qwen2 presets (engine.models.tiny), written afresh into a
temp dir per call (a second or so; never stale after the generator changes); anything else goes through the
engine's own resolution (`demo`, a checkpoint dir)."""
from __future__ import annotations

import tempfile

GENERATED_PRESETS = ("tiny", "bench")


def resolve_model(name: str) -> str:
    if name in GENERATED_PRESETS:
        from engine.models.tiny import write_tiny_checkpoint

        return write_tiny_checkpoint(tempfile.mkdtemp(prefix=f"pairserve-{name}-"), preset=name, seed=0)
    from engine.models.loader import resolve_model_path

    return resolve_model_path(name)
