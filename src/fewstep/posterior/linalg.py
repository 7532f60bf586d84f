"""The linear algebra of the posterior steps on a linear measurement ``y = A x + n``, defined once.

- :func:`gram_solve`: ``u = (c A A^T + s^2 I)^{-1} r`` for a residual ``r`` in observation space. A :class:`Mask`
  (``A A^T`` the mask itself) and a :class:`Linear` matrix (an ``m x m`` system, solved with its pseudo-inverse)
  are exact; an :class:`Operator` given only by ``forward``/``adjoint`` is solved by conjugate gradients
  (Hestenes & Stiefel 1952) to a relative residual ``tol``. A non-linear measurement has no ``A A^T``: TypeError.
- :func:`gaussian_step`: ``A^T (c A A^T + s^2 I)^{-1} (y - A x0)``, the vector whose product with the posterior
  covariance ``c I`` of ``x0 | x_t`` is a Kalman update of ``x0`` (PiGDM; the Gaussian likelihood score).
- :func:`pseudo_inverse`: ``A^+ r = A^T (A A^T)^{-1} r`` (the minimum-norm solution of ``A d = r``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .measurement import Linear, Mask, Measurement, Nonlinear, Operator

#: Conjugate-gradient iterations and relative tolerance for an :class:`Operator`'s system.
CG_ITERS = 100
CG_TOL = 1e-10


def require_linear(name: str, measurement: object) -> Measurement:
    """``measurement`` itself when it is a linear one (Linear, Mask, Operator); TypeError naming ``name`` else."""
    if isinstance(measurement, Nonlinear) or not isinstance(measurement, Linear | Mask | Operator):
        got = type(measurement).__name__
        raise TypeError(
            f"{name}: needs a linear measurement (Linear, Mask or Operator), got {got}; for a non-linear one use "
            "DPS, which only differentiates the forward map"
        )
    return measurement


def gram_solve(measurement: Measurement, r: Tensor, c: float, s2: float) -> Tensor:
    """``(c A A^T + s2 I)^{-1} r`` per sample (module docstring); ``r`` has the observation's shape."""
    if isinstance(measurement, Mask):
        m = measurement.mask.to(r)
        return m * r / (c + s2) if c + s2 > 0 else torch.zeros_like(r)
    if isinstance(measurement, Linear):
        a = measurement.A.to(r)
        gram = c * (a @ a.T) + s2 * torch.eye(a.shape[0], dtype=r.dtype, device=r.device)
        return r @ torch.linalg.pinv(gram, hermitian=True)
    require_linear("measurement", measurement)
    return _conjugate_gradients(lambda u: c * measurement.forward(measurement.adjoint(u)) + s2 * u, r)


def _conjugate_gradients(apply: object, r: Tensor) -> Tensor:
    """Solve ``M u = r`` per sample for a symmetric positive semi-definite ``M`` given as ``apply``."""
    assert callable(apply)
    u = torch.zeros_like(r)
    res, direction = r.clone(), r.clone()
    rr = res.flatten(1).square().sum(1)
    stop = CG_TOL**2 * rr.clamp_min(torch.finfo(r.dtype).tiny)
    for _ in range(CG_ITERS):
        if bool((rr <= stop).all()):
            break
        md = apply(direction)
        curv = (direction * md).flatten(1).sum(1)
        step = torch.where(curv > 0, rr / curv.clamp_min(torch.finfo(r.dtype).tiny), torch.zeros_like(rr))
        shape = (-1, *([1] * (r.ndim - 1)))
        u = u + step.view(shape) * direction
        res = res - step.view(shape) * md
        rr_new = res.flatten(1).square().sum(1)
        direction = res + (rr_new / rr.clamp_min(torch.finfo(r.dtype).tiny)).view(shape) * direction
        rr = rr_new
    return u


def gaussian_step(measurement: Measurement, x0: Tensor, c: float) -> Tensor:
    """``A^T (c A A^T + s^2 I)^{-1} (y - A x0)`` in the state's shape (``s`` the measurement's noise_std)."""
    r = measurement.residual(x0)
    u = gram_solve(measurement, r, c, measurement.noise_std**2)
    return measurement.adjoint(u).reshape(x0.shape)


def pseudo_inverse(measurement: Measurement, r: Tensor, like: Tensor) -> Tensor:
    """``A^+ r = A^T (A A^T)^{-1} r`` in the shape of ``like`` (the state)."""
    return measurement.adjoint(gram_solve(measurement, r, 1.0, 0.0)).reshape(like.shape)
