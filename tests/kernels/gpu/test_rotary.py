"""apply_rotary / build_cos_sin_cache vs the torch reference and HF's Llama RoPE (interpreter, see conftest.py)."""
import pytest
import torch

from engine.kernels.gpu.rotary import apply_rotary, apply_rotary_reference, build_cos_sin_cache

# Kernel and reference both compute in fp32 and round once: at most one ulp of the output dtype apart.
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=1e-3, atol=1e-5),
             torch.bfloat16: dict(rtol=8e-3, atol=1e-5)}


@pytest.mark.parametrize("num_tokens,num_heads,num_kv_heads,head_dim,rotary_dim,dtype", [
    (7, 4, 1, 64, 64, torch.float32),
    (33, 7, 1, 128, 128, torch.float16),
    (5, 2, 2, 64, 32, torch.float32),  # partial rotary: the tail of each head is left alone
    (9, 8, 2, 128, 128, torch.bfloat16),
])
def test_matches_reference_in_place_on_qkv_views(gen, num_tokens, num_heads, num_kv_heads, head_dim, rotary_dim,
                                                 dtype):
    # q and k as strided views into one fused qkv projection output, as a model produces them.
    q_width, kv_width = num_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(num_tokens, q_width + 2 * kv_width, generator=gen).to(dtype)
    q = qkv[:, :q_width].view(num_tokens, num_heads, head_dim)
    k = qkv[:, q_width:q_width + kv_width].view(num_tokens, num_kv_heads, head_dim)
    v_before = qkv[:, q_width + kv_width:].clone()
    positions = torch.randint(0, 300, (num_tokens,), generator=gen)  # unordered, possibly repeated
    cache = build_cos_sin_cache(rotary_dim, 300, 10000.0)
    ref_q, ref_k = apply_rotary_reference(q, k, positions, cache)

    out_q, out_k = apply_rotary(q, k, positions, cache)
    assert out_q is q and out_k is k
    torch.testing.assert_close(q, ref_q, **TOLERANCE[dtype])
    torch.testing.assert_close(k, ref_k, **TOLERANCE[dtype])
    assert torch.equal(qkv[:, q_width + kv_width:], v_before)


def test_cache_and_rotation_match_hf_llama(gen):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    head_dim, num_heads, theta = 64, 3, 100000.0
    config = LlamaConfig(hidden_size=head_dim * num_heads, num_attention_heads=num_heads, rope_theta=theta,
                         max_position_embeddings=256)
    hf_rope = LlamaRotaryEmbedding(config)
    positions = torch.tensor([0, 1, 5, 17, 200, 255])
    x = torch.randn(len(positions), num_heads, head_dim, generator=gen)
    cos, sin = hf_rope(x, positions[None, :])  # [1, T, head_dim]

    cache = build_cos_sin_cache(head_dim, 256, theta)
    half = head_dim // 2
    torch.testing.assert_close(cache[positions, :half], cos[0, :, :half], rtol=0, atol=1e-6)
    torch.testing.assert_close(cache[positions, half:], sin[0, :, :half], rtol=0, atol=1e-6)

    # HF wants [batch, heads, T, head_dim]; ours is [T, heads, head_dim].
    hf_q, _ = apply_rotary_pos_emb(x.transpose(0, 1)[None], x.transpose(0, 1)[None], cos, sin)
    q = x.clone()
    apply_rotary(q, q[:, :1].clone(), positions, cache)
    torch.testing.assert_close(q, hf_q[0].transpose(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides,match", [
    (dict(k=torch.randn(4, 1, 32)), "k: expected shape"),
    (dict(positions=torch.zeros(4)), "positions: dtype"),
    (dict(positions=torch.zeros(3, dtype=torch.int64)), "positions: expected shape"),
    (dict(cos_sin_cache=torch.zeros(8, 64, dtype=torch.float64)), "cos_sin_cache: dtype"),
    (dict(cos_sin_cache=torch.zeros(8, 80)), "rotary_dim"),
])
def test_rejects_bad_input(overrides, match):
    args = dict(q=torch.randn(4, 2, 64), k=torch.randn(4, 1, 64), positions=torch.zeros(4, dtype=torch.int64),
                cos_sin_cache=torch.zeros(8, 64))
    with pytest.raises(ValueError, match=match):
        apply_rotary(**{**args, **overrides})


@pytest.mark.parametrize("kwargs,match", [
    (dict(head_dim=63, max_pos=8, theta=1e4), "head_dim"),
    (dict(head_dim=64, max_pos=0, theta=1e4), "max_pos"),
    (dict(head_dim=64, max_pos=8, theta=0.0), "theta"),
])
def test_cache_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_cos_sin_cache(**kwargs)
