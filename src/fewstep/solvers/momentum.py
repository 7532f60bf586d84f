"""Momentum for the data-prediction multistep solvers (Wizadwongsa et al. 2023, "Diffusion Sampling with
Momentum for Mitigating Divergence Artifacts").

A DPM-Solver++ multistep step is ``x_t/sigma_t = x_s/sigma_s + (e^{lambda_t} - e^{lambda_s}) D``: in the
variables ``x/sigma`` and ``e^lambda`` it is an explicit step with the combined derivative
``D = sum_j w_j D_{i-j} / sum_j w_j`` (the multistep combination of the data estimates, an approximation of
their e^lambda-weighted mean over the step). With momentum, ``D`` is replaced by a velocity ``v``:

- **Polyak heavy ball** (``"hb"``): ``v_i = (1 - beta) v_{i-1} + beta D_i``. Its stability region is larger;
  for beta < 1 the method is first order (v lags the mean by O(h)).
- **Generalized heavy ball** (``"ghvb"``): ``v_i = (1 - beta) v_{i-1} + D_i - (1 - beta) M_{i-1}`` with
  ``M_{i-1}`` the e^lambda-weighted mean over the previous step of the polynomial interpolating the same
  data estimates (exact Gauss-Legendre quadrature). Then ``v_i`` approximates the mean over step i to the
  method's order, so GHVB of order k keeps order k. On equal steps and for the Adams-Bashforth combination
  these are the paper's coefficients, e.g. order 2: ``((2 + beta) f_n - (2 - beta) f_{n-1}) / 2``.

``beta = 1`` is the base solver. The first step sets ``v = D``; a step of infinite lambda-size (from alpha = 0
or to sigma = 0) is the plain first-order step and restarts the velocity.
"""

from __future__ import annotations

import numpy as np

from .frame import lagrange_basis

MOMENTUM_TYPES = ("hb", "ghvb")
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(16)


def check_momentum(momentum: float | None, momentum_type: str) -> float | None:
    if momentum_type not in MOMENTUM_TYPES:
        raise ValueError(f"momentum_type: choose 'hb' or 'ghvb', got {momentum_type!r}")
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0 < momentum <= 1:
        raise ValueError(f"momentum: the momentum parameter beta must be in (0, 1], got {momentum!r}")
    return float(momentum)


def previous_mean_weights(h: np.ndarray, i: int, order: int) -> list[float]:
    """Weights of ``D_i, D_{i-1}, ...`` in the e^lambda-weighted mean over ``[lambda_{i-1}, lambda_i]`` of the
    polynomial (degree ``order - 1``) through ``(lambda_{i-j}, D_{i-j})``, j < order."""
    if order == 1:
        return [1.0]
    # nodes relative to lambda_i: 0, -h_{i-1}, -(h_{i-1} + h_{i-2}), ...
    nodes = np.concatenate([[0.0], -np.cumsum([h[i - j] for j in range(1, order)])])
    g = h[i - 1]
    u = -g * (1 - _NODES) / 2  # quadrature points on [-g, 0]
    density = np.exp(u) * _WEIGHTS
    density /= density.sum()
    return [float(v) for v in lagrange_basis(nodes[:order], u) @ density]


def momentum_combination(
    h: np.ndarray, i: int, order: int, weights: list[float], beta: float, kind: str
) -> tuple[float, list[float], float]:
    """``(total, c, keep)``: the step is ``alpha_t total v_i`` with ``v_i = keep v_{i-1} + sum_j c_j D_{i-j}``
    (``keep`` is 0 on a restart), where ``weights`` are the base step's ``w_j`` (their sum is ``total``)."""
    total = float(sum(weights))
    mean = [w / total for w in weights]
    if kind == "hb":
        return total, [beta * w for w in mean], 1.0 - beta
    prev = previous_mean_weights(h, i, order)
    return total, [m - (1.0 - beta) * p for m, p in zip(mean, prev, strict=True)], 1.0 - beta
