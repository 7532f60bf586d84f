"""Interpolant schedules for flow models: rectified flow and a general ``Interpolant(alpha_fn, sigma_fn)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .base import NoiseSchedule, TimeLike, as64, check_range


class Flow(NoiseSchedule):
    """Rectified flow / linear interpolant: ``alpha(t) = 1 - t``, ``sigma(t) = t``; ``t_of_lambda = 1/(1+e^lambda)``.

    Sampling starts at ``t_max = 1`` (pure noise, alpha = 0) by default; ODE solvers integrate in t.
    """

    ode_variable = "t"
    default_time_input = "t"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0):
        check_range("Flow", t_min, t_max)
        if t_min <= 0 or t_max > 1:
            raise ValueError(f"t_min, t_max: need 0 < t_min < t_max <= 1 for Flow, got {t_min}, {t_max}")
        self.t_min, self.t_max = t_min, t_max

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.log1p(-as64(t))

    def log_sigma(self, t: TimeLike) -> Tensor:
        return torch.log(as64(t))

    def alpha(self, t: TimeLike) -> Tensor:
        return 1.0 - as64(t)

    def sigma(self, t: TimeLike) -> Tensor:
        return as64(t).clone()

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        return torch.sigmoid(-as64(lam))

    def dalpha(self, t: TimeLike) -> Tensor:
        return -torch.ones_like(as64(t))

    def dsigma(self, t: TimeLike) -> Tensor:
        return torch.ones_like(as64(t))


ScheduleFn = Callable[[Tensor], Tensor]


class Interpolant(NoiseSchedule):
    """A general interpolant ``x_t = alpha_fn(t) x0 + sigma_fn(t) eps`` (Albergo, Boffi & Vanden-Eijnden).

    ``alpha_fn``/``sigma_fn`` map float64 tensors to float64 tensors; their derivatives are taken from
    ``dalpha_fn``/``dsigma_fn`` when given, else by autograd. lambda must decrease strictly on
    ``[t_min, t_max]`` and ``sigma_fn(0)`` should be 0 (the clean end); ``t(lambda)`` is found by bisection
    to float64 precision.
    """

    ode_variable = "t"
    default_time_input = "t"

    def __init__(
        self,
        alpha_fn: ScheduleFn,
        sigma_fn: ScheduleFn,
        dalpha_fn: ScheduleFn | None = None,
        dsigma_fn: ScheduleFn | None = None,
        *,
        t_min: float = 1e-3,
        t_max: float = 1.0,
    ):
        if not (callable(alpha_fn) and callable(sigma_fn)):
            raise TypeError("alpha_fn, sigma_fn: must be callables mapping a float64 tensor of times to a tensor")
        check_range("Interpolant", t_min, t_max)
        self.alpha_fn, self.sigma_fn = alpha_fn, sigma_fn
        self.dalpha_fn, self.dsigma_fn = dalpha_fn, dsigma_fn
        self.t_min, self.t_max = t_min, t_max
        grid = torch.linspace(t_min, t_max, 257, dtype=torch.float64)
        # alpha(t_max) at rounding level (cos(pi/2) = 6e-17 in float64) is pure noise: read it as exactly 0, as
        # otherwise lambda(t_max) ~ -37 and a logSNR grid puts times closer to t_max than float64 can separate.
        raw = torch.as_tensor(alpha_fn(grid), dtype=torch.float64)
        self._alpha_zero_at_t_max = 0.0 < abs(float(raw[-1])) <= 1e-12 * float(raw.abs().max())
        a, s = self.alpha(grid), self.sigma(grid)
        if torch.any(s[:-1] <= 0) or torch.any(a[1:] < 0) or torch.any(a[:-1] <= 0):
            raise ValueError(
                "alpha_fn, sigma_fn: need sigma > 0 and alpha > 0 on [t_min, t_max) (alpha may be 0 at t_max)"
            )
        lam = self.lambda_(grid)
        if not torch.all(torch.diff(lam) < 0):
            raise ValueError("alpha_fn, sigma_fn: lambda = log(alpha/sigma) must decrease strictly on [t_min, t_max]")
        self.alpha_clean = float(alpha_fn(torch.zeros((), dtype=torch.float64)))

    def alpha(self, t: TimeLike) -> Tensor:
        t = as64(t)
        a = torch.as_tensor(self.alpha_fn(t), dtype=torch.float64)
        return torch.where(t >= self.t_max, 0.0, a) if self._alpha_zero_at_t_max else a

    def sigma(self, t: TimeLike) -> Tensor:
        return torch.as_tensor(self.sigma_fn(as64(t)), dtype=torch.float64)

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.log(self.alpha(t))

    def log_sigma(self, t: TimeLike) -> Tensor:
        return torch.log(self.sigma(t))

    @staticmethod
    def _derivative(fn: ScheduleFn, t: TimeLike) -> Tensor:
        t = as64(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(fn(t).sum(), t)
        return g.detach()

    def dalpha(self, t: TimeLike) -> Tensor:
        return as64(self.dalpha_fn(as64(t))) if self.dalpha_fn else self._derivative(self.alpha_fn, t)

    def dsigma(self, t: TimeLike) -> Tensor:
        return as64(self.dsigma_fn(as64(t))) if self.dsigma_fn else self._derivative(self.sigma_fn, t)

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        lam = as64(lam)
        lo = torch.full_like(lam, 0.0)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(80):  # bisection: lambda is decreasing in t
            mid = 0.5 * (lo + hi)
            go_right = self.lambda_(mid) > lam
            lo, hi = torch.where(go_right, mid, lo), torch.where(go_right, hi, mid)
        return 0.5 * (lo + hi)
