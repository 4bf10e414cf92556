"""bench.forward_split: forward time, steps and tokens by mode, counted exactly on a known workload."""
from __future__ import annotations

from bench.forward_split import PIECES, ForwardSplit
from engine.model_runner import ModelRunner


def test_counts_extend_and_decode_tokens(tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir, disable_radix_cache=True)
    original = ModelRunner.forward
    originals = [cls.__dict__[name] for cls, name, _ in PIECES]
    with ForwardSplit() as split:
        eng.generate(input_ids=[[5, 6, 7, 8, 9], [10, 11, 12]], sampling_params={"max_new_tokens": 3,
                                                                               "ignore_eos": True})
    assert ModelRunner.forward is original  # unpatched on exit
    assert [cls.__dict__[name] for cls, name, _ in PIECES] == originals
    ext_s, ext_steps, ext_reqs, ext_tokens = split.acc["extend"]
    dec_s, dec_steps, dec_reqs, dec_tokens = split.acc["decode"]
    assert ext_tokens == 8 and ext_reqs >= 2 and ext_steps >= 1
    assert dec_tokens == 2 * (3 - 1) and dec_reqs == dec_tokens  # the first token of each comes from its extend
    assert ext_s > 0 and dec_s > 0
    ext, dec = split.pieces["extend"], split.pieces["decode"]
    assert ext["batch build"] > 0 and ext["linears"] > 0 and ext["extend attention"] > 0
    assert ext["decode attention"] == 0 and dec["extend attention"] == 0  # each where its mode runs it
    assert dec["batch build"] > 0 and dec["linears"] > 0 and dec["decode attention"] > 0
    assert sum(ext.values()) < ext_s and sum(dec.values()) < dec_s  # inside the forwards, counted once
    assert "| decode |" in split.table(1.0) and "decode attention s" in split.table(1.0)


def test_decode_subcommand_times_only_decode_steps(tiny_model_dir, capsys):
    from bench.forward_split import run_decode

    median = run_decode(["--model", tiny_model_dir, "--batch", "3", "--context", "20", "--new-tokens", "4"])
    out = capsys.readouterr().out
    assert median > 0
    assert "batch 3 x 20-token contexts" in out and "over 3 steps" in out  # 4 tokens: 1 from prefill, 3 decoded
