"""The stage machinery of the stochastic singlestep solvers (SEEDS, SDE-DPM-Solver-2): a step is a list of
:class:`Stage` rows, each ``u = ratio x_s + sum_j weights[j] f_j + sum_k noise[k] z_k`` evaluated at its point, with
the normals ``z_k`` of the step's sub-intervals drawn once per step; :func:`run_stages` is their one loop and records
each stage's last normal as a Gaussian transition (see :mod:`fewstep.trajectory`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ..context import RunContext
from ..model import Point
from ..nodes import NodeTable
from .base import Steps


@dataclass(frozen=True)
class Stage:
    """One stage of a stochastic singlestep step: ``u = ratio x_s + sum_j weights[j] f_j + sum_k noise[k] z_k``, to be
    evaluated at ``point`` (None for the step's result). ``f_j`` are the model estimates of the earlier stages (the
    data or the noise estimate), ``z_k`` the standard normals of the step's sub-intervals."""

    point: Point | None
    ratio: float
    weights: tuple[float, ...]
    noise: tuple[float, ...]


#: A planned step: its stages, or ``(alpha_t, sigma_t)`` of a deterministic step ``x_t = alpha_t x0 + sigma_t eps``.
StepPlan = list[Stage] | tuple[float, float]


def noise_weights(
    c: float, cuts: Sequence[float], h: float, eta: float, sigma_c: float, data: bool
) -> tuple[float, ...]:
    """Stds of the sub-interval normals ``z_k`` (``[cuts[k], cuts[k+1]]``, fractions of ``h`` at or below ``c``) in the
    exact Ito integral up to the stage at fraction ``c``:

    - data prediction: ``sigma_c e^{-eta (c - b) h} sqrt(1 - e^{-2 eta (b - a) h})``;
    - noise prediction: ``sigma_c e^{(c - b) h} sqrt(eta (e^{2 (b - a) h} - 1))`` (SDE-DPM-Solver's noise, whose
      linear part is ``alpha_t/alpha_s``).
    """
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        if b > c:
            break
        if data:
            out.append(sigma_c * math.exp(-eta * (c - b) * h) * math.sqrt(-math.expm1(-2.0 * eta * (b - a) * h)))
        else:
            out.append(sigma_c * math.exp((c - b) * h) * math.sqrt(eta * math.expm1(2.0 * (b - a) * h)))
    return tuple(out)


def stage_points(nodes: NodeTable, i: int, fractions: Sequence[float]) -> list[Point]:
    """The intermediate points ``lambda_i + c h_i`` of step i."""
    return [nodes.point_at_lambda(float(nodes.lam[i] + c * nodes.h[i])) for c in fractions]


def run_stages(
    x: Tensor, nodes: NodeTable, ctx: RunContext, plans: list[StepPlan], cuts: list[list[float]], use_eps: bool
) -> Steps:
    """The loop of a stochastic singlestep method: per step, draw the normals of its sub-intervals (levels
    ``cuts[i]``), evaluate the stages in order and return the last. Stage j's last normal ``z_j`` enters no earlier
    stage, so ``u_j = mean_j + std_j z_j`` (``mean_j``: everything but that term) is recorded as a Gaussian
    transition of step i (module docstring)."""
    for i in ctx.loop():
        x0, eps = yield x, nodes.node(i)
        plan = plans[i]
        if isinstance(plan, tuple):  # deterministic: x_t = alpha_t x0_hat + sigma_t eps_hat
            x = plan[0] * x0 + plan[1] * eps
            ctx.emit(i, x, x0)
            continue
        levels = cuts[i]
        zs = [ctx.draw(s, t, x) for s, t in zip(levels, levels[1:], strict=False)] if any(plan[-1].noise) else []
        f = [eps if use_eps else x0]
        x_s = x
        for stage in plan:
            u = x_s * stage.ratio  # a new tensor: the caller's noise and the states already passed on are never changed
            for w, fj in zip(stage.weights, f, strict=False):
                if w:
                    u.add_(fj, alpha=w)
            draws = list(zip(stage.noise, zs, strict=False))
            for c, z in draws[:-1]:
                u.add_(z, alpha=c)
            if draws:  # u_j = mean_j + std_j z_j
                (c, z), mean = draws[-1], u.clone() if ctx.trajectory is not None else u
                u.add_(z, alpha=c)
                ctx.record(i, mean, c, u, z)
            if stage.point is None:
                x = u
            else:
                x0_j, eps_j = yield u, stage.point
                f.append(eps_j if use_eps else x0_j)
        ctx.emit(i, x, x0)
    return x
