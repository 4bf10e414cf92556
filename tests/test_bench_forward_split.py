"""bench.forward_split: forward time, steps and tokens by mode, counted exactly on a known workload."""
from __future__ import annotations

from bench.forward_split import ForwardSplit
from engine.model_runner import ModelRunner


def test_counts_extend_and_decode_tokens(tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir, disable_radix_cache=True)
    original = ModelRunner.forward
    with ForwardSplit() as split:
        eng.generate(input_ids=[[5, 6, 7, 8, 9], [10, 11, 12]], sampling_params={"max_new_tokens": 3,
                                                                               "ignore_eos": True})
    assert ModelRunner.forward is original  # unpatched on exit
    ext_s, ext_steps, ext_reqs, ext_tokens = split.acc["extend"]
    dec_s, dec_steps, dec_reqs, dec_tokens = split.acc["decode"]
    assert ext_tokens == 8 and ext_reqs >= 2 and ext_steps >= 1
    assert dec_tokens == 2 * (3 - 1) and dec_reqs == dec_tokens  # the first token of each comes from its extend
    assert ext_s > 0 and dec_s > 0
    assert "| decode |" in split.table(1.0)
