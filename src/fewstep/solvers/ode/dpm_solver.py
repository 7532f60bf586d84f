"""Singlestep DPM-Solver-1/2/3 with the noise prediction (Lu et al. 2022, "DPM-Solver", Alg. 1 and 2).

From ``x_s`` at ``lambda_s`` to ``lambda_t = lambda_s + h`` with intermediate ``lambda_{s_j} = lambda_s + r_j h``:

- DPM-Solver-1: ``x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s``  (= DDIM)
- DPM-Solver-2 (r1 = 1/2):
  ``u = (alpha_s1/alpha_s) x_s - sigma_s1 (e^{r1 h} - 1) eps_s``;
  ``x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s - sigma_t/(2 r1) (e^h - 1) (eps(u, s1) - eps_s)``
- DPM-Solver-3 (r1 = 1/3, r2 = 2/3):
  ``u1 = (alpha_s1/alpha_s) x_s - sigma_s1 (e^{r1 h} - 1) eps_s``;
  ``u2 = (alpha_s2/alpha_s) x_s - sigma_s2 (e^{r2 h} - 1) eps_s - sigma_s2 r2/r1 ((e^{r2 h}-1)/(r2 h) - 1) D1``;
  ``x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s - sigma_t / r2 ((e^h - 1)/h - 1) D2``,
  with ``D_j = eps(u_j, s_j) - eps_s``.

The step formulas and the NFE-budget order plan are shared (:mod:`fewstep.solvers.singlestep`). Given an exact NFE budget, the "fast" plan of DPM-Solver (Sec. 3.4) mixes orders: for order 3,
``K = floor(NFE/3) + 1`` steps with orders ``[3,...,3,2,1]``, ``[3,...,3,1]`` or ``[3,...,3,2]`` as NFE mod 3
is 0, 1, 2; for order 2, ``[2,...,2]`` or ``[2,...,2,1]``. Steps of infinite lambda-size (from alpha = 0,
or to sigma = 0) are first order and are taken out of the budget first.
"""

from __future__ import annotations

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Steps, register
from ..singlestep import BudgetOrders, FirstOrder, SinglestepPlan, singlestep_plan, singlestep_update


class _DPMSolver(BudgetOrders):
    nfe_per_step = 1  # overridden per order below
    paper = "Lu et al. 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling"

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        a, s, lam, h = nodes.alpha, nodes.sigma, nodes.lam, nodes.h
        # Precompute every intermediate point and coefficient (float64) before the loop.
        plan: list[FirstOrder | SinglestepPlan] = [
            FirstOrder(a[i + 1], s[i + 1])
            if k == 1
            else singlestep_plan(k, lam[i], h[i], a[i], a[i + 1], s[i + 1], nodes.point_at_lambda)
            for i, k in enumerate(self.step_orders(nodes))
        ]
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            step = plan[i]
            if isinstance(step, FirstOrder):
                x = step.alpha_t * x0 + step.sigma_t * eps
            else:
                x, _ = yield from singlestep_update(step, x, eps)
            ctx.emit(i, x, x0)
        return x


@register
class DPMSolver1(_DPMSolver):
    name = "dpm_solver_1"
    order = 1
    summary = "DPM-Solver-1 (noise prediction; equal to DDIM)"
    peers = "diffusers DPMSolverSinglestepScheduler(solver_order=1, algorithm_type='dpmsolver')"


@register
class DPMSolver2(_DPMSolver):
    name = "dpm_solver_2"
    order = 2
    nfe_per_step = 2
    summary = "DPM-Solver-2, singlestep midpoint in lambda (noise prediction)"
    peers = "diffusers DPMSolverSinglestepScheduler(solver_order=2, algorithm_type='dpmsolver'); k-diffusion sample_dpm_fast"


@register
class DPMSolver3(_DPMSolver):
    name = "dpm_solver_3"
    order = 3
    nfe_per_step = 3
    summary = "DPM-Solver-3, singlestep (noise prediction), DPM-Solver-fast order mixing for an NFE budget"
    peers = "diffusers DPMSolverSinglestepScheduler(solver_order=3, algorithm_type='dpmsolver'); k-diffusion sample_dpm_fast"
