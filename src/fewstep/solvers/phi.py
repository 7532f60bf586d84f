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

_SERIES_TERMS = 20  # |z| < 1/2: the truncation error is below 2^-20 / 20! ~ 4e-25
_INV_FACTORIAL = [1.0 / math.factorial(n) for n in range(_SERIES_TERMS + 8)]


def _phi_scalar(k: int, z: float) -> float:
    """``phi_k(z)`` for one float: the Taylor series near 0 (Horner), the recursion elsewhere."""
    if k == 0:
        return math.exp(z)
    if k == 1:  # expm1 is accurate to rounding everywhere: no series needed
        return math.expm1(z) / z if z != 0.0 else 1.0
    if abs(z) < 0.5:
        acc = 0.0
        for j in reversed(range(_SERIES_TERMS)):
            acc = acc * z + _INV_FACTORIAL[j + k]
        return acc
    direct = math.expm1(z) / z
    for j in range(2, k + 1):
        direct = (direct - _INV_FACTORIAL[j - 1]) / z
    return direct


def phi(k: int, z: float | np.ndarray) -> np.ndarray:
    """``phi_k(z)`` in float64, accurate to rounding for all finite z (k >= 0), elementwise."""
    z = np.asarray(z, dtype=np.float64)
    return np.vectorize(lambda v: _phi_scalar(k, float(v)), otypes=[np.float64])(z)


def hphi(k: int, h: float) -> float:
    """``h^k phi_k(-h)``, the weight of the (k-1)-th derivative term of the data-prediction integrator.

    Finite for ``h = inf`` when k = 1 (the step to sigma = 0): ``h phi_1(-h) = -expm1(-h) -> 1``.
    """
    if math.isinf(h):
        if k == 1:
            return 1.0
        raise ValueError("hphi: higher-order weights are infinite for an infinite step")
    h = float(h)
    if k == 1:  # h phi_1(-h), the same arithmetic as _phi_scalar's expm1 form, without the call
        return h * (math.expm1(-h) / -h) if h != 0.0 else 0.0
    return h**k * _phi_scalar(k, -h)
