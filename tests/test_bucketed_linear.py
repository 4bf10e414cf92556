"""BucketedLinear / pad_rows: padded CPU matmuls return exactly the rows of the unpadded ones."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.models.layers import BucketedLinear, GatedMLP, bucketed_rows, pad_rows


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


@pytest.mark.parametrize("n", [3, 21])
def test_gated_mlp_pads_once_and_slices_back(n):
    torch.manual_seed(0)
    mlp = GatedMLP(16, 24)
    x = torch.randn(n, 16)
    gate, up = torch.nn.functional.linear(x, mlp.gate_up_proj.weight).split(24, dim=-1)
    ref = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, mlp.down_proj.weight)
    torch.testing.assert_close(mlp(x), ref, rtol=1e-6, atol=1e-6)
