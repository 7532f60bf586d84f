"""The reverse-time SDE family that shares the probability-flow marginals, and Euler–Maruyama on it.

For a schedule ``x_t = alpha_t x0 + sigma_t eps`` (any :class:`~fewstep.schedules.NoiseSchedule`: VP, cosine,
discrete VP, VE, EDM, flows and interpolants) the forward process is the linear SDE ``dx = f x dt + g dW`` with

    f = alpha'/alpha,        g^2 = d(sigma^2)/dt - 2 f sigma^2,

and the score of its marginal is ``grad log p_t(x) = -eps_hat/sigma``. Every member of the family

    dx = [f x - (1 + eta^2)/2 g^2 grad log p_t(x)] dt + eta g dW_bar          (eta >= 0, t running backwards)

has the marginals p_t (the Fokker-Planck equation of the forward SDE, rewritten with the score; Song et al. 2021,
"Score-based generative modeling through SDEs", eq. 6 and 13, and the eta-interpolation of "Closing the ODE-SDE
gap" and Cui et al. 2023, "Elucidating the solution space of extended reverse-time SDE"): eta = 0 is the
probability-flow ODE, eta = 1 the reverse SDE of Anderson (1982). With the score written through the noise
estimate the drift is ``f x + (1 + eta^2)/2 (g^2/sigma) eps_hat``; at eta = 0 it equals the velocity
``alpha' x0_hat + sigma' eps_hat`` whenever ``x = alpha x0_hat + sigma eps_hat``.

For flows (``alpha = 1 - t``, ``sigma = t``): ``f = -1/(1 - t)``, ``g^2 = 2t/(1 - t)``; both are infinite at
``t = 1`` (alpha = 0), where the family is undefined and solvers take the deterministic first step of
:mod:`fewstep.solvers.stochastic`.

:func:`em_step` is the Euler–Maruyama update ``x + b dt + c dW`` for any SDE, :func:`euler_maruyama` drives a user
SDE (an object with ``drift(x, t)`` and ``diffusion(x, t)``) along a :class:`~fewstep.noise.BrownianPath`, and the
registered solver ``euler_maruyama`` integrates the family in schedule time with the same update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from torch import Tensor

from ...context import RunContext
from ...model import Point
from ...nodes import NodeTable
from ...noise.brownian import BrownianPath
from ...options import real_option
from ...schedules import NoiseSchedule
from ..base import Solver, Steps, register
from ..stochastic import EtaNoiseOptions, noise_levels

__all__ = ["ReverseSDE", "SDE", "em_step", "euler_maruyama", "EulerMaruyama"]


def em_step(x: Tensor, drift: Tensor, dt: float, diffusion: float | Tensor = 0.0, dw: Tensor | None = None) -> Tensor:
    """One Euler–Maruyama step ``x + b dt + c dW`` (a new tensor; ``c`` scalar or elementwise, diagonal noise)."""
    out = x + drift * dt
    return out if dw is None else out.add_(diffusion * dw)


class SDE(Protocol):
    """An Itô SDE ``dx = b(x, t) dt + c(x, t) dW`` with diagonal noise."""

    def drift(self, x: Tensor, t: float) -> Tensor: ...

    def diffusion(self, x: Tensor, t: float) -> Tensor | float: ...


def euler_maruyama(sde: SDE, x: Tensor, times: Sequence[float], path: BrownianPath) -> Tensor:
    """Euler–Maruyama on ``sde`` from ``x`` at ``times[0]`` through ``times`` (increasing or decreasing), with the
    increments ``W(t_{k+1}) - W(t_k)`` of ``path``; strong order 0.5 in general, 1 for additive noise."""
    for s, t in zip(times[:-1], times[1:], strict=True):
        x = em_step(x, sde.drift(x, s), t - s, sde.diffusion(x, s), path.increment(s, t))
    return x


@dataclass(frozen=True)
class ReverseSDE:
    """The family ``dx = [f x + (1 + eta^2)/2 (g^2/sigma) eps_hat] dt + eta g dW_bar`` of ``schedule`` (module
    docstring). Its coefficients are Python floats, at a schedule time or at a prepared model :class:`Point`."""

    schedule: NoiseSchedule
    eta: float = 1.0

    def __post_init__(self) -> None:
        real_option("eta", self.eta)

    @staticmethod
    def f_g2(alpha: float, sigma: float, dalpha: float, dsigma: float) -> tuple[float, float]:
        """``(f, g^2)``: ``f = alpha'/alpha``, ``g^2 = 2 sigma sigma' - 2 f sigma^2`` (infinite where alpha = 0)."""
        if alpha <= 0.0:
            return -math.inf, math.inf
        f = dalpha / alpha
        return f, 2.0 * sigma * dsigma - 2.0 * f * sigma * sigma

    def coefficients(self, at: float | Point) -> tuple[float, float, float]:
        """``(c_x, c_eps, c_w)`` at a time or point: drift ``c_x x + c_eps eps_hat``, diffusion ``c_w``."""
        if isinstance(at, Point):
            alpha, sigma, dalpha, dsigma = at.alpha, at.sigma, at.dalpha, at.dsigma
        else:
            s = self.schedule
            alpha, sigma, dalpha, dsigma = (float(v(at)) for v in (s.alpha, s.sigma, s.dalpha, s.dsigma))
        f, g2 = self.f_g2(alpha, sigma, dalpha, dsigma)
        return f, 0.5 * (1.0 + self.eta**2) * g2 / sigma, self.eta * math.sqrt(max(g2, 0.0))

    def drift(self, x: Tensor, eps: Tensor, at: float | Point) -> Tensor:
        """``f x - (1 + eta^2)/2 g^2 score`` with ``score = -eps_hat/sigma``."""
        c_x, c_eps, _ = self.coefficients(at)
        return c_x * x + c_eps * eps

    def diffusion(self, at: float | Point) -> float:
        """``eta g``."""
        return self.coefficients(at)[2]


class EMStep(NamedTuple):
    """One planned Euler-Maruyama step ``x + (a x + b eps_hat) dt + std z``; ``dt = 0``: the deterministic step
    ``a x0_hat + b eps_hat`` (of infinite lambda-size)."""

    dt: float
    a: float
    b: float
    std: float


@register
class EulerMaruyama(EtaNoiseOptions, Solver):
    """Euler–Maruyama in schedule time on the reverse SDE family: from node s to node t (``dt = t - s < 0``)

    ``x_t = x_s + (f_s x_s + (1 + eta^2)/2 (g_s^2/sigma_s) eps_hat) dt + s_noise eta g_s sqrt(s - t) z``.

    ``eta = 1``: the reverse SDE (Song et al. 2021's reverse-diffusion discretisation in continuous time); 0: Euler
    on the probability-flow ODE in t. Steps of infinite lambda-size (from alpha = 0, to sigma = 0) are the
    deterministic ``alpha_t x0_hat + sigma_t eps_hat`` of :mod:`fewstep.solvers.stochastic`.
    """

    name = "euler_maruyama"
    order = 1
    stochastic = True
    records_transitions = True
    summary = "Euler-Maruyama in schedule time on the reverse SDE family (eta: 0 the PF-ODE, 1 the reverse SDE)"
    paper = "Song et al. 2021, Score-based generative modeling through SDEs (eq. 6, 13); Maruyama 1955"
    peers = "score_sde EulerMaruyamaPredictor"

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        level = noise_levels(nodes)
        plan: list[EMStep] = []
        for i in range(nodes.steps):
            if not nodes.finite(i):  # x_t = alpha_t x0_hat + sigma_t eps_hat
                plan.append(EMStep(0.0, float(nodes.alpha[i + 1]), float(nodes.sigma[i + 1]), 0.0))
                continue
            sde = ReverseSDE(nodes.schedule, self.eta if ctx.stochastic_step(i) else 0.0)
            c_x, c_eps, c_w = sde.coefficients(nodes.node(i))
            dt = float(nodes.t[i + 1] - nodes.t[i])
            plan.append(EMStep(dt, c_x, c_eps, c_w * math.sqrt(-dt) * self.s_noise))
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            step = plan[i]
            if step.dt == 0.0:  # x_t = alpha_t x0_hat + sigma_t eps_hat
                x = step.a * x0 + step.b * eps
            else:  # x + (a x + b eps_hat) dt + std z
                x = em_step(x, step.a * x + step.b * eps, step.dt)
            if step.std:
                x = ctx.transition(i, x, level[i], level[i + 1], step.std)[0]
            ctx.emit(i, x, x0)
        return x
