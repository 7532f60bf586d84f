"""ComfyUI's ``res_multistep`` and ``gradient_estimation`` samplers.

``res_multistep``: the second-order exponential multistep method in data prediction with the "RES"
coefficients (Zhang et al. 2023, "Improved order analysis and design of exponential integrator for
diffusion models"; ComfyUI ``sample_res_multistep`` at eta = 0). With ``h = lambda_t - lambda_s``,
``c = -h_prev/h`` (``h_prev = lambda_s - lambda_prev``), ``b1 = phi_1(-h) - phi_2(-h)/c`` and
``b2 = phi_2(-h)/c``::

    x_t = (sigma_t/sigma_s) x_s + alpha_t h (b1 D_i + b2 D_{i-1})

which is the exact integral of the data estimate interpolated linearly in lambda through the last two (the
RES order conditions; DPM-Solver++(2M) instead weights the difference by ``phi_1/2``). The first step, and a
step of infinite lambda-size (the step to sigma = 0, a step from alpha = 0), is the first-order
DPM-Solver++ step, as ComfyUI's Euler step.

``gradient_estimation`` (Permenter & Yuan 2024, "Interpreting and improving diffusion models from an
optimization perspective"; ComfyUI ``sample_gradient_estimation``): Euler on the probability-flow ODE in the
noise level (as ``euler``), but from the second step on with the extrapolated derivative
``d = gamma d_i + (1 - gamma) d_{i-1}`` (``gamma = 2`` by default), which on a denoiser that is nearly a
projection corrects its error. For gamma = 2 the step evaluates the derivative extrapolated to the end of
the step; the method is first order (gamma = 3/2 on equal steps would be Adams-Bashforth 2).

CFG++ forms (:mod:`fewstep.solvers.cfg_pp`; ComfyUI's ``cfg_pp=True``): ``res_multistep`` takes DDIM's CFG++ step on
its first-order steps and, on its second-order ones, the RES step on the unconditional estimates ``U`` from the
shifted state ``x_s + alpha_s (x0_hat - U_i)``; ``gradient_estimation`` takes DDIM's CFG++ step plus the correction
on the unconditional velocities ``d_u = a U + b eps_hat`` (:meth:`~fewstep.nodes.NodeTable.ode_velocity`):
``x_{i+1} = alpha_{i+1} x0_hat + sigma_{i+1} eps_hat + c_{i+1} (tau_{i+1} - tau_i) (gamma - 1) (d_u,i - d_u,i-1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, register
from ..cfg_pp import unconditional_x0
from ..multistep import DataMultistep
from ..phi import hphi

PAPER_RES = "Zhang et al. 2023, Improved Order Analysis and Design of Exponential Integrator for Diffusion Models"
PAPER_GE = "Permenter & Yuan 2024, Interpreting and Improving Diffusion Models from an Optimization Perspective"


def res_weights(h: Sequence[float] | np.ndarray, i: int, order: int) -> list[float]:
    """``[h b1, h b2]`` (order 2) or ``[h phi_1(-h)]`` (order 1): the weights of ``D_i, D_{i-1}``."""
    hi = h[i]
    if order == 1:
        return [hphi(1, hi)]
    c = -h[i - 1] / hi
    phi1, phi2 = hphi(1, hi) / hi, hphi(2, hi) / hi**2  # phi_1(-h), phi_2(-h)
    return [hi * (phi1 - phi2 / c), hi * phi2 / c]


def res_cfg_pp_guided(order: int) -> bool:
    """Whether a RES step of this order takes the guided ``x0_hat`` as its current data estimate in the CFG++ form:
    on first-order steps (DDIM's CFG++ step), not on second-order ones (ComfyUI's ``res_multistep`` with
    ``cfg_pp``: the RES step on the unconditional estimates from the shifted state)."""
    return order == 1


@register
class ResMultistep(DataMultistep):
    name = "res_multistep"
    order = 2
    summary = "RES second-order exponential multistep, data prediction"
    paper = PAPER_RES
    peers = "ComfyUI res_multistep"
    cfg_pp = True

    def __init__(self, lower_order_final: bool = False, momentum: float | None = None, momentum_type: str = "hb"):
        super().__init__(lower_order_final, momentum=momentum, momentum_type=momentum_type)

    def weights(self, h: Sequence[float], i: int, order: int) -> list[float]:
        return res_weights(h, i, min(order, 2))

    def cfg_pp_guided(self, order: int) -> bool:
        return res_cfg_pp_guided(order)


@register
class GradientEstimation(Solver):
    name = "gradient_estimation"
    order = 1
    lambda_based = False
    summary = "Euler in the noise level with the extrapolated derivative gamma d_i + (1 - gamma) d_{i-1}"
    paper = PAPER_GE
    peers = "ComfyUI gradient_estimation"
    cfg_pp = True

    def __init__(self, gamma: float = 2.0):
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not math.isfinite(gamma):
            raise ValueError(f"gamma: must be a finite number, got {gamma!r}")
        self.gamma = float(gamma)

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        tau, c = nodes.ode_frame()
        vel = [nodes.ode_velocity(nodes.node(i)) for i in range(nodes.steps)]
        coef = [(c[i + 1] / c[i], c[i + 1] * (tau[i + 1] - tau[i])) for i in range(nodes.steps)]
        g = self.gamma
        if self.runs_cfg_pp:
            return (yield from self._solve_cfg_pp(x, nodes, ctx, vel, [cf for _, cf in coef]))
        d_old: Tensor | None = None
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            (a, b), (cx, cf) = vel[i], coef[i]
            d = a * x0 + b * eps
            d_bar = d if d_old is None else g * d + (1 - g) * d_old
            x = cx * x + cf * d_bar
            d_old = d
            ctx.emit(i, x, x0)
        return x

    def _solve_cfg_pp(
        self, x: Tensor, nodes: NodeTable, ctx: RunContext, vel: list[tuple[float, float]], dtau: list[float]
    ) -> Steps:
        """DDIM's CFG++ step plus ``dtau_i (gamma - 1) (d_u,i - d_u,i-1)`` (module docstring; ``dtau_i`` is
        ``c_{i+1} (tau_{i+1} - tau_i)``)."""
        alpha, sigma, g = nodes.alpha.tolist(), nodes.sigma.tolist(), self.gamma
        d_old: Tensor | None = None
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            a, b = vel[i]
            d = b * eps if a == 0.0 else a * unconditional_x0(x, eps, alpha[i], sigma[i], x0) + b * eps
            x = alpha[i + 1] * x0 + sigma[i + 1] * eps
            if d_old is not None:
                x = x + (dtau[i] * (g - 1)) * (d - d_old)
            d_old = d
            ctx.emit(i, x, x0)
        return x
