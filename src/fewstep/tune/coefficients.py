"""Fitting a tuned sampler's coefficients: the solver's run rewritten as a non-stationary linear solver
(:mod:`fewstep.solvers.ode.nonstationary`) whose weights are fitted, step by step, to the teacher's trajectory.

With ``C`` the linear form of the tuned solver at its request times (:func:`~fewstep.solvers.linear_form.
linear_form`: ``x_k = C[k, 0] x_T + sum_{j<k} C[k, 1 + j] D_j``), the state of request k >= 2 (and the output,
k = N) gets a correction along the differences of the data estimates,

    x_k <- x_k + a_k sum_{j < k-1} delta_j (D_j - D_{k-1}),

which leaves the solver exact where every estimate is the same (a constant data estimate) and is scaled by
``a_k = alpha(t_k)`` (1 for the output). One run on the calibration noise chooses each ``delta`` in turn, given
the states and estimates of the fitted steps before it, by ridge-regularised least squares against the teacher's
state at ``t_k`` (:func:`teacher_state`; its final sample for the output):

    delta = argmin ||x_k(delta) - x*(t_k)||^2 + mu ||delta||^2,      mu = RIDGE tr(F^T F) / (k - 1),

with ``F`` the columns ``a_k (D_j - D_{k-1})``. The run spends the sampler's ``nfe`` network calls; :func:`fitted`
returns the rows and the calibration RMSE of the fitted sampler's output. Greedy, and each least-squares problem
has at most N - 1 unknowns against every entry of the calibration batch, so it does not over-fit a batch of a few
hundred samples; :func:`fewstep.tune` keeps it only if it is also better on the held-out noise.

:func:`refined` then moves every row end to end, as Shaul et al. 2024 train a bespoke non-stationary solver (here on
the calibration batch, within the tuning's budget): with ``r_k`` the frame-free rows, ``n = alpha + sigma`` and the
run ``x_k = r_k[0] (n_k / n_0) x_T + sum_{j<k} r_k[1 + j] n_k D_j(x_j)``, Adam minimises

    L(r) = sum_i w_i ||x_N(r; x_T,i) - x*_i||^2 / d

(``w_i = 1 / B`` without a stratified batch's weights, ``d`` one sample's size), its gradient through the network's
answers ``D_j`` by autograd. Where the network's output has no gradient in its input (a network that detaches it, as
the embedded exact mixtures do), the gradient holds the answers fixed; every step's loss is still that of a real
run, and the lowest is kept. The greedy fit matches each state to the teacher's; this minimises the error of the
output alone, which is what is measured.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..model import Denoiser
from ..nodes import NodeTable
from ..solvers import get_solver
from ..solvers.linear_form import frame_free, linear_form
from ..solvers.ode.nonstationary import in_frame
from .budget import Budget, BudgetExhausted, rmse, square_errors, weighted_mean
from .teacher import Teacher

#: The ridge weight ``mu`` relative to the mean diagonal of ``F^T F`` (module docstring).
RIDGE = 1e-3

#: :func:`refined`: Adam's learning rate on the frame-free rows (their entries are of order one), decayed to 0 on a
#: cosine over the steps its budget allows.
LEARNING_RATE = 1e-3

#: The teacher's grid states the interpolation at a request time uses (a cubic through the nearest four).
INTERPOLATION_POINTS = 4


class FittedCoefficients(NamedTuple):
    """The rows of a :class:`~fewstep.solvers.ode.nonstationary.Nonstationary` solver (frame-free,
    :meth:`~fewstep.solvers.linear_form.LinearForm.rows`), its request ``times`` and the calibration RMSE of its
    output against the teacher."""

    rows: list[list[float]]
    times: np.ndarray
    calibration: float


def teacher_state(teacher: Teacher, t: float) -> Tensor:
    """The teacher's state at time ``t``: its trajectory's states at the :data:`INTERPOLATION_POINTS` grid times
    nearest to ``t``, through Lagrange's interpolating polynomial in the schedule time."""
    grid = teacher.grid
    order = np.argsort(np.abs(grid - t), kind="stable")[:INTERPOLATION_POINTS]
    nearest = grid[order]
    out = torch.zeros_like(teacher.states[0], dtype=torch.float64)
    for i, ti in zip(order, nearest, strict=True):
        weight = math.prod((t - tj) / (ti - tj) for tj in nearest if tj != ti)
        out += weight * teacher.states[i].to(torch.float64)
    return out


