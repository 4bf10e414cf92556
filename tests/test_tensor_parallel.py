"""Tensor parallelism (--tp-size): TP=2 (gloo, 2 ranks) against TP=1 on the tiny models, bad sizes, dead ranks.

tiny_model_dir (Qwen2: 4 heads, 2 KV heads) splits its KV heads; tiny_llama_dir (4 heads, 1 KV head, untied)
replicates its one KV head on both ranks."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from engine.config import ModelConfig, ServerArgs
from engine.distributed.sharding import check_tp_size, shard_weights
from engine.model_runner import ModelRunner
from engine.sampling_params import SamplingParams
from engine.scheduler import Req, Scheduler
from tests.test_model_parity import _prompts

TP_FLAGS = dict(num_threads=1, kv_cache_tokens=1024)  # 2 ranks x 1 thread on a 2-core machine


def _prefill_logits(path: str, tp_size: int, dtype: str) -> torch.Tensor:
    args = ServerArgs(model_path=path, dtype=dtype, tp_size=tp_size, **TP_FLAGS)
    runner = ModelRunner(args, path)
    try:
        sch = Scheduler(args, runner.num_slots, runner.context_len, lambda ids: "")
        for i, p in enumerate(_prompts(4, 2000)):
            sch.add(Req(rid=str(i), input_ids=p, sampling=SamplingParams(max_new_tokens=1, temperature=0)))
        batch = sch.schedule()
        assert batch.batch_size == 4
        return runner.forward(batch)
    finally:
        runner.close()


@pytest.mark.parametrize("which, dtype, atol", [("tiny_model_dir", "float32", 1e-4), ("tiny_llama_dir", "float32", 1e-4),
                                               ("tiny_llama_dir", "bfloat16", 0.05)])
def test_tp2_prefill_logits_equal_tp1(which, dtype, atol, request):
    path = request.getfixturevalue(which)
    ref = _prefill_logits(path, 1, dtype)
    tp2 = _prefill_logits(path, 2, dtype)
    assert tp2.shape == ref.shape
    err = (tp2 - ref).abs().max().item()
    assert err <= atol * max(1.0, ref.abs().max().item()), err
    if dtype == "float32":  # bf16 partial sums round differently; a random model has near-ties in bf16
        assert torch.equal(tp2.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("which", ["tiny_model_dir", "tiny_llama_dir"])
def test_tp2_greedy_tokens_identical(which, request):
    from engine import Engine

    path = request.getfixturevalue(which)
    sp = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    flags = dict(dtype="float32", max_running_requests=8, chunked_prefill_size=16, max_prefill_tokens=48, **TP_FLAGS)
    outs = {}
    for tp in (1, 2):
        with Engine(model_path=path, tp_size=tp, **flags) as eng:
            outs[tp] = [o["output_ids"] for o in eng.generate(input_ids=_prompts(6, 2000), sampling_params=sp)]
            eng.check_integrity()
    assert outs[2] == outs[1]


def test_bad_tp_sizes_fail_at_startup(tiny_model_dir):
    from engine import Engine

    with pytest.raises(ValueError, match="tp_size: 3 does not divide the model's 4 attention heads"):
        Engine(model_path=tiny_model_dir, tp_size=3, **TP_FLAGS)
    with pytest.raises(ValueError, match="tp_size: 8 is larger than the model's 4 attention heads"):
        Engine(model_path=tiny_model_dir, tp_size=8, **TP_FLAGS)
    with pytest.raises(ValueError, match="tp_size"):
        ServerArgs(tp_size=0).validate()
    cfg = ModelConfig.from_hf(tiny_model_dir)
    with pytest.raises(ValueError, match="key/value heads cannot be replicated"):
        check_tp_size(ModelConfig(**{**cfg.__dict__, "num_heads": 6, "num_kv_heads": 4, "intermediate_size": 12}), 6)


def test_tp_alias_on_the_command_line():
    from server.cli import parse_server_args

    assert parse_server_args(["--tp", "2"]).tp_size == 2
    assert parse_server_args(["--tp-size", "4"]).tp_size == 4


def test_shards_reassemble_every_tensor_and_pad_the_vocab(tiny_model_dir):
    from engine.models.loader import iter_weights

    cfg = ModelConfig.from_hf(tiny_model_dir)
    cfg = ModelConfig(**{**cfg.__dict__, "vocab_size": 2047})  # not divisible by 2: the last slice is padded
    full = {n: t[:2047] if "embed" in n or "lm_head" in n else t for n, t in iter_weights(tiny_model_dir)}
    shards = [dict(shard_weights(full.items(), cfg, r, 2)) for r in range(2)]
    for name, t in full.items():
        a, b = shards[0][name], shards[1][name]
        if "o_proj" in name or "down_proj" in name:
            assert torch.equal(torch.cat([a, b], 1), t)
        elif "norm" in name:
            assert torch.equal(a, t) and torch.equal(b, t)
        elif "embed" in name or "lm_head" in name:
            assert a.shape == b.shape == (1024, t.shape[1])
            assert torch.equal(torch.cat([a, b])[:2047], t) and not b[-1].any()
        else:  # q/k/v (2 KV heads: one per rank), gate/up
            assert torch.equal(torch.cat([a, b]), t)


def _wait_for(pred, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_dead_rank_fails_the_engine_without_hanging(tiny_model_dir):
    from engine import Engine
    from engine.engine import EngineDeadError

    eng = Engine(model_path=tiny_model_dir, tp_size=2, dtype="float32", **TP_FLAGS)
    try:
        assert eng.generate("hello", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2
        worker = eng.loop.runner.tp_workers.procs[0]
        os.kill(worker.pid, signal.SIGKILL)
        _wait_for(lambda: worker.poll() is not None, 10, "the worker to die")
        t = time.monotonic()
        with pytest.raises(EngineDeadError, match="tensor-parallel group broken: rank 1"):
            eng.generate("hello again", {"max_new_tokens": 2})
        assert time.monotonic() - t < 30
    finally:
        eng.shutdown()
