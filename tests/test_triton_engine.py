"""The triton attention backend end to end on CPU (Triton interpreter, set by conftest.py): same greedy tokens as
the torch backend through chunked prefill and cached-prefix hits; and the fused norm / rotary layer path."""
from __future__ import annotations

import pytest
import torch

GREEDY = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
FLAGS = dict(chunked_prefill_size=16, max_running_requests=4, dtype="float32")


def _prompts():
    shared = [(13 * i) % 1900 + 50 for i in range(30)]  # longer than one chunk of 16
    return [shared + [7, 8, 9], [300, 301, 302, 303, 304], shared + [11, 12]]


def test_create_backend_allows_triton_on_cpu_only_under_the_interpreter(monkeypatch):
    from engine.attention.registry import create_backend
    from engine.attention.triton_backend import TritonAttentionBackend

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        create_backend("triton", 4, 2, 32, "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert isinstance(create_backend("triton", 4, 2, 32, "cpu"), TritonAttentionBackend)


@pytest.mark.parametrize("mixed", [False, True])
def test_triton_engine_gives_torch_greedy_tokens(mixed, tiny_model_dir, make_engine):
    flags = dict(FLAGS, enable_mixed_chunk=mixed)
    torch_eng = make_engine(tiny_model_dir, attention_backend="torch", **flags)
    triton_eng = make_engine(tiny_model_dir, attention_backend="triton", **flags)
    assert type(triton_eng.loop.runner.attn_backend).__name__ == "TritonAttentionBackend"
    # with mixing, a fourth, longer prompt is still prefilling in chunks while the others decode
    prompts = _prompts() + ([list(range(400, 440))] if mixed else [])
    # Round 1 batches all three (prompt 3 may hit prompt 1's prefix once it is cached); round 2 re-sends the
    # first prompt, whose prefix is then certainly cached: extend with a prefix on a fresh request.
    for round_prompts in (prompts, prompts[:1]):
        want = torch_eng.generate(input_ids=round_prompts, sampling_params=GREEDY)
        got = triton_eng.generate(input_ids=round_prompts, sampling_params=GREEDY)
        assert [o["output_ids"] for o in got] == [o["output_ids"] for o in want]
        assert all(len(o["output_ids"]) == GREEDY["max_new_tokens"] for o in got)
    assert got[0]["meta_info"]["cached_tokens"] >= 16
    assert got[0]["meta_info"]["prompt_tokens"] > FLAGS["chunked_prefill_size"]  # its first prefill was chunked
    assert (triton_eng.get_stats()["mixed_steps_total"] > 0) == mixed
    assert (torch_eng.get_stats()["mixed_steps_total"] > 0) == mixed


def test_fused_norm_and_rotary_match_the_torch_path():
    from engine.models.layers import RMSNorm, RotaryEmbedding

    gen = torch.Generator().manual_seed(5)
    norm = RMSNorm(64, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(64, generator=gen))
    x, res = torch.randn(2, 7, 64, generator=gen).unbind(0)
    want_out, want_res = norm(x, res)
    want_plain = norm(x)
    rotary = RotaryEmbedding(32, 128, 10000.0)
    positions = torch.tensor([0, 3, 5, 6, 100, 127, 1])
    q = torch.randn(7, 4, 32, generator=gen)
    k = torch.randn(7, 2, 32, generator=gen)
    want_q, want_k = rotary(positions, q, k)

    from engine.kernels.gpu.rmsnorm import rmsnorm
    from engine.kernels.gpu.rotary import apply_rotary

    norm.kernel, rotary.kernel = rmsnorm, apply_rotary
    got_out, got_res = norm(x, res)
    torch.testing.assert_close(got_out, want_out)
    torch.testing.assert_close(got_res, want_res)
    torch.testing.assert_close(norm(x), want_plain)
    got_q, got_k = rotary(positions, q.clone(), k.clone())
    torch.testing.assert_close(got_q, want_q)
    torch.testing.assert_close(got_k, want_k)
    assert not torch.equal(want_q, q)  # the rotation did something


def test_use_triton_kernels_switches_every_norm_and_the_rotary(tiny_model_dir):
    from engine.models.layers import RMSNorm, RotaryEmbedding, use_triton_kernels
    from engine.models.loader import load_model

    model, cfg = load_model(tiny_model_dir, "float32", "cpu")
    # two norms per layer, the final norm, one rotary module shared by every layer
    assert use_triton_kernels(model) == 2 * cfg.num_layers + 2
    switched = [m for m in model.modules() if isinstance(m, (RMSNorm, RotaryEmbedding))]
    assert all(m.kernel is not None for m in switched)
    use_triton_kernels(model, enabled=False)
    assert all(m.kernel is None for m in switched)
