"""bench.model_speed on the tiny model: the issue's JSON keys, with figures that are consistent with each other."""
from __future__ import annotations

import json

import pytest

from bench.model_speed.__main__ import main
from bench.model_speed.measure import model_weight_bytes
from engine.models.loader import load_model


@pytest.mark.parametrize("quant", [[], ["--quantization", "int4", "--quant-group-size", "32"]])
def test_model_speed_writes_the_issue_keys(tiny_model_dir, tmp_path, quant):
    out = tmp_path / "speed.json"
    main(["--model", tiny_model_dir, "--load-format", "dummy", *quant, "--chunk", "32", "--prefill-repeats", "1",
          "--decode-batches", "1,3", "--context", "40", "--decode-steps", "3", "--output-file", str(out)])
    r = json.loads(out.read_text())
    for key in ("matmul_flops", "copy_bandwidth", "prefill_tokens_per_s", "prefill_peak_fraction", "decode",
                "peak_rss_bytes", "load_seconds"):
        assert key in r
    assert r["matmul_flops"] > 1e8 and r["copy_bandwidth"] > 1e8 and r["load_seconds"] > 0
    assert r["peak_rss_bytes"] > 100 << 20
    assert 0 < r["prefill_peak_fraction"] < 1.5 and r["prefill_tokens_per_s"] > 0
    assert [d["batch"] for d in r["decode"]] == [1, 3]
    for d in r["decode"]:
        assert d["tokens_per_s"] > 0 and 0 < d["bandwidth_fraction"] < 1.5
        assert d["tokens_per_s"] == pytest.approx(d["batch"] / d["step_seconds"])


def test_weight_bytes_count_what_is_stored(tiny_model_dir):
    dense, cfg = load_model(tiny_model_dir, "float32")
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    per_layer = h * qkv + cfg.num_heads * cfg.head_dim * h + 3 * h * inter
    assert model_weight_bytes(dense) == 4 * (layers * per_layer + cfg.vocab_size * h)
    q8, _ = load_model(tiny_model_dir, "float32", quantization="int8")
    # int8 values + one fp32 scale per output channel; the fp32 LM head is left as is
    channels = layers * (qkv + h + 2 * inter + h)
    assert model_weight_bytes(q8) == layers * per_layer + 4 * channels + 4 * cfg.vocab_size * h
