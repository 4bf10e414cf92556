"""The compiled CPU rotary embedding (engine/kernels/cpu/rotary.py) against RotaryEmbedding's torch path, bit for bit,
on q/k views of a fused projection's output (strided tokens) with irregular token counts and head layouts; bad
input; and its wiring: models on the `cpu` attention backend use it, the `torch` backend keeps torch ops."""
import os
import shutil

import pytest
import torch

from engine.kernels.cpu.rotary import CpuRotary
from engine.models.layers import RotaryEmbedding

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    return CpuRotary(tmp_path_factory.mktemp("kernels"))


def _qkv(gen, tokens, num_heads, num_kv_heads, head_dim, dtype):
    """q, k as views of one [tokens, (H + 2 KVH) * D] buffer, like Attention.forward's split, and the buffer."""
    buf = (3 * torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen)).to(dtype)
    q, k, _ = buf.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    return q.view(tokens, num_heads, head_dim), k.view(tokens, num_kv_heads, head_dim), buf


# (tokens, heads, kv heads, head_dim): the bench preset's 8/2/64, SmolLM2's 9/3/64, Qwen-like 128, odd sizes
@pytest.mark.parametrize("tokens,num_heads,num_kv_heads,head_dim",
                         [(1, 8, 2, 64), (366, 8, 2, 64), (37, 9, 3, 64), (5, 4, 4, 128), (130, 2, 1, 18)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_matches_torch_path_bitwise(kernel, gen, tokens, num_heads, num_kv_heads, head_dim, dtype):
    rope = RotaryEmbedding(head_dim, 4096, 10000.0)
    positions = torch.randint(0, 4096, (tokens,), generator=gen)
    q, k, buf = _qkv(gen, tokens, num_heads, num_kv_heads, head_dim, dtype)
    v_before = buf[:, (num_heads + num_kv_heads) * head_dim:].clone()
    want_q, want_k = rope(positions, q.clone(), k.clone())  # the torch path (no kernel set)
    rope.kernel = kernel
    got_q, got_k = rope(positions, q, k)
    assert got_q.data_ptr() == q.data_ptr() and got_k.data_ptr() == k.data_ptr()  # in place, in the buffer
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert torch.equal(buf[:, (num_heads + num_kv_heads) * head_dim:], v_before)  # v untouched


def test_position_zero_is_identity_and_empty(kernel, gen):
    rope = RotaryEmbedding(64, 16, 10000.0)
    q, k, _ = _qkv(gen, 3, 2, 1, 64, torch.bfloat16)
    q0, k0 = q.clone(), k.clone()
    kernel(q, k, torch.zeros(3, dtype=torch.int64), rope.cos_sin)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    e = torch.empty(0, 2, 64)
    assert kernel(e, e[:, :1], torch.empty(0, dtype=torch.int64), rope.cos_sin)[0].shape == (0, 2, 64)


@pytest.mark.parametrize("field,value,match", [
    ("q", torch.randn(3, 2, 64).half(), "q: dtype"),
    ("k", torch.randn(3, 1, 32), "k: expected shape"),
    ("q", torch.randn(3, 2, 63), "q: head_dim must be even"),
    ("q", torch.randn(3, 64, 2).transpose(1, 2), "q: last dim must have stride 1"),
    ("q", torch.randn(3, 64).unsqueeze(1).expand(3, 2, 64), "q: heads and tokens must not overlap"),
    ("positions", torch.tensor([0, 1, 16]), r"positions: each must be in \[0, 16\)"),
    ("positions", torch.tensor([0, 1], dtype=torch.int64), "positions: expected shape"),
    ("cos_sin", torch.ones(16, 64).double(), "cos_sin: dtype"),
])
def test_rejects_bad_input(kernel, field, value, match):
    args = {"q": torch.randn(3, 2, 64), "k": torch.randn(3, 1, 64), "positions": torch.tensor([0, 1, 2]),
            "cos_sin": RotaryEmbedding(64, 16, 10000.0).cos_sin, field: value}
    with pytest.raises(ValueError, match=match):
        kernel(**args)


@pytest.mark.parametrize("backend,dtype,uses_kernel", [("cpu", "float32", True), ("torch", "float32", False),
                                                      ("cpu", "float16", False)])
def test_cpu_backend_models_use_it(tiny_model_dir, make_engine, backend, dtype, uses_kernel):
    """On the cpu backend the model's rotary runs the kernel, except in dtypes it does not take (fp16 keeps torch)."""
    eng = make_engine(tiny_model_dir, attention_backend=backend, dtype=dtype)
    ropes = [m for m in eng.loop.runner.model.modules() if isinstance(m, RotaryEmbedding)]
    assert ropes and all(isinstance(m.kernel, CpuRotary) == uses_kernel for m in ropes)
    out = eng.generate(input_ids=[5, 6, 7, 8], sampling_params={"max_new_tokens": 3, "temperature": 0})
    assert len(out["output_ids"]) == 3
