"""Reference solutions of the probability-flow ODE of an exact target, to near machine precision.

The PF-ODE of ``x_t = alpha x0 + sigma eps`` is ``dx/dt = alpha' x0_hat(x) + sigma' eps_hat(x)``; its
trajectories depend only on the path of (alpha, sigma) up to scale. With the angle
``phi = atan2(sigma, alpha)`` and the rescaled state ``y = x / sqrt(alpha^2 + sigma^2)``, so that
``y = cos(phi) x0 + sin(phi) eps`` marginally,

    dy/dphi = -sin(phi) x0_hat(y; cos phi, sin phi) + cos(phi) eps_hat(y; cos phi, sin phi),

which is regular on the whole of [0, pi/2] (pure noise, alpha = 0, included). Integrating phi from its
start down to 0 gives the clean sample ``y(0)``. Each sample may start at its own angle: with
``phi = u phi_b`` all samples are integrated together over ``u`` from 1 to 0 in one DOP853 solve.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from ..schedules import NoiseSchedule


class ExactTarget(Protocol):
    def denoise(self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor]: ...


def _per_sample(value: float | Tensor, name: str, batch: int) -> Tensor:
    v = torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1)
    if v.shape[0] not in (1, batch):
        raise ValueError(f"{name}: need a number or {batch} values (one per sample), got {v.shape[0]}")
    if not bool(torch.all(torch.isfinite(v) & (v >= 0))):
        raise ValueError(f"{name}: must be finite and >= 0")
    return v.expand(batch).reshape(batch, 1)


def reference_solution(
    target: ExactTarget,
    x: Tensor,
    alpha: float | Tensor,
    sigma: float | Tensor,
    *,
    rtol: float = 1e-11,
    atol: float = 1e-11,
) -> Tensor:
    """The exact PF-ODE image at the clean data (sigma = 0, alpha = 1) of the state ``x`` at (alpha, sigma).

    ``x`` has shape (B, ...); ``alpha``, ``sigma`` are numbers or hold one value per sample. Returns a
    float64 tensor shaped like ``x`` on ``x``'s device. Integrated with scipy's DOP853 at ``rtol``/``atol``.
    """
    x = torch.as_tensor(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x: need a batch of shape (B, ...) with B >= 1, got {tuple(x.shape)}")
    b = x.shape[0]
    a, s = _per_sample(alpha, "alpha", b), _per_sample(sigma, "sigma", b)
    if bool(torch.any((a == 0) & (s == 0))):
        raise ValueError("alpha, sigma: not both 0")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol, atol: must be > 0, got {rtol}, {atol}")
    phi0 = torch.atan2(s, a)  # (B, 1)
    y0 = x.detach().to(device="cpu", dtype=torch.float64).reshape(b, -1) / torch.hypot(a, s)

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        phi = u * phi0
        c, sn = torch.cos(phi), torch.sin(phi)
        x0, eps = target.denoise(torch.from_numpy(y).view(b, -1), c, sn)
        return (phi0 * (c * eps - sn * x0)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (1.0, 0.0), y0.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference_solution: solve_ivp failed: {sol.message}")
    out = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1]))
    return out.reshape(x.shape).to(x.device)


def reference_solution_from_time(
    target: ExactTarget,
    x: Tensor,
    schedule: NoiseSchedule,
    t: float | Tensor,
    *,
    rtol: float = 1e-11,
    atol: float = 1e-11,
) -> Tensor:
    """:func:`reference_solution` from the state ``x`` at schedule time ``t`` (a number or one per sample)."""
    return reference_solution(target, x, schedule.alpha(t), schedule.sigma(t), rtol=rtol, atol=atol)
