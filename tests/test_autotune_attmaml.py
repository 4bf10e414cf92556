"""AttMAML on a synthetic task family, attention weights, MC dropout, and Expected Improvement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autotune.attmaml import AttMAML, AttMAMLConfig, MetaTask, task_attention
from autotune.smbo import expected_improvement

DIM = 2


@pytest.fixture(autouse=True)
def one_thread():
    # The meta-model's ops are tiny; extra intra-op threads only spin on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quadratic_task(shift: np.ndarray, n: int, rng: np.random.Generator) -> MetaTask:
    """y = 4 ||x - shift||^2 on [0, 1]^len(shift), centred; the task's features are its shift."""
    x = rng.random((n, len(shift)))
    y = 4.0 * ((x - shift) ** 2).sum(axis=1)
    return MetaTask(x, y - y.mean(), shift.copy())


def adapted_mse(model: AttMAML, support: MetaTask, query: MetaTask, steps: int) -> float:
    params = model.adapt(support.x, support.y, steps=steps)
    mean, _ = model.predict(params, query.x, mc_samples=16)
    return float(np.mean((mean - query.y) ** 2))


def test_meta_init_adapts_faster_than_scratch():
    rng = np.random.default_rng(0)
    train = [quadratic_task(rng.uniform(0.1, 0.9, 1), 10, rng) for _ in range(10)]
    cfg = AttMAMLConfig(hidden=32, dropout=0.05, meta_steps=150, inner_steps=2, seed=1)
    target_shift = np.array([0.35])
    meta = AttMAML(1, cfg)
    history = meta.meta_train(train, target_shift)
    assert np.mean(history[-10:]) < 0.5 * np.mean(history[:10])  # meta-training itself made progress
    scratch = AttMAML(1, cfg)  # same architecture and seed, never meta-trained
    errors = []
    for seed in range(3):
        points = quadratic_task(target_shift, 60, np.random.default_rng(100 + seed))
        # Centre on the support's mean: the model is told only the shape, as in SMBO.
        centre = points.y[:4].mean()
        support = MetaTask(points.x[:4], points.y[:4] - centre, target_shift)
        query = MetaTask(points.x[4:], points.y[4:] - centre, target_shift)
        errors.append((adapted_mse(meta, support, query, 3), adapted_mse(scratch, support, query, 3)))
    meta_err, scratch_err = np.mean(errors, axis=0)
    assert meta_err < 0.4 * scratch_err, (meta_err, scratch_err)


def test_attention_prefers_the_most_similar_task():
    feats = np.array([[0.1, 0.1], [0.9, 0.2], [0.5, 0.9], [0.2, 0.8]])
    w = task_attention(np.array([0.88, 0.22]), feats, temperature=0.25)
    assert w.shape == (4,) and abs(w.sum() - 1.0) < 1e-9 and int(np.argmax(w)) == 1
    flat = task_attention(np.array([0.88, 0.22]), feats, temperature=100.0)
    assert np.ptp(flat) < np.ptp(w)  # a higher temperature spreads the weights


def test_attention_weights_steer_meta_training():
    rng = np.random.default_rng(3)
    near = [quadratic_task(np.array([0.2, 0.2]), 16, rng) for _ in range(3)]
    far = [quadratic_task(np.array([0.8, 0.8]) + 0.01 * i, 16, rng) for i in range(3)]
    model = AttMAML(DIM, AttMAMLConfig(meta_steps=5, seed=0))
    model.meta_train(near + far, np.array([0.21, 0.2]))
    assert model.weights[:3].sum() > 0.9
    model.meta_train(near + far, None)
    assert np.allclose(model.weights, 1 / 6)


def test_mc_dropout_gives_spread_and_repeats_with_seed():
    rng = np.random.default_rng(0)
    x = rng.random((10, DIM))
    a, b = AttMAML(DIM, AttMAMLConfig(dropout=0.2, seed=5)), AttMAML(DIM, AttMAMLConfig(dropout=0.2, seed=5))
    ma, sa = a.predict(a.params, x)
    mb, sb = b.predict(b.params, x)
    assert np.allclose(ma, mb) and np.allclose(sa, sb)
    assert (sa > 0).all()
    no_dropout = AttMAML(DIM, AttMAMLConfig(dropout=0.0, seed=5))
    _, s0 = no_dropout.predict(no_dropout.params, x)
    assert np.allclose(s0, 0.0)


def test_adapt_leaves_the_meta_init_alone():
    rng = np.random.default_rng(1)
    model = AttMAML(DIM, AttMAMLConfig(seed=2))
    before = [p.clone() for p in model.params]
    task = quadratic_task(np.array([0.5, 0.5]), 8, rng)
    adapted = model.adapt(task.x, task.y)
    assert all(torch.equal(p, q) for p, q in zip(before, model.params))
    assert any(not torch.equal(p, q) for p, q in zip(adapted, model.params))


def test_expected_improvement_zero_std_is_plain_improvement():
    mean = np.array([0.5, 1.0, 1.5, 2.0])
    ei = expected_improvement(mean, np.zeros(4), best=1.2)
    assert np.allclose(ei, np.maximum(1.2 - mean, 0.0))


def test_expected_improvement_monotone_in_mean_and_std():
    mean = np.linspace(-1.0, 3.0, 41)
    ei = expected_improvement(mean, np.full(41, 0.3), best=1.0)
    assert (np.diff(ei) < 0).all()  # lower predicted loss, more expected improvement
    stds = np.linspace(0.01, 2.0, 30)
    for m in (0.5, 1.0, 1.5):  # below, at and above the incumbent
        ei_s = expected_improvement(np.full(30, m), stds, best=1.0)
        assert (np.diff(ei_s) > 0).all()
    # Against a direct numerical expectation on a known 1-D case.
    rng = np.random.default_rng(0)
    draws = 0.8 + 0.5 * rng.standard_normal(400_000)
    mc = np.maximum(1.0 - draws, 0.0).mean()
    assert abs(expected_improvement(np.array([0.8]), np.array([0.5]), 1.0)[0] - mc) < 3e-3
