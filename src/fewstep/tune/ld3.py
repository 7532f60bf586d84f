"""LD3-style learning (Tong et al. 2025, "Learning to Discretize Denoising Diffusion ODEs"): Adam (Kingma & Ba
2015) on the logits of :class:`~fewstep.tune.params.LogSNRIncrements`, minimising the log of the final RMSE
against the teacher.

The node table turns times into Python-float coefficients before a run (:mod:`fewstep.nodes`), so the run has no
derivative with respect to its times; the gradient is the simultaneous-perturbation estimate (SPSA, Spall 1992)

    g = (L(z + c delta) - L(z - c delta)) / (2 c) * delta,    delta_i = +-1 at random,

two solver runs (``2 nfe`` network calls) per step, whatever the number of times. The loss of the mean of the two
trial points is kept too, and the best point seen is returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .budget import BudgetExhausted


def adam_spsa(
    f: Callable[[np.ndarray], float],
    start: np.ndarray,
    seed: int,
    lr: float = 0.1,
    perturbation: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    max_steps: int = 10_000,
) -> tuple[np.ndarray, float]:
    """The lowest point of ``f`` seen by Adam with SPSA gradients of ``log f`` from ``start`` (module docstring), and
    its value; stops after ``max_steps`` or when ``f`` raises :class:`BudgetExhausted`."""
    rng = np.random.default_rng(seed)
    z = np.asarray(start, dtype=np.float64).copy()
    m, v = np.zeros_like(z), np.zeros_like(z)
    best: tuple[np.ndarray, float] = (z.copy(), math.inf)

    def log_loss(x: np.ndarray) -> float:
        nonlocal best
        value = f(x)
        if value < best[1]:
            best = (x.copy(), value)
        return math.log(max(value, 1e-300)) if math.isfinite(value) else 50.0

    try:
        log_loss(z)
        for step in range(1, max_steps + 1):
            delta = rng.choice([-1.0, 1.0], size=z.size)
            c = perturbation / step**0.101  # SPSA's slowly shrinking perturbation
            diff = log_loss(z + c * delta) - log_loss(z - c * delta)
            grad = diff / (2.0 * c) * delta
            m = betas[0] * m + (1 - betas[0]) * grad  # Adam's moment estimates
            v = betas[1] * v + (1 - betas[1]) * grad**2
            m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
            z = z - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    except BudgetExhausted:
        pass
    return best
