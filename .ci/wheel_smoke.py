"""Run from OUTSIDE the checkout, in a venv that has only the built wheel installed: the installed package
compiles its C kernels (decode attention, RMSNorm, rotary) from its own package data into a fresh cache and
generates greedily on the tiny model; the same prompt on the torch backend gives the same tokens.

    python wheel_smoke.py WORKDIR
"""
import os
import sys
from pathlib import Path

work = Path(sys.argv[1])
os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # nothing prebuilt: every kernel compiles here

import engine  # noqa: E402
from engine import Engine  # noqa: E402
from engine.models.tiny import write_tiny_checkpoint  # noqa: E402

assert "site-packages" in engine.__file__, f"engine imported from {engine.__file__}, not the installed wheel"
model = work / "tiny"
write_tiny_checkpoint(str(model))
params = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
outs = {}
for backend in ("cpu", "torch"):
    with Engine(model_path=str(model), attention_backend=backend, dtype="float32", kv_cache_tokens=2048) as eng:
        outs[backend] = eng.generate("hello world, this is a wheel", params)["output_ids"]
built = sorted(p.name.split("-")[0] for p in (work / "cache" / "pairserve" / "kernels").glob("*.so"))
print("kernels built from the wheel:", built, "| tokens:", outs["cpu"])
assert {"decode_attention", "rmsnorm", "rotary"} <= set(built), built
assert len(outs["cpu"]) == 8 and outs["cpu"] == outs["torch"], outs
print("wheel smoke: ok")
