"""A non-stationary linear solver: every state is its own fitted linear combination of the start noise and all the
model's data estimates so far (Shaul et al. 2024, "Bespoke Non-Stationary Solvers for Fast Sampling of Diffusion
and Flow Models"; here fitted without training, by :func:`fewstep.tune` with ``coefficients=True``).

With ``x_T`` the start, ``D_j = x0_hat(x_j, t_j)`` the data estimate of request j, ``c_k`` the k-th row of
``coefficients`` (k = 1 .. N, k + 1 numbers) and ``n = alpha + sigma`` at each node, the state of request k and the
output ``x_N`` are

    x_k / n_k = c_k[0] x_T / n_0 + sum_{j<k} c_k[1 + j] D_j.

In ``x / n`` every schedule with the same noise levels ``sigma / alpha`` has the same states (a VP schedule and
k-diffusion's ``x / alpha`` alike), so the rows do not depend on the frame they are run in.

Every deterministic solver is of this form on its request times (:mod:`fewstep.solvers.linear_form` reads its
coefficients off its update rule), so a fitted sampler starts from a solver's own run and changes only the
weights. ``coefficients=None`` runs DPM-Solver++(2M)'s form on the run's nodes (``dpmpp_2m``'s samples, to
rounding). One evaluation per step; the run keeps every data estimate (memory: N states, for the few steps this is
meant for).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, get_solver, register
from ..linear_form import linear_form

PAPER = "Shaul et al. 2024, Bespoke Non-Stationary Solvers for Fast Sampling of Diffusion and Flow Models"

#: The solver whose linear form is run when no coefficients are given.
DEFAULT_FORM = "dpmpp_2m"


def check_coefficients(coefficients: object) -> tuple[tuple[float, ...], ...]:
    """The rows as tuples of floats: row k (k = 1 ..) must hold k + 1 finite numbers; ValueError / TypeError
    naming the row otherwise."""
    if isinstance(coefficients, str | bytes) or not isinstance(coefficients, Sequence) or not coefficients:
        raise TypeError(f"coefficients: need a non-empty list of rows of numbers, got {type(coefficients).__name__}")
    rows = []
    for k, row in enumerate(coefficients, start=1):
        if isinstance(row, str | bytes) or not isinstance(row, Sequence):
            raise TypeError(f"coefficients[{k - 1}]: need a list of {k + 1} numbers, got {type(row).__name__}")
        if len(row) != k + 1:
            raise ValueError(
                f"coefficients[{k - 1}]: the state after step {k} combines the start and {k} data estimates, so it "
                f"needs {k + 1} numbers, got {len(row)}"
            )
        try:
            values = tuple(float(v) for v in row)
        except (TypeError, ValueError):
            raise TypeError(f"coefficients[{k - 1}]: need numbers, got {row!r}") from None
        if not all(map(math.isfinite, values)):
            raise ValueError(f"coefficients[{k - 1}]: need finite numbers, got {row!r}")
        rows.append(values)
    return tuple(rows)


def in_frame(rows: Sequence[Any], norms: Sequence[float]) -> list[tuple[Any, ...]]:
    """Frame-free rows ``c_1 .. c_N`` in the schedule's frame of the nodes whose ``alpha + sigma`` are ``norms``:
    ``x_k = c_k[0] (n_k / n_0) x_T + sum_j c_k[1 + j] n_k D_j``. A row is a sequence of numbers, or a 1-D tensor that
    autograd follows (:func:`fewstep.tune.coefficients.refined`)."""
    return [(row[0] * norms[k] / norms[0], *(c * norms[k] for c in row[1:])) for k, row in enumerate(rows, start=1)]


@register
class Nonstationary(Solver):
    """``x_k / n_k = c_k[0] x_T / n_0 + sum_{j<k} c_k[1 + j] D_j`` with fitted rows ``c_k`` (module docstring)."""

    name = "nonstationary"
    order = 2  # that of the default form (DPM-Solver++(2M)); fitted rows have no order of their own
    needs_eps = False
    summary = "fitted linear combination of the start and every data estimate, per step (fewstep.tune)"
    paper = PAPER

    def __init__(self, coefficients: Sequence[Sequence[float]] | None = None):
        self.coefficients = None if coefficients is None else check_coefficients(coefficients)

    def rows(self, nodes: NodeTable) -> tuple[tuple[float, ...], ...]:
        """The rows ``c_1 .. c_N`` of this run: the given ones (ValueError when their number is not the run's
        steps), else :data:`DEFAULT_FORM`'s linear form on ``nodes``."""
        if self.coefficients is None:
            form = nodes.remember(self, "default form", lambda: linear_form(get_solver(DEFAULT_FORM), nodes))
            return tuple(map(tuple, form.rows()))
        if len(self.coefficients) != nodes.steps:
            raise ValueError(
                f"coefficients: {len(self.coefficients)} rows were fitted for {len(self.coefficients)} steps, but this "
                f"run has {nodes.steps}; run it at the times it was fitted on (its TunedSampler's times)"
            )
        return self.coefficients

    def plan(self, nodes: NodeTable) -> list[tuple[float, ...]]:
        """Row k in the schedule's frame: ``x_k = c_k[0] (n_k / n_0) x_T + sum_j c_k[1 + j] n_k D_j``."""
        return in_frame(self.rows(nodes), (nodes.alpha + nodes.sigma).tolist())

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        plan = nodes.remember(self, "plan", lambda: self.plan(nodes))  # checked before the first request
        start, estimates = x, []
        for i in ctx.loop():
            x0, _ = yield x, nodes.node(i)
            estimates.append(x0)
            row = plan[i]
            x = start * row[0]  # x_{i+1} = c[0] x_T + sum_j c[1 + j] D_j (in the schedule's frame)
            for c, d in zip(row[1:], estimates, strict=True):
                x.add_(d, alpha=c)
            ctx.emit(i, x, x0)
        return x
