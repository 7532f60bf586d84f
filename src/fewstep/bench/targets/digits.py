"""The 8 x 8 digits of scikit-learn as an exact target: the empirical data set smoothed by a narrow Gaussian."""

from __future__ import annotations

import numpy as np

from .mixture import GaussianMixture

SCALES = ("[-1,1]", "[0,1]")


def digits_target(std: float = 0.05, scale: str = "[-1,1]") -> GaussianMixture:
    """``x0 ~ (1/N) sum_n N(d_n, std^2 I)`` over the N = 1,797 images ``d_n`` of ``sklearn.datasets.load_digits``.

    Pixels (0..16) are mapped to [-1, 1] (``x / 8 - 1``) or to [0, 1] (``x / 16``); D = 64 and
    ``image_shape = (8, 8)``. As ``std -> 0`` the exact denoiser is that of the empirical data set, whose
    probability-flow ODE reproduces training images. The data ship with scikit-learn (no download).
    """
    if not (isinstance(std, int | float) and std > 0):
        raise ValueError(f"std: must be a positive number, got {std!r}")
    if scale not in SCALES:
        raise ValueError(f"scale: choose one of {', '.join(SCALES)}, got {scale!r}")
    from sklearn.datasets import load_digits

    pixels = np.asarray(load_digits().data, dtype=np.float64)
    data = pixels / 8.0 - 1.0 if scale == "[-1,1]" else pixels / 16.0
    return GaussianMixture(data, float(std), image_shape=(8, 8))
