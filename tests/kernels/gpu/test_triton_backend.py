"""TritonAttentionBackend through one extend step and one decode step, two layers, on a poisoned paged pool.

Runs under the interpreter (conftest.py); ForwardBatch and the KV pool are stand-ins with the fields and
methods the backend contract names (engine/attention/base.py).
"""
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from engine.attention.triton_backend import TritonAttentionBackend
from engine.kernels.gpu.decode_attention import decode_attention_reference
from engine.kernels.gpu.extend_attention import extend_attention_reference
from engine.forward_mode import ForwardMode

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, NUM_LAYERS = 4, 1, 64, 2


class FakeKVPool:
    def __init__(self, k_buf: torch.Tensor, v_buf: torch.Tensor):
        self.k = [k_buf.clone() for _ in range(NUM_LAYERS)]
        self.v = [v_buf.clone() for _ in range(NUM_LAYERS)]

    def get_kv(self, layer_id):
        return self.k[layer_id], self.v[layer_id]

    def set_kv(self, layer_id, loc, k, v):
        self.k[layer_id][loc] = k
        self.v[layer_id][loc] = v


@dataclass
class FakeForwardBatch:
    mode: ForwardMode
    batch_size: int
    req_pool_indices: torch.Tensor
    seq_lens: torch.Tensor
    prefix_lens: torch.Tensor
    extend_lens: torch.Tensor
    extend_start_loc: torch.Tensor
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    req_to_token: torch.Tensor
    kv_pool: Any
    sm_scale: float
    seq_lens_list: list
    prefix_lens_list: list
    extend_lens_list: list


def _batch(mode, pool, kv_pool, prefix_lens, extend_lens):
    rows = pool.req_pool_indices
    positions = torch.cat([torch.arange(p, p + e) for p, e in zip(prefix_lens, extend_lens)])
    owner = torch.repeat_interleave(rows, torch.tensor(extend_lens))
    extend_lens_t = torch.tensor(extend_lens)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    return FakeForwardBatch(
        mode=mode, batch_size=len(extend_lens), req_pool_indices=rows, seq_lens=torch.tensor(seq_lens),
        prefix_lens=torch.tensor(prefix_lens), extend_lens=extend_lens_t,
        extend_start_loc=torch.cumsum(extend_lens_t, 0) - extend_lens_t, positions=positions,
        out_cache_loc=pool.req_to_token[owner, positions].long(), req_to_token=pool.req_to_token, kv_pool=kv_pool,
        sm_scale=HEAD_DIM ** -0.5, seq_lens_list=seq_lens, prefix_lens_list=list(prefix_lens),
        extend_lens_list=list(extend_lens))


def _step(backend, fb, gen, rel_err):
    """Run all layers with q/k/v as views of a fused qkv; check each layer's output and pool writes."""
    backend.init_forward(fb)
    num_tokens = fb.positions.shape[0]
    for layer in range(NUM_LAYERS):
        q_width, kv_width = NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM
        qkv = torch.randn(num_tokens, q_width + 2 * kv_width, generator=gen)
        q = qkv[:, :q_width].view(num_tokens, NUM_HEADS, HEAD_DIM)
        k = qkv[:, q_width:q_width + kv_width].view(num_tokens, NUM_KV_HEADS, HEAD_DIM)
        v = qkv[:, q_width + kv_width:].view(num_tokens, NUM_KV_HEADS, HEAD_DIM)
        out = backend.forward(q, k, v, layer, fb)

        k_buf, v_buf = fb.kv_pool.get_kv(layer)
        assert torch.equal(k_buf[fb.out_cache_loc], k) and torch.equal(v_buf[fb.out_cache_loc], v)
        if fb.mode is ForwardMode.DECODE:
            ref = decode_attention_reference(q, k_buf, v_buf, fb.req_to_token, fb.req_pool_indices, fb.seq_lens,
                                             fb.sm_scale)
        else:
            ref = extend_attention_reference(q, k_buf, v_buf, fb.req_to_token, fb.req_pool_indices,
                                             fb.prefix_lens, fb.extend_lens, fb.extend_start_loc, fb.sm_scale)
        assert out.shape == (num_tokens, NUM_HEADS * HEAD_DIM)
        assert not out.isnan().any()
        assert rel_err(out, ref.view(num_tokens, -1)) <= 1e-3


@pytest.mark.parametrize("page_size", [1, 16])
def test_extend_then_decode_matches_references(make_pool, gen, rel_err, page_size):
    prefix_lens, extend_lens = [0, 20], [7, 33]
    final_lens = [p + e + 1 for p, e in zip(prefix_lens, extend_lens)]  # room for one decode step
    pool = make_pool(final_lens, page_size, NUM_KV_HEADS, HEAD_DIM, torch.float32)
    kv_pool = FakeKVPool(pool.k_buf, pool.v_buf)
    # The new tokens' slots start poisoned: the backend must write them before attending.
    for b, (p, e) in enumerate(zip(prefix_lens, final_lens)):
        new_slots = pool.req_to_token[pool.req_pool_indices[b], p:e].long()
        for layer in range(NUM_LAYERS):
            kv_pool.k[layer][new_slots] = float("nan")
            kv_pool.v[layer][new_slots] = float("nan")

    backend = TritonAttentionBackend(NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, "cpu", min_tokens_per_split=16)
    _step(backend, _batch(ForwardMode.EXTEND, pool, kv_pool, prefix_lens, extend_lens), gen, rel_err)
    decode_prefix = [p + e for p, e in zip(prefix_lens, extend_lens)]
    decode_fb = _batch(ForwardMode.DECODE, pool, kv_pool, decode_prefix, [1, 1])
    _step(backend, decode_fb, gen, rel_err)
    assert backend._meta.num_kv_splits == 4  # cdiv(55, 16): the longest request spans several splits


def test_forward_before_init_forward_is_rejected(make_pool, gen):
    pool = make_pool([3], 1, NUM_KV_HEADS, HEAD_DIM, torch.float32)
    fb = _batch(ForwardMode.EXTEND, pool, FakeKVPool(pool.k_buf, pool.v_buf), [0], [3])
    q = torch.randn(3, NUM_HEADS, HEAD_DIM, generator=gen)
    k = torch.randn(3, NUM_KV_HEADS, HEAD_DIM, generator=gen)
    with pytest.raises(ValueError, match="init_forward"):
        TritonAttentionBackend(NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, "cpu").forward(q, k, k, 0, fb)


def test_rejects_head_counts_that_do_not_group():
    with pytest.raises(ValueError, match="num_heads"):
        TritonAttentionBackend(6, 4, HEAD_DIM, "cpu")
