"""Batched sampler: greedy, filters, the sampled distribution, seeded determinism across batches, dtypes.

Distribution tests draw many samples in one vectorized call: the same logits row repeated N times with output
positions 0..N-1, so every row gets independent noise from one request seed. Seeds are fixed, so these tests
are deterministic.
"""
import math

import pytest
import torch

from engine.sampling import TOP_P_PROBE_WIDTH, SamplingBatch, _filter_top_k_top_p, noise_seed, sample
from engine.sampling_params import SamplingParams


def draw(logits_row: torch.Tensor, params: SamplingParams, n: int, seed: int = 1234) -> torch.Tensor:
    """n samples [n] from one logits row [V] under one request's params."""
    batch = SamplingBatch.build([params] * n, list(range(n)), [seed] * n)
    return sample(logits_row.unsqueeze(0).expand(n, -1), batch)


def counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return torch.bincount(ids, minlength=vocab_size).double()


def chi_square(observed: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.double() * observed.sum()
    return float(((observed - expected) ** 2 / expected).sum())


def log_probs(p: list[float]) -> torch.Tensor:
    return torch.tensor(p).log()


def test_all_greedy_is_argmax():
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0.0)] * 3 + [SamplingParams(temperature=0.9, top_k=1)] * 3
    batch = SamplingBatch.build(params, [0] * 6, list(range(6)))
    assert batch.all_greedy
    out = sample(logits, batch)
    assert out.dtype == torch.int64 and out.shape == (6,)
    assert torch.equal(out, logits.argmax(dim=-1))


def test_top_k_never_leaves_the_top_k():
    logits = torch.randn(40, generator=torch.Generator().manual_seed(1))
    top5 = set(logits.topk(5).indices.tolist())
    seen = set(draw(logits, SamplingParams(top_k=5, temperature=1.5), 3000).tolist())
    assert seen == top5  # inside the top 5, and all of them reachable


def test_tiny_top_p_keeps_only_the_top_token():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(2)) * 0.1  # nearly flat
    ids = draw(logits, SamplingParams(top_p=1e-4), 500)
    assert set(ids.tolist()) == {int(logits.argmax())}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # Sorted mass 0.4, 0.3, 0.2, 0.1: reaching 0.5 needs the first two tokens.
    logits = log_probs([0.1, 0.4, 0.2, 0.3])
    ids = draw(logits, SamplingParams(top_p=0.5), 4000)
    observed = counts(ids, 4)
    assert observed[0] == 0 and observed[2] == 0
    assert chi_square(observed[[1, 3]], torch.tensor([4 / 7, 3 / 7])) < 15.0


def test_top_p_applies_to_the_mass_top_k_left():
    # Top-2 renormalizes 0.3, 0.25 to 0.545, 0.455; top_p 0.5 then keeps only the first. Against the raw
    # distribution (0.3 < 0.5) it would have kept both.
    logits = log_probs([0.25, 0.3, 0.2, 0.25])
    ids = draw(logits, SamplingParams(top_k=2, top_p=0.5), 500)
    assert set(ids.tolist()) == {1}


def test_min_p_drops_tokens_below_a_fraction_of_the_max():
    logits = log_probs([0.05, 0.5, 0.15, 0.3])
    ids = draw(logits, SamplingParams(min_p=0.2), 4000)  # threshold 0.1
    observed = counts(ids, 4)
    assert observed[0] == 0
    assert chi_square(observed[1:], torch.tensor([0.5, 0.15, 0.3]) / 0.95) < 15.0


def test_temperature_samples_the_tempered_softmax():
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, -1.5])
    observed = counts(draw(logits, SamplingParams(temperature=0.7), 20000), 6)
    # 5 degrees of freedom: P(chi2 > 30) ~ 1.5e-5, and the seed is fixed.
    assert chi_square(observed, torch.softmax(logits / 0.7, dim=0)) < 30.0
    assert chi_square(observed, torch.softmax(logits, dim=0)) > 100.0  # the temperature mattered


def test_filters_match_a_per_row_reference_on_wide_vocabularies():
    # V above the top-p probe width, so peaked rows take the probe and flat rows the full-sort fallback.
    vocab_size = 3 * TOP_P_PROBE_WIDTH
    gen = torch.Generator().manual_seed(3)
    scales = [0.5, 8.0, 0.5, 8.0, 1.0, 0.5, 8.0, 1.0]
    probs = torch.softmax(torch.randn(8, vocab_size, generator=gen) * torch.tensor(scales).unsqueeze(1), dim=-1)
    top_ks = torch.tensor([-1, -1, 700, 20, -1, 5, -1, 2000])
    top_ps = torch.tensor([0.9, 0.95, 0.8, 0.6, 1.0, 1.0, 0.3, 0.99])
    got = _filter_top_k_top_p(probs, top_ks, top_ps, max_top_k=None, any_top_p=True)
    for row in range(8):
        expected = reference_filter(probs[row], int(top_ks[row]), float(top_ps[row]))
        assert torch.equal(got[row] > 0, expected > 0), row
        assert torch.allclose(got[row], expected), row
    assert int((got[0] > 0).sum()) > TOP_P_PROBE_WIDTH  # a flat row really needed the fallback


