"""The phi-functions of exponential integrators, shared by every DPM-Solver-family solver.

``phi_0(z) = e^z``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``, so ``phi_1(z) = (e^z - 1)/z``,
``phi_2(z) = (e^z - 1 - z)/z^2``, ``phi_3(z) = (e^z - 1 - z - z^2/2)/z^3``. Near z = 0 the Taylor series
``phi_k(z) = sum_j z^j / (j + k)!`` avoids the cancellation of the recursion. The exact solution of the
semi-linear diffusion ODE in lambda (DPM-Solver, eq. 3.4; DPM-Solver++, eq. 9) is

    noise prediction:  x_t = (alpha_t/alpha_s) x_s - sigma_t sum_k h^{k+1} phi_{k+1}(h)  eps^{(k)}(lambda_s)
    data prediction:   x_t = (sigma_t/sigma_s) x_s + alpha_t sum_k h^{k+1} phi_{k+1}(-h) x0^{(k)}(lambda_s)

with ``h = lambda_t - lambda_s`` and ``f^{(k)}`` the k-th lambda-derivative (truncated at the solver's order).
"""

from __future__ import annotations

import math

import numpy as np


def phi(k: int, z: float | np.ndarray) -> np.ndarray:
    """``phi_k(z)`` in float64, accurate to rounding for all finite z (k >= 0)."""
    z = np.asarray(z, dtype=np.float64)
    if k == 0:
        return np.exp(z)
    small = np.abs(z) < 0.5
    zs = np.where(small, z, 0.0)
    series = sum(zs**j / math.factorial(j + k) for j in range(24))
    zb = np.where(small, 1.0, z)
    direct = np.expm1(zb) / zb
    for j in range(2, k + 1):
        direct = (direct - 1.0 / math.factorial(j - 1)) / zb
    return np.where(small, series, direct)


def hphi(k: int, h: float) -> float:
    """``h^k phi_k(-h)``, the weight of the (k-1)-th derivative term of the data-prediction integrator.

    Finite for ``h = inf`` when k = 1 (the step to sigma = 0): ``h phi_1(-h) = -expm1(-h) -> 1``.
    """
    if math.isinf(h):
        if k == 1:
            return 1.0
        raise ValueError("hphi: higher-order weights are infinite for an infinite step")
    h = float(h)
    return h**k * _phi_scalar(k, -h)


def _phi_scalar(k: int, z: float) -> float:
    """:func:`phi` for one Python float, with the same arithmetic in ``math`` (no numpy per-call overhead)."""
    if k == 0:
        return math.exp(z)
    if abs(z) < 0.5:
        return sum(z**j / math.factorial(j + k) for j in range(24))
    direct = math.expm1(z) / z
    for j in range(2, k + 1):
        direct = (direct - 1.0 / math.factorial(j - 1)) / z
    return direct
