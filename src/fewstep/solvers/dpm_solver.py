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

Given an exact NFE budget, the "fast" plan of DPM-Solver (Sec. 3.4) mixes orders: for order 3,
``K = floor(NFE/3) + 1`` steps with orders ``[3,...,3,2,1]``, ``[3,...,3,1]`` or ``[3,...,3,2]`` as NFE mod 3
is 0, 1, 2; for order 2, ``[2,...,2]`` or ``[2,...,2,1]``. Steps of infinite lambda-size (from alpha = 0,
or to sigma = 0) are first order and are taken out of the budget first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any

from torch import Tensor

from ..context import RunContext
from ..model import Point
from ..nodes import NodeTable
from .base import Solver, Steps, register

#: The intermediate lambda fractions ``r_j`` of DPM-Solver-2 and -3.
R = {2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def singlestep_plan(
    order: int,
    lam_s: float,
    h: float,
    alpha_s: float,
    alpha_t: float,
    sigma_t: float,
    point_at_lambda: Callable[[float], Point],
    r: tuple[float, ...] | None = None,
) -> tuple:
    """The points and float coefficients of one DPM-Solver-``order`` step (2 or 3) of finite size ``h`` from
    ``lambda_s`` (module docstring), with the fractions ``r`` (default :data:`R`); see :func:`singlestep_update`."""
    r = R[order] if r is None else r
    e = math.expm1(h)
    pts = [point_at_lambda(lam_s + rj * h) for rj in r]
    first = [(p.alpha / alpha_s, -p.sigma * math.expm1(rj * h)) for p, rj in zip(pts, r, strict=True)]
    if order == 2:
        (r1,) = r
        return 2, pts, first, alpha_t / alpha_s, -sigma_t * e, -sigma_t / (2 * r1) * e
    r1, r2 = r
    c_u2 = -pts[1].sigma * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1.0)
    return 3, pts, first, alpha_t / alpha_s, -sigma_t * e, c_u2, -sigma_t / r2 * (e / h - 1.0)


def singlestep_update(
    step: tuple, x: Tensor, eps: Tensor
) -> Generator[tuple[Tensor, Point], Any, tuple[Tensor, list[Tensor]]]:
    """One DPM-Solver-2/3 step planned by :func:`singlestep_plan`, given ``eps = eps_hat(x_s)``: yields the
    intermediate evaluation requests; returns ``x_t`` and the intermediate noise estimates ``[eps_1, ...]``."""
    if step[0] == 2:
        _, (p1,), ((u_x, u_e),), cx, ce, cd = step
        _, eps1 = yield u_x * x + u_e * eps, p1
        return cx * x + ce * eps + cd * (eps1 - eps), [eps1]
    _, (p1, p2), ((u1_x, u1_e), (u2_x, u2_e)), cx, ce, c_u2, cd = step
    _, eps1 = yield u1_x * x + u1_e * eps, p1
    _, eps2 = yield u2_x * x + u2_e * eps + c_u2 * (eps1 - eps), p2
    return cx * x + ce * eps + cd * (eps2 - eps), [eps1, eps2]


def fast_orders(nfe: int, order: int) -> list[int]:
    """DPM-Solver's order plan that spends exactly ``nfe`` evaluations with at most ``order`` per step."""
    if nfe <= 0:
        return []
    if order == 3:
        k, r = divmod(nfe, 3)
        return [3] * (k - 1) + [2, 1] if r == 0 else [3] * k + ([1] if r == 1 else [2])
    if order == 2:
        k, r = divmod(nfe, 2)
        return [2] * k + [1] * r
    return [1] * nfe


class _DPMSolver(Solver):
    nfe_per_step = 1  # overridden per order below
    paper = "Lu et al. 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling"

    def _plan(self, nfe: int, first_infinite: bool, clean_end: bool) -> list[int]:
        if nfe == 1:  # one first-order step, which may go from alpha = 0 to sigma = 0 at once (as DDIM's)
            return [1]
        forced_first, forced_last = int(first_infinite), int(clean_end)
        free = fast_orders(nfe - forced_first - forced_last, self.order)
        return [1] * forced_first + free + [1] * forced_last

    def steps_for_nfe(self, nfe: int, first_infinite: bool, clean_end: bool) -> int:
        if nfe < 1:
            raise ValueError(f"nfe: {self.name!r} needs at least 1 evaluation, got {nfe}")
        return len(self._plan(nfe, first_infinite, clean_end))

    def step_orders(self, nodes: NodeTable) -> list[int]:
        if nodes.nfe_budget is None:
            return super().step_orders(nodes)
        orders = self._plan(nodes.nfe_budget, not math.isfinite(nodes.lam[0]), nodes.clean_end)
        assert len(orders) == nodes.steps
        return orders

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        orders = self.step_orders(nodes)
        a, s, lam, h = nodes.alpha, nodes.sigma, nodes.lam, nodes.h
        # Precompute every intermediate point and coefficient (float64) before the loop.
        plan: list[tuple] = []
        for i, k in enumerate(orders):
            if k == 1:  # DPM-Solver-1 == DDIM; written in (x0, eps) so it is finite at alpha_s = 0 or sigma_t = 0
                plan.append((1, a[i + 1], s[i + 1]))
            else:
                plan.append(singlestep_plan(k, lam[i], h[i], a[i], a[i + 1], s[i + 1], nodes.point_at_lambda))
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            step = plan[i]
            if step[0] == 1:
                _, ca, cs = step
                x = ca * x0 + cs * eps
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
