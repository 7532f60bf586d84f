"""The mean-reverting schedule (IR-SDE, Luo et al. 2023; the setting of MRS, Li et al. 2025, "MRS: A Fast Sampler
for Mean Reverting Diffusion based on ODE and SDE Solvers") the schedule of the shifted variable.

A mean-reverting diffusion ``dx = theta_t (mu - x) dt + g_t dw`` with ``g_t^2 = 2 sigma_inf^2 theta_t`` (the
stationary law is ``N(mu, sigma_inf^2 I)``; ``mu`` is the degraded image or any condition) has the marginals

    x_t = mu + alpha_t (x0 - mu) + sigma_t eps,   alpha_t = e^{-thetabar_t},
    sigma_t = sigma_inf sqrt(1 - alpha_t^2),      thetabar_t = int_0^t theta = theta_min t + (theta_max - theta_min) t^2/2

(linear ``theta_t``), so ``y = x - mu`` follows an ordinary schedule ``y_t = alpha_t y0 + sigma_t eps``
(:class:`MeanReverting`), and its probability-flow ODE and reverse SDE are those of that schedule. The MRS solvers
(the semi-analytic solutions in data and noise prediction, MRS-ODE/SDE-n) are the exponential integrators on ``y``:
``dpmpp_2m``/``dpmpp_3m``/``unipc_bh2``, ``dpmpp_2m_sde`` and every other solver of the package, run by
:func:`fewstep.mean_reverting.sample_mean_reverting`, which starts from ``x_T = mu + sigma_T z`` and shifts the
network's input by ``mu``.
With ``sigma_inf = 1`` the schedule is :class:`~fewstep.VP` with ``beta = 2 theta``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import NoiseSchedule, TimeLike, as64, check_range


class MeanReverting(NoiseSchedule):
    """``alpha = e^{-thetabar_t}``, ``sigma = sigma_inf sqrt(1 - alpha^2)`` with a linear ``theta_t`` (module
    docstring), on ``y = x - mu``."""

    default_time_input = "t"

    def __init__(
        self,
        theta_min: float = 0.05,
        theta_max: float = 10.0,
        sigma_inf: float = 1.0,
        t_min: float = 1e-3,
        t_max: float = 1.0,
    ):
        if not (0 <= theta_min < theta_max and math.isfinite(theta_max)):
            raise ValueError(f"theta_min, theta_max: need 0 <= theta_min < theta_max, got {theta_min}, {theta_max}")
        if not (sigma_inf > 0 and math.isfinite(sigma_inf)):
            raise ValueError(f"sigma_inf: need a positive stationary standard deviation, got {sigma_inf!r}")
        check_range("MeanReverting", t_min, t_max)
        if t_min <= 0:
            raise ValueError(f"t_min: must be > 0 (sigma(0) = 0), got {t_min}")
        self.theta_min, self.theta_max, self.sigma_inf = float(theta_min), float(theta_max), float(sigma_inf)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def thetabar(self, t: TimeLike) -> Tensor:
        t = as64(t)
        return self.theta_min * t + 0.5 * (self.theta_max - self.theta_min) * t**2

    def log_alpha(self, t: TimeLike) -> Tensor:
        return -self.thetabar(t)

    def log_sigma(self, t: TimeLike) -> Tensor:
        return math.log(self.sigma_inf) + 0.5 * torch.log(-torch.expm1(-2.0 * self.thetabar(t)))

    def dalpha(self, t: TimeLike) -> Tensor:
        t = as64(t)
        return -self.alpha(t) * (self.theta_min + (self.theta_max - self.theta_min) * t)

    def dsigma(self, t: TimeLike) -> Tensor:
        # sigma^2 = sigma_inf^2 (1 - alpha^2):  sigma' = -sigma_inf^2 alpha alpha' / sigma
        return -(self.sigma_inf**2) * self.alpha(t) * self.dalpha(t) / self.sigma(t)

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        # lambda + log sigma_inf = -thetabar - log(1 - e^{-2 thetabar})/2  =>  thetabar = log(1 + e^{-2 l'})/2, then
        # the quadratic (theta_max - theta_min) t^2/2 + theta_min t = thetabar
        shifted = as64(lam) + math.log(self.sigma_inf)
        tb = 0.5 * torch.logaddexp(torch.zeros_like(shifted), -2.0 * shifted)
        a, b = 0.5 * (self.theta_max - self.theta_min), self.theta_min
        return 2.0 * tb / (torch.sqrt(b**2 + 4.0 * a * tb) + b)


__all__ = ["MeanReverting"]
