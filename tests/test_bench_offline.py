"""bench.offline: the bandwidth-floor arithmetic on a hand-sized config, and a short run on the tiny model."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench.offline import decode_step_bytes, flops_per_token, main


def test_decode_step_bytes_counts_weights_once_and_kv_per_request():
    cfg = SimpleNamespace(hidden_size=8, num_layers=2, head_dim=2, num_heads=4, num_kv_heads=2,
                          intermediate_size=16, vocab_size=10)
    # per layer: qkv 8*(4+2*2)*2 = 128, o 4*2*8 = 64, mlp 3*8*16 = 384 -> 576; x2 layers + lm head 80 = 1232
    # kv: 3 requests * 5 tokens * 2 layers * (K and V) * 2 kv heads * 2 dims = 240
    assert decode_step_bytes(cfg, batch=3, context=5, dtype_bytes=2) == (1232 + 240) * 2
    assert decode_step_bytes(cfg, batch=1, context=0, dtype_bytes=4) == 1232 * 4


def test_flops_per_token_grows_with_context_by_the_attention_term():
    cfg = SimpleNamespace(hidden_size=8, num_layers=2, head_dim=2, num_heads=4, num_kv_heads=2,
                          intermediate_size=16, vocab_size=10)
    # 2 FLOPs per MAC; attention adds 2 * heads * head_dim MACs per context token per layer
    assert flops_per_token(cfg, 20) - flops_per_token(cfg, 10) == 2.0 * 2 * (2 * 4 * 2 * 10) + 2.0 * 8 * 10 * (
        1 / 20 - 1 / 10)


def test_offline_run_reports_efficiency_fields(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "offline.json"
    main(["--model", tiny_model_dir, "--batches", "1,3", "--prompt-len", "12", "--new-tokens", "5", "--no-hf",
          "--dtype", "float32", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["dtype"] == "float32" and data["copy_bandwidth"] > 0
    assert [r["batch"] for r in data["rows"]] == [1, 3]
    for r in data["rows"]:
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0
        assert 0 < r["decode_floor_frac"] and r["decode_floor_tok_s"] > 0
        assert r["overhead_ms_per_step"] >= 0
    assert "% of bandwidth floor" in capsys.readouterr().out


def test_offline_alternates_prefill_runs_with_hf(tiny_model_dir, tmp_path):
    """--repeats times both systems' prefill back to back: every run is kept, the reported figures are medians."""
    out = tmp_path / "offline.json"
    main(["--model", tiny_model_dir, "--batches", "2", "--prompt-len", "12", "--new-tokens", "3", "--repeats", "3",
          "--dtype", "float32", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert len(row["prefill_s"]) == 3 and len(row["hf_prefill_s"]) == 3
    assert row["prefill_tok_s"] == pytest.approx(2 * 12 / sorted(row["prefill_s"])[1])
    assert row["hf_prefill_tok_s"] == pytest.approx(2 * 12 / sorted(row["hf_prefill_s"])[1])
    ratios = sorted(h / p for h, p in zip(row["hf_prefill_s"], row["prefill_s"]))
    assert row["prefill_speedup"] == pytest.approx(ratios[1])


def test_offline_refuses_zero_repeats(tiny_model_dir):
    with pytest.raises(SystemExit):
        main(["--model", tiny_model_dir, "--repeats", "0", "--no-hf"])
