"""The singlestep machinery of the DPM-Solver family (Lu et al. 2022, "DPM-Solver", Alg. 1 and 2, Sec. 3.4),
shared by ``dpm_solver_2/3``, SEEDS, SDE-DPM-Solver-2 and the adaptive DPM-Solver pairs.

From ``x_s`` at ``lambda_s`` to ``lambda_t = lambda_s + h`` with intermediate ``lambda_{s_j} = lambda_s + r_j h``
(noise prediction, ``D_j = eps(u_j, s_j) - eps_s``):

- order 2 (r1): ``u = (alpha_s1/alpha_s) x_s - sigma_s1 (e^{r1 h} - 1) eps_s``;
  ``x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s - sigma_t/(2 r1) (e^h - 1) D_1``
- order 3 (r1, r2): ``u1`` as above;
  ``u2 = (alpha_s2/alpha_s) x_s - sigma_s2 (e^{r2 h} - 1) eps_s - sigma_s2 r2/r1 ((e^{r2 h}-1)/(r2 h) - 1) D_1``;
  ``x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s - sigma_t / r2 ((e^h - 1)/h - 1) D_2``.

Given an exact NFE budget, the "fast" order plan (Sec. 3.4) mixes orders: for order 3, ``K = floor(NFE/3) + 1``
steps with orders ``[3,...,3,2,1]``, ``[3,...,3,1]`` or ``[3,...,3,2]`` as NFE mod 3 is 0, 1, 2; for order 2,
``[2,...,2]`` or ``[2,...,2,1]``. Steps of infinite lambda-size (from alpha = 0, or to sigma = 0) are first order and
are taken out of the budget first (:class:`BudgetOrders`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

from torch import Tensor

from ..model import Point
from ..nodes import NodeTable
from .base import Solver

#: The intermediate lambda fractions ``r_j`` of DPM-Solver-2 and -3.
R = {2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


class FirstOrder(NamedTuple):
    """A DPM-Solver-1 (= DDIM) step in (x0, eps) form, finite at alpha_s = 0 and sigma_t = 0:
    ``x_t = alpha_t x0_hat + sigma_t eps_hat``."""

    alpha_t: float
    sigma_t: float


class SinglestepPlan(NamedTuple):
    """One planned DPM-Solver-2/3 step (module docstring): the intermediate ``points``, ``first[j] = (u_x, u_eps)``
    with ``u_j = u_x x_s + u_eps eps_s (+ c_u2 D_1 for j = 2)``, and ``x_t = cx x_s + ce eps_s + cd D_last``."""

    order: int
    points: tuple[Point, ...]
    first: tuple[tuple[float, float], ...]
    cx: float
    ce: float
    cd: float
    c_u2: float = 0.0


def singlestep_plan(
    order: int,
    lam_s: float,
    h: float,
    alpha_s: float,
    alpha_t: float,
    sigma_t: float,
    point_at_lambda: Callable[[float], Point],
    r: tuple[float, ...] | None = None,
) -> SinglestepPlan:
    """The points and float coefficients of one step of the given order (2 or 3) and finite size ``h`` from
    ``lambda_s``, with the fractions ``r`` (default :data:`R`); see :func:`singlestep_update`."""
    r = R[order] if r is None else r
    e = math.expm1(h)
    pts = tuple(point_at_lambda(lam_s + rj * h) for rj in r)
    first = tuple((p.alpha / alpha_s, -p.sigma * math.expm1(rj * h)) for p, rj in zip(pts, r, strict=True))
    if order == 2:
        (r1,) = r
        return SinglestepPlan(2, pts, first, alpha_t / alpha_s, -sigma_t * e, -sigma_t / (2 * r1) * e)
    r1, r2 = r
    c_u2 = -pts[1].sigma * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1.0)
    return SinglestepPlan(3, pts, first, alpha_t / alpha_s, -sigma_t * e, -sigma_t / r2 * (e / h - 1.0), c_u2)


def singlestep_update(
    step: SinglestepPlan, x: Tensor, eps: Tensor
) -> Generator[tuple[Tensor, Point], Any, tuple[Tensor, list[Tensor]]]:
    """One step planned by :func:`singlestep_plan`, given ``eps = eps_hat(x_s)``: yields the intermediate
    evaluation requests; returns ``x_t`` and the intermediate noise estimates ``[eps_1, ...]``."""
    (u1_x, u1_e) = step.first[0]
    _, eps1 = yield u1_x * x + u1_e * eps, step.points[0]
    if step.order == 2:
        return step.cx * x + step.ce * eps + step.cd * (eps1 - eps), [eps1]
    (u2_x, u2_e) = step.first[1]
    _, eps2 = yield u2_x * x + u2_e * eps + step.c_u2 * (eps1 - eps), step.points[1]
    return step.cx * x + step.ce * eps + step.cd * (eps2 - eps), [eps1, eps2]


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


class BudgetOrders(Solver):
    """A singlestep solver that spends an NFE budget by DPM-Solver's fast order plan (module docstring); without a
    budget (times given) every finite step takes the solver's order."""

    def budget_orders(self, nfe: int, first_infinite: bool, clean_end: bool) -> list[int]:
        if nfe == 1:  # one first-order step, which may go from alpha = 0 to sigma = 0 at once (as DDIM's)
            return [1]
        forced_first, forced_last = int(first_infinite), int(clean_end)
        free = fast_orders(nfe - forced_first - forced_last, self.order)
        return [1] * forced_first + free + [1] * forced_last

    def steps_for_nfe(self, nfe: int, first_infinite: bool, clean_end: bool) -> int:
        if nfe < 1:
            raise ValueError(f"nfe: {self.name!r} needs at least 1 evaluation, got {nfe}")
        return len(self.budget_orders(nfe, first_infinite, clean_end))

    def step_orders(self, nodes: NodeTable) -> list[int]:
        if nodes.nfe_budget is None:
            return super().step_orders(nodes)
        orders = self.budget_orders(nodes.nfe_budget, nodes.first_infinite, nodes.clean_end)
        assert len(orders) == nodes.steps
        return orders
