"""Euler and Heun on the probability-flow ODE in its noise level (k-diffusion / EDM form).

With ``y = x / c`` and noise level ``tau`` (:meth:`~fewstep.nodes.NodeTable.ode_frame`): ``dy/dtau = a x0_hat + b eps_hat``
(for diffusion schedules ``tau = sigma/alpha``, ``c = alpha`` and ``dy/dtau = eps_hat = (y - x0_hat)/tau``,
EDM eq. 4; for flows ``tau = t``, ``c = 1`` and ``dy/dt = v``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from torch import Tensor

from ..context import RunContext
from ..model import Point
from ..nodes import NodeTable
from .base import Solver, Steps, register


@register
class Euler(Solver):
    """Euler: ``y_{i+1} = y_i + (tau_{i+1} - tau_i) f(y_i, tau_i)``.

    In the diffusion form this is algebraically DDIM (the data and noise estimates are held fixed).
    """

    name = "euler"
    order = 1
    lambda_based = False
    summary = "Euler on the probability-flow ODE in sigma/alpha (or t for flows)"
    paper = "Karras et al. 2022 (EDM), Alg. 1 without the correction"
    peers = "k-diffusion sample_euler; diffusers EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler"

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        tau, c = nodes.ode_frame()
        vel = [nodes.ode_velocity(nodes.node(i)) for i in range(nodes.steps)]
        # x_{i+1} = c_{i+1} (x_i / c_i + dtau f)
        coef = [(c[i + 1] / c[i], c[i + 1] * (tau[i + 1] - tau[i])) for i in range(nodes.steps)]
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            (a, b), (cx, cf) = vel[i], coef[i]
            x = cx * x + cf * (a * x0 + b * eps)
            ctx.emit(i, x, x0)
        return x


@register
class Heun(Solver):
    """Heun's second-order method (EDM Alg. 1): an Euler predictor, then the trapezoidal corrector
    ``y_{i+1} = y_i + dtau (f(y_i, tau_i) + f(y~_{i+1}, tau_{i+1})) / 2``; the step to sigma = 0 is Euler."""

    name = "heun"
    order = 2
    nfe_per_step = 2
    lambda_based = False
    summary = "Heun (trapezoidal predictor-corrector) on the probability-flow ODE"
    paper = "Karras et al. 2022 (EDM), Alg. 1"
    peers = "k-diffusion sample_heun; diffusers HeunDiscreteScheduler"

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        tau, c = nodes.ode_frame()
        orders = self.step_orders(nodes)
        vel = [nodes.ode_velocity(p) if p is not None else (0.0, 0.0) for p in nodes.points]
        coef = [(c[i + 1] / c[i], c[i + 1] * (tau[i + 1] - tau[i])) for i in range(nodes.steps)]
        for i in ctx.loop():
            x, x0 = yield from heun_step(
                x, nodes.node(i), vel[i], coef[i], (nodes.points[i + 1], vel[i + 1]), orders[i]
            )
            ctx.emit(i, x, x0)
        return x


def heun_step(
    x: Tensor,
    p: Point,
    velocity: tuple[float, float],
    coef: tuple[float, float],
    end: tuple[Point | None, tuple[float, float]],
    order: int,
) -> Generator[tuple[Tensor, Point], Any, tuple[Tensor, Tensor]]:
    """One Heun step (EDM Alg. 1, lines 5-8) from ``x`` at point ``p`` to the point of ``end``.

    With ``dy/dtau = a x0_hat + b eps_hat`` (``velocity`` at p, and at the end point) and ``coef = (cx, cf)``
    such that the Euler step is ``x_pred = cx x + cf f``: the corrector is ``cx x + cf (f + f_end) / 2``; with
    ``order = 1`` the Euler step is taken alone. Yields its evaluation requests; returns ``(x_next, x0_hat)``.
    """
    x0, eps = yield x, p
    (a, b), (cx, cf) = velocity, coef
    d = a * x0 + b * eps
    x_next = cx * x + cf * d
    if order == 2:
        p_end, (a2, b2) = end
        assert p_end is not None
        x0_2, eps_2 = yield x_next, p_end
        x_next = cx * x + (0.5 * cf) * (d + a2 * x0_2 + b2 * eps_2)
    return x_next, x0
