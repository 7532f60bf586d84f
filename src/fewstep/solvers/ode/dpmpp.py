"""DPM-Solver++ with the data prediction (Lu et al. 2022, "DPM-Solver++", Alg. 1 and 2 and App. B).

With ``h = lambda_t - lambda_s`` and ``D_j`` the data estimates:

- first order:  ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) D_s``
- 2S (singlestep, r = 1/2): ``u = (sigma_s1/sigma_s) x_s - alpha_s1 (e^{-r h} - 1) D_s``;
  ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) ((1 - 1/(2r)) D_s + 1/(2r) D(u, s1))``
- 2M (multistep, ``r = h_{i-1}/h``): ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) ((1 + 1/(2r)) D_i - 1/(2r) D_{i-1})``
- 3M: ``x_t = (sigma_t/sigma_s) x_s + alpha_t (h phi_1(-h) D_i + h phi_2(-h) D1 + 2 h phi_3(-h) D2)`` with
  ``D1 ~ h x0'`` and ``D2 ~ h^2 x0''/2`` the divided differences of the last three data estimates in lambda, so
  that the terms are the Taylor terms ``h^{k+1} phi_{k+1}(-h) x0^{(k)}`` of the exact solution.

The multistep loop, its order plan and weights live in :mod:`fewstep.solvers.multistep`. Multistep solvers warm up
with lower orders; with ``lower_order_final`` (default, as diffusers) the last
step is first order when it goes to sigma = 0 or when there are fewer than 15 steps, and the one before it at
most second order in the latter case. A step of infinite lambda-size is always first order.

``corrector="unic"`` (2M, 3M) adds UniPC's UniC corrector (:mod:`fewstep.solvers.unic`) at no extra model
evaluation, at each step's order: 2M becomes third order, 3M fourth (third with ``d2_weight="reference"``,
whose O(h^3) local error the corrector keeps).

``momentum=beta`` (2M, 3M, and ``res_multistep``) replaces the combined derivative by a heavy-ball velocity
(:mod:`fewstep.solvers.momentum`, Wizadwongsa et al. 2023): ``momentum_type="hb"`` is first order for
beta < 1, ``"ghvb"`` keeps the solver's order; beta = 1 is the solver itself.

CFG++ forms (:mod:`fewstep.solvers.cfg_pp`): 2M (without corrector or momentum) as ComfyUI's
``sample_dpmpp_2m_cfg_pp``, ``x_t = alpha_t x0_hat + sigma_t eps_hat + alpha_t (1 - e^{-h})/(2 r) (x0_hat - U_{i-1})``
with ``U`` the unconditional clean samples; 2S as ComfyUI's ``sample_dpmpp_2s_ancestral_cfg_pp`` at eta = 0
(:func:`run_midpoint_cfg_pp`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor

from ...context import RunContext
from ...model import Point
from ...nodes import NodeTable
from ..base import Solver, Steps, register
from ..cfg_pp import unconditional_x0
from ..multistep import PAPER_PP, DataMultistep
from ..singlestep import FirstOrder
from ..stochastic import noise_levels


@register
class DPMSolverPP2M(DataMultistep):
    name = "dpmpp_2m"
    order = 2
    cfg_pp = True
    summary = "DPM-Solver++(2M): second-order multistep, data prediction"
    peers = "diffusers DPMSolverMultistepScheduler(solver_order=2); k-diffusion sample_dpmpp_2m"


@register
class DPMSolverPP3M(DataMultistep):
    name = "dpmpp_3m"
    order = 3
    summary = "DPM-Solver++(3M): third-order multistep, data prediction"
    peers = "diffusers DPMSolverMultistepScheduler(solver_order=3)"


class MidpointStep(NamedTuple):
    """A planned 2S step ``x_t = c_x x_s + c_d D(u) (+ c_s D_s)``: the intermediate ``point``, ``u = (u_x, u_d)`` of
    the state there (``u = u_x x_s + u_d D_s``), ``c_x``, ``c_d``, and ``c_s`` (0 but in ComfyUI's rectified-flow
    DPM-Solver-2, :mod:`fewstep.solvers.sde.ancestral_dpm`)."""

    point: Point
    u: tuple[float, float]
    c_x: float
    c_d: float
    c_s: float = 0.0


@register
class DPMSolverPP2S(Solver):
    """DPM-Solver++(2S) with r = 1/2: the midpoint data estimate alone (k-diffusion's 2S at eta = 0)."""

    name = "dpmpp_2s"
    order = 2
    nfe_per_step = 2
    cfg_pp = True
    summary = "DPM-Solver++(2S): second-order singlestep, data prediction"
    paper = PAPER_PP
    peers = "k-diffusion sample_dpmpp_2s_ancestral(eta=0)"

    def plan(self, nodes: NodeTable) -> list[FirstOrder | MidpointStep]:
        """Each step as a :class:`FirstOrder` or a :class:`MidpointStep` row."""
        a, s, lam, h = nodes.alpha, nodes.sigma, nodes.lam, nodes.h
        r = 0.5
        plan: list[FirstOrder | MidpointStep] = []
        for i, k in enumerate(self.step_orders(nodes)):
            if k == 1:
                plan.append(FirstOrder(a[i + 1], s[i + 1]))
            else:
                p1 = nodes.point_at_lambda(lam[i] + r * h[i])
                u = (p1.sigma / s[i], -p1.alpha * math.expm1(-r * h[i]))
                plan.append(MidpointStep(p1, u, s[i + 1] / s[i], -a[i + 1] * math.expm1(-h[i])))
        return plan

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        plan = self.plan(nodes)
        if self.runs_cfg_pp:
            return (yield from run_midpoint_cfg_pp(x, nodes, ctx, [(step, 0.0) for step in plan]))
        r = 0.5
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            step = plan[i]
            if isinstance(step, FirstOrder):  # in (x0, eps) form: finite at alpha_s = 0 and at sigma_t = 0
                x = step.alpha_t * x0 + step.sigma_t * eps
            else:  # u = u_x x_s + u_d D_s;  x_t = c_x x_s + c_d ((1 - 1/(2r)) D_s + 1/(2r) D(u))
                ux, ud = step.u
                x0_mid, _ = yield ux * x + ud * x0, step.point
                x = step.c_x * x + step.c_d * ((1 - 1 / (2 * r)) * x0 + 1 / (2 * r) * x0_mid)
            ctx.emit(i, x, x0)
        return x


def run_midpoint_cfg_pp(
    x: Tensor, nodes: NodeTable, ctx: RunContext, plan: Sequence[tuple[FirstOrder | MidpointStep, float]]
) -> Steps:
    """The CFG++ form of DPM-Solver++(2S), r = 1/2, to the step's end point ``(alpha_t, c_x sigma_s)`` (ComfyUI
    ``sample_dpmpp_2s_ancestral_cfg_pp``), then ``std z`` for the rows ``(step, std)``: the midpoint from the
    unconditional clean sample ``U_s`` (:func:`~fewstep.solvers.cfg_pp.unconditional_x0`), the step on the
    midpoint's unconditional estimate ``U(u)``, plus the guidance vector at the end's alpha:

        u = u_x x_s + u_d U_s,      x_t = c_x x_s + c_d U(u) + alpha_t (x0_hat - U_s)   (+ std z),

    and ``x_t = alpha_t x0_hat + sigma_t eps_hat`` on a first-order row (DDIM's CFG++ step)."""
    level = noise_levels(nodes)
    alpha, sigma = nodes.alpha.tolist(), nodes.sigma.tolist()
    for i in ctx.loop():
        x0, eps = yield x, nodes.node(i)
        step, std = plan[i]
        if isinstance(step, FirstOrder):
            x = step.alpha_t * x0 + step.sigma_t * eps
        else:
            u = unconditional_x0(x, eps, alpha[i], sigma[i], x0)
            ux, ud = step.u
            mid = ux * x + ud * u
            x0_mid, eps_mid = yield mid, step.point
            u_mid = unconditional_x0(mid, eps_mid, step.point.alpha, step.point.sigma, x0_mid)
            x = step.c_x * x + step.c_d * u_mid + alpha[i + 1] * (x0 - u)
        if std:
            x = ctx.transition(i, x, float(level[i]), float(level[i + 1]), std)[0]
        ctx.emit(i, x, x0)
    return x
