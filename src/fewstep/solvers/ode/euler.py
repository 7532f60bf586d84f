"""Euler and Heun on the probability-flow ODE in its noise level (k-diffusion / EDM form).

With ``y = x / c`` and noise level ``tau`` (:meth:`~fewstep.nodes.NodeTable.ode_frame`): ``dy/dtau = a x0_hat + b eps_hat``
(for diffusion schedules ``tau = sigma/alpha``, ``c = alpha`` and ``dy/dtau = eps_hat = (y - x0_hat)/tau``,
EDM eq. 4; for flows ``tau = t``, ``c = 1`` and ``dy/dt = v``).
"""

from __future__ import annotations

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, register
from ..frame import heun_step
from .ddim import renoise_steps


@register
class Euler(Solver):
    """Euler: ``y_{i+1} = y_i + (tau_{i+1} - tau_i) f(y_i, tau_i)``.

    In the diffusion form this is algebraically DDIM (the data and noise estimates are held fixed); its CFG++ form
    (:mod:`fewstep.solvers.cfg_pp`) is DDIM's update ``x_{i+1} = alpha_{i+1} x0_hat + sigma_{i+1} eps_hat``, on flows
    too (ComfyUI ``sample_euler_cfg_pp``).
    """

    name = "euler"
    order = 1
    lambda_based = False
    cfg_pp = True
    summary = "Euler on the probability-flow ODE in sigma/alpha (or t for flows)"
    paper = "Karras et al. 2022 (EDM), Alg. 1 without the correction"
    peers = "k-diffusion sample_euler; diffusers EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler"

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        if self.runs_cfg_pp:
            return (yield from renoise_steps(x, nodes, ctx))
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
