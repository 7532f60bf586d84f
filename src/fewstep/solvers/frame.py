"""Shared machinery of the linear multistep solvers (DEIS, iPNDM, LMS): Lagrange-basis integrals, order plans
and the step loop.

Each of these solvers integrates an ODE ``dy/dtau = f`` with a polynomial through the last few values of ``f``.
Every step is an affine combination, with coefficients computed (float64) before the loop,

    x_{i+1} = p x_i + q x0_i + r eps_i + sum_j w_j f_{i-j}

of the state, the model's current estimates and the history of ``f``. Two frames occur (:meth:`~fewstep.nodes.NodeTable.ode_frame`):

- the noise-prediction ODE in ``rho = sigma/alpha`` (``y = x/alpha``, ``f = eps``), where an update
  ``y_{i+1} = y_i + sum_j W_j eps_{i-j}`` with ``sum_j W_j = rho_{i+1} - rho_i`` is written, using
  ``x_i = alpha_i x0_i + sigma_i eps_i``, as

      x_{i+1} = alpha_{i+1} x0_i + sigma_{i+1} eps_i + alpha_{i+1} sum_{j>=1} W_j (eps_{i-j} - eps_i):

  DDIM plus the higher-order corrections. It never divides by alpha_i, so it stays exact from a (nearly)
  pure-noise node, and it is finite on a step to sigma = 0;
- the flow ODE in ``t`` (``y = x``, ``f`` = the velocity ``alpha' x0 + sigma' eps``):
  ``x_{i+1} = x_i + sum_j W_j f_{i-j}``.

First-order steps are DDIM in both frames, ``x_{i+1} = alpha_{i+1} x0_i + sigma_{i+1} eps_i`` (exact for
constant estimates; in the sigma frame this is Euler, in the t frame it differs from Euler on curved paths).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
from torch import Tensor

from ..context import RunContext
from ..model import Point
from ..nodes import NodeTable
from .base import Solver, Steps


class StepCoef(NamedTuple):
    """One planned step ``x_{i+1} = c_x x_i + c_x0 x0_i + c_eps eps_i + sum_j weights[j] f_{i-j}``."""

    c_x: float
    c_x0: float
    c_eps: float
    weights: list[float]


#: Adams-Bashforth coefficients for equal steps (the weights of ``f_i, f_{i-1}, ...`` per unit step).
AB_UNIFORM: dict[int, list[float]] = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}


def lagrange_basis(nodes: Sequence[float] | np.ndarray, points: np.ndarray) -> np.ndarray:
    """Row j: the Lagrange basis polynomial ``l_j(points) = prod_{k != j} (points - nodes_k) / (nodes_j - nodes_k)``."""
    points = np.asarray(points, dtype=np.float64)
    out = np.ones((len(nodes), *points.shape))
    for j, nj in enumerate(nodes):
        for k, nk in enumerate(nodes):
            if k != j:
                out[j] *= (points - nk) / (nj - nk)
    return out


def lagrange_integrals(nodes: Sequence[float], a: float, b: float) -> list[float]:
    """``int_a^b l_j(v) dv`` for the Lagrange basis ``l_j`` of ``nodes`` (``l_j(nodes[k]) = [j == k]``).

    Exact to rounding: the nodes are mapped to the unit step ``s = (v - a)/(b - a)`` and the degree
    ``len(nodes) - 1`` integrand is integrated by Gauss-Legendre with ``len(nodes)`` points (exact to degree
    ``2 len(nodes) - 1``), evaluating the basis in its product form. A zero-width step gives zero weights.
    """
    n = len(nodes)
    width = float(b) - float(a)
    if n == 1:
        return [width]
    if width == 0.0:
        return [0.0] * n
    s = [(float(v) - float(a)) / width for v in nodes]
    x, w = np.polynomial.legendre.leggauss(n)
    r, w = 0.5 * (x + 1.0), 0.5 * w
    return [width * float(v) for v in lagrange_basis(s, r) @ w]


def frame_orders(tau: np.ndarray, order: int) -> list[int]:
    """Per-step orders of a multistep method in the noise level ``tau``: ``min(order, i + 1)`` as k-diffusion's
    ``sample_lms`` and diffusers' iPNDM/LMS (full order up to and including a step to sigma = 0), with the
    history restarted after a node of infinite ``tau`` (a pure-noise node in the sigma frame)."""
    orders, run = [], 0
    for i in range(len(tau) - 1):
        run = run + 1 if math.isfinite(tau[i]) else 0
        orders.append(max(1, min(order, run)))
    return orders


def eps_frame_step(alpha_next: float, sigma_next: float, weights: Sequence[float]) -> StepCoef:
    """The noise-prediction step ``y_{i+1} = y_i + sum_j W_j eps_{i-j}`` (``y = x/alpha``, weights ``W_j`` in
    rho) in the DDIM-plus-corrections form of the module docstring. One weight (or none) gives DDIM."""
    extra = [float(alpha_next * wj) for wj in weights[1:]]
    w = [-math.fsum(extra), *extra] if extra else []
    return StepCoef(0.0, float(alpha_next), float(sigma_next), w)


def run_plan(
    x: Tensor, nodes: NodeTable, ctx: RunContext, plan: list[StepCoef], velocity: list[tuple[float, float]] | None
) -> Steps:
    """The step loop shared by the multistep solvers: ``f = eps`` (``velocity=None``) or ``f = a x0 + b eps``
    with the per-node ``(a, b)`` of ``velocity``."""
    keep = max([len(step.weights) for step in plan] + [1])
    history: list[Tensor] = []
    for i in ctx.loop():
        x0, eps = yield x, nodes.node(i)
        if velocity is None:
            f = eps
        else:
            a, b = velocity[i]
            f = x0 * a + eps * b if a != 0.0 else eps * b
        history = [f, *history[: keep - 1]]
        step = plan[i]
        own = ((step.c_x, x), (step.c_x0, x0), (step.c_eps, eps))
        terms = [(c, t) for c, t in (*own, *zip(step.weights, history, strict=False)) if c != 0.0]
        if not terms:
            x = x.new_zeros(x.shape)
        else:
            x = terms[0][1] * terms[0][0]  # a new tensor: states already passed on are never changed
            for c, t in terms[1:]:
                x.add_(t, alpha=c)
        ctx.emit(i, x, x0)
    return x


class FrameMultistep(Solver):
    """A linear multistep method in the noise level of :meth:`~fewstep.nodes.NodeTable.ode_frame`: ``sigma/alpha`` with the noise
    prediction for diffusion schedules (k-diffusion's form), ``t`` with the velocity for flows
    (``ode_variable == "t"``), the frame Euler steps in. Subclasses give the weights of one step."""

    lambda_based = False
    #: The most past values of f one step uses (its stencil; for Adams-Bashforth with exact weights, the order).
    stencil: ClassVar[int] = 4

    def _weights(self, tau: np.ndarray, i: int, k: int) -> list[float]:
        """Weights ``W_j`` of ``f_i, ..., f_{i-k+1}`` on step i (``sum_j W_j = tau_{i+1} - tau_i``)."""
        raise NotImplementedError

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return frame_orders(nodes.ode_frame()[0], self.stencil)

    def plan(self, nodes: NodeTable) -> tuple[list[StepCoef], list[tuple[float, float]] | None]:
        tau, _ = nodes.ode_frame()
        flow = nodes.schedule.ode_variable == "t"
        plan: list[StepCoef] = []
        for i, k in enumerate(self.step_orders(nodes)):
            dtau = float(tau[i + 1] - tau[i]) if math.isfinite(tau[i]) else 0.0
            weights = self._weights(tau, i, k) if k > 1 else [dtau]
            if not all(math.isfinite(wj) for wj in weights):  # repeated nodes: first order
                weights = [dtau]
            if flow and len(weights) > 1:
                plan.append(StepCoef(1.0, 0.0, 0.0, [float(wj) for wj in weights]))
            else:  # first-order steps are DDIM in both frames (exact for constant x0 and eps)
                plan.append(eps_frame_step(nodes.alpha[i + 1], nodes.sigma[i + 1], weights))
        velocity = [nodes.ode_velocity(nodes.node(i)) for i in range(nodes.steps)] if flow else None
        return plan, velocity

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        plan, velocity = self.plan(nodes)
        return (yield from run_plan(x, nodes, ctx, plan, velocity))


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
