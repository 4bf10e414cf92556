"""--dtype auto: bfloat16 only where the hardware computes it natively (a CPU without oneDNN's bf16 path runs bf16
matmuls hundreds of times slower than fp32), and the serving stack reports what it resolved to."""
from __future__ import annotations

import pytest
import torch

import engine.models.layers as layers
import engine.models.loader as loader
from engine.config import ServerArgs
from engine.models.loader import resolve_dtype


def test_auto_is_the_default_and_follows_the_cpu(monkeypatch):
    assert ServerArgs().dtype == "auto"
    monkeypatch.setattr(loader, "cpu_bf16_native", lambda: True)
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(loader, "cpu_bf16_native", lambda: False)
    assert resolve_dtype("auto", "cpu") == "float32"


@pytest.mark.parametrize("name", ["bfloat16", "float32", "float16"])
def test_explicit_dtypes_are_kept(monkeypatch, name):
    monkeypatch.setattr(loader, "cpu_bf16_native", lambda: False)
    assert resolve_dtype(name, "cpu") == name


def test_unknown_dtype_is_a_value_error_naming_the_field():
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", "cpu")
    with pytest.raises(ValueError, match="dtype"):
        ServerArgs(dtype="int8").validate()


def test_no_prepacking_without_a_native_bf16_path(monkeypatch):
    # the oneDNN reorder raises on such a CPU; the layer must keep its plain weight instead
    monkeypatch.setattr(layers, "cpu_bf16_native", lambda: False)
    lin = layers.BucketedLinear(16, 8).bfloat16()
    w = lin.weight.detach().clone()
    assert not layers.mkldnn_packing()
    assert not lin.prepack() and lin.packed is None
    assert torch.equal(lin.weight, w)


def test_engine_serves_in_the_resolved_dtype(tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir, dtype="auto")  # ServerArgs' default (make_engine's is float32)
    expected = resolve_dtype("auto", "cpu")
    stats = eng.get_stats()
    assert stats["dtype"] == expected
    out = eng.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 3, "temperature": 0,
                                                              "ignore_eos": True})
    assert len(out["output_ids"]) == 3