def fitted(
    denoiser: Denoiser, solver: str, options: dict, times: np.ndarray, noise: Tensor, teacher: Teacher, budget: Budget
) -> FittedCoefficients | None:
    """The fitted rows of ``solver`` (with ``options``) at node ``times`` (module docstring), from one run on the
    calibration ``noise`` (``nfe`` calls from ``budget``); None when its requests are not at strictly decreasing
    times (a singlestep solver that evaluates twice at one time), which the non-stationary solver cannot take."""
    base = get_solver(solver, **options)
    batch, device, dtype = noise.shape[0], noise.device, noise.dtype
    table = NodeTable.build(denoiser, np.concatenate([times, [np.nan]]), True, batch, device, dtype)
    form = linear_form(base, table)
    n = len(form.times)
    if n > 1 and not np.all(np.diff(form.times) < 0):
        return None
    nodes = NodeTable.build(denoiser, np.concatenate([form.times, [np.nan]]), True, batch, device, dtype)
    scale = [*nodes.alpha[:n].tolist(), 1.0]
    coef = form.coefficients.copy()
    budget.reserve(n)
    stack = denoiser.stack(budget.calls, False)
    start = noise.to(torch.float64)
    estimates: list[Tensor] = []

    def state(k: int) -> Tensor:
        return coef[k, 0] * start + sum((coef[k, 1 + j] * d for j, d in enumerate(estimates)), torch.zeros(()))

    # a stratified batch's weights (Teacher.weights) weigh each sample's entries in the least squares by sqrt(w_i B)
    root = None if teacher.weights is None else (teacher.weights.to(device, torch.float64) * batch).sqrt()

    def entries(v: Tensor) -> Tensor:
        return (v if root is None else v * root.reshape(batch, *[1] * (v.ndim - 1))).reshape(-1)

    x = start
    with torch.no_grad():
        for k in range(n + 1):
            if k:
                x = state(k)
            if k >= 2:
                columns = torch.stack([scale[k] * entries(d - estimates[-1]) for d in estimates[:-1]], dim=1)
                target = teacher.final if k == n else teacher_state(teacher, float(form.times[k]))
                residual = entries(target.to(torch.float64) - x)
                gram = columns.T @ columns
                mu = RIDGE * torch.trace(gram) / gram.shape[0]
                if bool(mu > 0) and bool(torch.isfinite(gram).all() and torch.isfinite(residual).all()):
                    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
                    step = (scale[k] * torch.linalg.solve(gram + mu * eye, columns.T @ residual)).numpy()
                    coef[k, 1:k] += step  # D_0 .. D_{k-2}
                    coef[k, k] -= step.sum()  # D_{k-1}
                    x = state(k)
                # else: the estimates agree (nothing to correct along) or the run is not finite: the row stays
            if k == n:
                break
            estimates.append(stack.evaluate(x.to(noise.dtype), nodes.node(k))[0].to(torch.float64))
    return FittedCoefficients(frame_free(coef, form.norms), form.times, rmse(x, teacher.final, teacher.weights))


def refined(
    denoiser: Denoiser,
    fit: FittedCoefficients,
    noise: Tensor,
    teacher: Teacher,
    budget: Budget,
    lr: float | None = None,
) -> tuple[FittedCoefficients, int]:
    """``fit``'s rows moved end to end by Adam on the output's error against the teacher (module docstring), until
    the ``budget`` is spent: each step is one run (``nfe`` calls) and its backward pass (``nfe``), and a last run
    scores the last rows. Returns the rows of the lowest calibration loss seen (``fit`` itself when none is lower or
    the run is not finite) and the Adam steps taken."""
    lr = LEARNING_RATE if lr is None else float(lr)
    n = len(fit.times)
    batch, device, dtype = noise.shape[0], noise.device, noise.dtype
    nodes = NodeTable.build(denoiser, np.concatenate([fit.times, [np.nan]]), True, batch, device, dtype)
    norms = (nodes.alpha + nodes.sigma).tolist()  # alpha + sigma at the nodes, for the frame-free rows
    rows = [torch.tensor(r, dtype=torch.float64, device=device, requires_grad=True) for r in fit.rows]
    optimiser = torch.optim.Adam(rows, lr=lr)
    stack = denoiser.stack(budget.calls, False)
    start, target = noise.to(torch.float64), teacher.final.to(device, torch.float64)
    weights = None if teacher.weights is None else teacher.weights.to(device, torch.float64)
    best = (math.inf, fit.rows)  # the first run's loss is the fitted rows' own
    total = max(1, (budget.left - n) // (2 * n))  # the steps the budget allows, keeping the last score

    def loss() -> Tensor:
        x, estimates = start, []
        for k, row in enumerate(in_frame(rows, norms)):  # x_{k+1} = row[0] x_T + sum_j row[1 + j] D_j
            estimates.append(stack.evaluate(x.to(dtype), nodes.node(k))[0].to(torch.float64))
            x = row[0] * start + sum(c * d for c, d in zip(row[1:], estimates, strict=True))
        return weighted_mean(square_errors(x, target), weights)

    def keep(value: float) -> None:
        nonlocal best
        if value < best[0]:
            best = (value, [r.detach().cpu().tolist() for r in rows])

    steps = 0
    try:
        while steps < total:
            budget.reserve(3 * n)  # this step and the last score
            for group in optimiser.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * steps / total))  # cosine decay
            optimiser.zero_grad()
            value = loss()
            if not bool(torch.isfinite(value)):  # diverged
                break
            if steps:
                keep(float(value.detach()))
            else:
                best = (float(value.detach()), fit.rows)
            value.backward()
            budget.calls.backward += n
            optimiser.step()
            steps += 1
        if steps:
            with torch.no_grad():
                value = loss()
            if bool(torch.isfinite(value)):
                keep(float(value))
    except BudgetExhausted:
        pass
    if best[1] is fit.rows:  # nothing lower than the fitted rows' own loss
        return fit, steps
    return FittedCoefficients(best[1], fit.times, math.sqrt(best[0])), steps
