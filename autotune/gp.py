"""The one Gaussian-process fit of the autotuners (scikit-learn), shared by GP-BO and AttMAML's residual model.

Kernel: a constant times Matern(nu=2.5) plus white noise (measurements are noisy), normalize_y. The length scale
is shared by all knobs unless `ard`: with at most a dozen points in 9 dimensions, per-knob length scales are not
identifiable and cost 3-4x the fitting time.
"""
from __future__ import annotations

import warnings

import numpy as np
def fit_gp_predict(x: np.ndarray, y: np.ndarray, pool: np.ndarray, rng: np.random.Generator, restarts: int = 1,
                   ard: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """GP posterior mean and std [m] on `pool` [m, d] after fitting (x [n, d], y [n]); see the module doc."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    d = x.shape[1]
    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * Matern(np.full(d, 0.5) if ard else 0.5, (1e-2, 1e2), nu=2.5)
              + WhiteKernel(1e-2, (1e-6, 1.0)))
    gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=restarts,
                                  random_state=int(rng.integers(2**31 - 1)))
    with warnings.catch_warnings():
        # Few points in 9 dimensions push length scales to their bounds; that is expected, not an error.
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x, y)
    return gp.predict(pool, return_std=True)
