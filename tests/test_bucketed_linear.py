"""BucketedLinear / pad_rows: padded CPU matmuls return exactly the rows of the unpadded ones."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.models.layers import (MLP_CHUNK_ROWS, BucketedLinear, GatedMLP, bucketed_rows, mkldnn_packing, pad_rows,
                                  prepack_linears)


@pytest.mark.parametrize("n,expected", [(1, 1), (8, 8), (9, 16), (16, 16), (17, 32), (256, 256), (257, 320),
                                        (2048, 2048), (2049, 2304)])
def test_bucketed_rows(n, expected):
    assert bucketed_rows(n) == expected


def test_pad_rows_returns_the_input_when_no_padding_is_needed():
    x = torch.randn(16, 4)
    assert pad_rows(x) is x
    y = torch.randn(13, 4)
    p = pad_rows(y)
    assert p.shape == (16, 4) and torch.equal(p[:13], y) and not p[13:].any()


@pytest.mark.parametrize("n", [1, 5, 9, 37, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_bucketed_linear_matches_linear(n, bias):
    torch.manual_seed(n)
    plain = nn.Linear(24, 40, bias=bias)
    bucketed = BucketedLinear(24, 40, bias=bias)
    bucketed.load_state_dict(plain.state_dict())  # same parameter names: checkpoints load unchanged
    x = torch.randn(n, 24)
    out = bucketed(x)
    assert out.shape == (n, 40)
    torch.testing.assert_close(out, plain(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [3, 21, MLP_CHUNK_ROWS + 1, 3 * MLP_CHUNK_ROWS - 5])
def test_gated_mlp_pads_once_and_slices_back(n):
    """Every row equals the unpadded torch MLP's, also past MLP_CHUNK_ROWS, where the matmuls see at most that many
    rows per pass."""
    torch.manual_seed(0)
    mlp = GatedMLP(16, 24)
    seen = []
    mlp.gate_up_proj.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    x = torch.randn(n, 16)
    gate, up = torch.nn.functional.linear(x, mlp.gate_up_proj.weight).split(24, dim=-1)
    ref = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, mlp.down_proj.weight)
    torch.testing.assert_close(mlp(x), ref, rtol=1e-6, atol=1e-6)
    assert max(seen) == (bucketed_rows(n) if n <= MLP_CHUNK_ROWS else MLP_CHUNK_ROWS)
    assert len(seen) == -(-n // MLP_CHUNK_ROWS)


@pytest.mark.skipif(not mkldnn_packing(), reason="this torch build has no oneDNN prepacked linear")
@pytest.mark.parametrize("bias", [True, False])
def test_prepacked_bf16_weights_give_the_same_rows(bias):
    torch.manual_seed(1)
    plain = nn.Linear(96, 80, bias=bias).bfloat16()
    packed = BucketedLinear(96, 80, bias=bias).bfloat16()
    packed.load_state_dict(plain.state_dict())
    assert packed.prepack() and packed.packed is not None
    assert packed.weight.device.type == "meta" and packed.weight.shape == (80, 96)  # the plain copy is released
    assert not packed.prepack()  # once
    for n in (1, 7, 64, 300):
        x = torch.randn(n, 96).bfloat16()
        assert torch.equal(packed(x), plain(x))


@pytest.mark.skipif(not mkldnn_packing(torch.float32), reason="this torch build has no oneDNN prepacked linear")
@pytest.mark.parametrize("bias", [True, False])
def test_prepacked_fp32_weights_give_the_rows_within_rounding(bias):
    torch.manual_seed(2)
    plain = nn.Linear(96, 80, bias=bias)
    packed = BucketedLinear(96, 80, bias=bias)
    packed.load_state_dict(plain.state_dict())
    assert packed.prepack() and packed.packed is not None and packed.weight.device.type == "meta"
    for n in (1, 7, 64, 300):
        x = torch.randn(n, 96)
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-5)


def test_prepack_leaves_other_dtypes_and_tied_weights_alone():
    fp16 = BucketedLinear(8, 8).half()
    assert not fp16.prepack() and fp16.packed is None
    emb = nn.Embedding(50, 16).bfloat16()
    head = BucketedLinear(16, 50, bias=False).bfloat16()
    head.weight = emb.weight  # tied, as in models with tie_word_embeddings
    before = emb.weight.detach().clone()
    if prepack_linears(nn.ModuleList([emb, head])) == 1:
        x = torch.randn(3, 16).bfloat16()
        assert torch.equal(head(x), torch.nn.functional.linear(x, before))
    assert torch.equal(emb.weight, before)  # the embedding keeps its table