def reference_filter(probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """One row, the obvious way: sort, cut to k, renormalize, keep the prefix whose preceding mass < top_p."""
    order = probs.argsort(descending=True).tolist()
    kept = order if top_k < 0 else order[:top_k]
    kept_mass = sum(float(probs[i]) for i in kept)
    out = torch.zeros_like(probs)
    before = 0.0
    for i in kept:
        if top_p < 1.0 and before >= top_p * kept_mass:
            break
        out[i] = probs[i]
        before += float(probs[i])
    return out


def test_seeded_rows_do_not_depend_on_batch_composition_or_order():
    gen = torch.Generator().manual_seed(4)
    rows = {name: torch.randn(1000, generator=gen) for name in "abcd"}
    requests = {  # name -> (params, output position, seed)
        "a": (SamplingParams(temperature=1.0, seed=7), 3, 7),
        "b": (SamplingParams(top_p=0.8, seed=9), 0, 9),
        "c": (SamplingParams(temperature=0.0), 5, 1),
        "d": (SamplingParams(top_k=50, min_p=0.05), 12, 42),
    }

    def run(names: str) -> dict[str, int]:
        batch = SamplingBatch.build([requests[n][0] for n in names], [requests[n][1] for n in names],
                                    [requests[n][2] for n in names])
        out = sample(torch.stack([rows[n] for n in names]), batch)
        return dict(zip(names, out.tolist()))

    alone = {n: run(n)[n] for n in "abcd"}
    assert run("abcd") == alone
    assert run("dcba") == alone
    assert run("bd") == {n: alone[n] for n in "bd"}
    assert alone["c"] == int(rows["c"].argmax())


def test_noise_changes_with_position_and_seed():
    logits = torch.zeros(1000)  # uniform: the token is decided by the noise alone
    by_position = draw(logits, SamplingParams(), 20, seed=5)
    assert len(set(by_position.tolist())) > 10
    assert not torch.equal(by_position, draw(logits, SamplingParams(), 20, seed=6))
    assert torch.equal(by_position, draw(logits, SamplingParams(), 20, seed=5))
    assert noise_seed(5, 0) != noise_seed(5, 1) != noise_seed(6, 0)


def test_mixed_greedy_and_sampled_rows():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(4, 500, generator=gen)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=5.0), SamplingParams(top_k=1),
              SamplingParams(temperature=5.0)]
    batch = SamplingBatch.build(params, [0, 0, 0, 0], [1, 2, 3, 2])
    assert batch.any_greedy and not batch.all_greedy and batch.sampled_rows.tolist() == [1, 3]
    out = sample(logits, batch)
    argmax = logits.argmax(dim=-1)
    assert out[0] == argmax[0] and out[2] == argmax[2]
    alone = [sample(logits[[i]], SamplingBatch.build([params[i]], [0], [s]))
             for i, s in ((1, 2), (3, 2))]
    assert [out[1], out[3]] == [alone[0][0], alone[1][0]]
    assert out[1] != argmax[1] or out[3] != argmax[3]  # at temperature 5 over 500 tokens, argmax is rare


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits(dtype):
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(5, 400, generator=gen).to(dtype)
    params = [SamplingParams(temperature=0.0), SamplingParams(top_p=0.9), SamplingParams(top_k=10),
              SamplingParams(min_p=0.1), SamplingParams(temperature=0.8)]
    batch = SamplingBatch.build(params, [1, 2, 3, 4, 5], [9, 9, 9, 9, 9])
    out = sample(logits, batch)
    assert out.dtype == torch.int64 and out.shape == (5,)
    assert out[0] == logits[0].float().argmax()
    assert torch.equal(out, sample(logits.float(), batch))


def test_extreme_logits_stay_finite():
    logits = torch.full((2, 100), -math.inf)
    logits[:, 17] = 3.0
    logits[1, 50] = 2.0
    out = sample(logits, SamplingBatch.build([SamplingParams(temperature=1e-3)] * 2, [0, 0], [1, 2]))
    assert out.tolist() == [17, 17]
