"""Reference solutions of the probability-flow ODE of an exact target, to near machine precision.

The PF-ODE of ``x_t = alpha x0 + sigma eps`` is ``dx/dt = alpha' x0_hat(x) + sigma' eps_hat(x)``; its
trajectories depend only on the path of (alpha, sigma) up to scale. With the angle
``phi = atan2(sigma, alpha)`` and the rescaled state ``y = x / sqrt(alpha^2 + sigma^2)``, so that
``y = cos(phi) x0 + sin(phi) eps`` marginally,

    dy/dphi = -sin(phi) x0_hat(y; cos phi, sin phi) + cos(phi) eps_hat(y; cos phi, sin phi),

which is regular on the whole of [0, pi/2] (pure noise, alpha = 0, included). Integrating phi from its
start down to 0 gives the clean sample ``y(0)``; stopping at an intermediate angle gives the state there.
Each sample may start (and end) at its own angle: with ``phi = phi_end + u (phi_start - phi_end)`` all
samples are integrated together over ``u`` from 1 to 0 in one DOP853 solve.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from ...schedules import NoiseSchedule


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
    alpha_end: float | Tensor = 1.0,
    sigma_end: float | Tensor = 0.0,
    rtol: float = 1e-11,
    atol: float = 1e-11,
) -> Tensor:
    """The exact PF-ODE image of the state ``x`` at noise level (alpha, sigma), at (alpha_end, sigma_end).

    By default the end is the clean data (alpha = 1, sigma = 0). ``x`` has shape (B, ...); the levels are
    numbers or hold one value per sample, with ``sigma_end / alpha_end <= sigma / alpha`` (the ODE runs
    towards the data). Returns a float64 tensor shaped like ``x`` on ``x``'s device. Integrated with
    scipy's DOP853 at ``rtol``/``atol`` in the angle variable (module docstring).
    """
    x = torch.as_tensor(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x: need a batch of shape (B, ...) with B >= 1, got {tuple(x.shape)}")
    b = x.shape[0]
    a, s = _per_sample(alpha, "alpha", b), _per_sample(sigma, "sigma", b)
    a1, s1 = _per_sample(alpha_end, "alpha_end", b), _per_sample(sigma_end, "sigma_end", b)
    if bool(torch.any((a == 0) & (s == 0))):
        raise ValueError("alpha, sigma: not both 0")
    if bool(torch.any((a1 == 0) & (s1 == 0))):
        raise ValueError("alpha_end, sigma_end: not both 0")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol, atol: must be > 0, got {rtol}, {atol}")
    phi0, phi1 = torch.atan2(s, a), torch.atan2(s1, a1)  # (B, 1)
    if bool(torch.any(phi1 > phi0)):
        raise ValueError("alpha_end, sigma_end: the end must be at least as clean as the start (sigma/alpha lower)")
    span = phi0 - phi1
    y0 = x.detach().to(device="cpu", dtype=torch.float64).reshape(b, -1) / torch.hypot(a, s)

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        phi = phi1 + u * span
        c, sn = torch.cos(phi), torch.sin(phi)
        x0, eps = target.denoise(torch.from_numpy(y).view(b, -1), c, sn)
        return (span * (c * eps - sn * x0)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (1.0, 0.0), y0.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference_solution: solve_ivp failed: {sol.message}")
    out = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(b, -1) * torch.hypot(a1, s1)
    return out.reshape(x.shape).to(x.device)


def reference_solution_from_time(
    target: ExactTarget,
    x: Tensor,
    schedule: NoiseSchedule,
    t: float | Tensor,
    t_end: float | Tensor | None = None,
    *,
    rtol: float = 1e-11,
    atol: float = 1e-11,
) -> Tensor:
    """:func:`reference_solution` from the state ``x`` at schedule time ``t`` (a number or one per sample).

    Ends at the clean data (alpha = 1, sigma = 0) or, given ``t_end``, at the state at time ``t_end``
    (scaled by alpha(t_end), sigma(t_end) of the schedule).
    """
    a1, s1 = (1.0, 0.0) if t_end is None else (schedule.alpha(t_end), schedule.sigma(t_end))
    return reference_solution(
        target, x, schedule.alpha(t), schedule.sigma(t), alpha_end=a1, sigma_end=s1, rtol=rtol, atol=atol
    )
