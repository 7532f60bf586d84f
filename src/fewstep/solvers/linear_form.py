"""The linear form of a deterministic solver: every state it evaluates the model at, and its output, as a linear
combination of the start noise and the model's data estimates.

Every deterministic fewstep ODE solver is linear in its inputs: each update multiplies states and answers by numbers
fixed by the node table and adds them (the data / noise conversion ``eps = (x - alpha x0_hat) / sigma`` is linear
too). So with ``X_k`` the state of the k-th model request, ``D_k = x0_hat(X_k, t_k)`` its answer and ``N`` the
requests,

    X_k = C[k, 0] x_T + sum_{j<k} C[k, 1 + j] D_j        (k = 0 .. N; X_N is the solver's output),

and :func:`linear_form` reads the lower-triangular ``C`` ((N + 1) x (N + 1)) off one run of the solver's own update
rule on symbolic states: a state is its vector of coefficients of ``(x_T, D_0, .., D_{N-1})``, the start is ``e_0``
and the answer to request k is ``x0_hat = e_{k+1}``, ``eps_hat = (X_k - alpha_k e_{k+1}) / sigma_k``. No model is
called.

``C`` belongs to the schedule's frame: another schedule with the same noise levels ``sigma / alpha`` (k-diffusion's
``x / alpha``, for one) has states scaled by ``alpha``. Divided by ``n = alpha + sigma`` (never 0), every frame gives
the same state, ``x / n = (x0 + s eps) / (1 + s)`` with ``s = sigma / alpha``; :meth:`LinearForm.rows` gives the
form in that frame,

    x_k / n_k = R[k, 0] x_T / n_0 + sum_{j<k} R[k, 1 + j] D_j,      R[k, 0] = C[k, 0],  R[k, 1 + j] = C[k, 1 + j] / n_k
    (times n_0 / n_k in the first),

which is what the non-stationary solver takes. This is the form that :class:`~fewstep.solvers.ode.nonstationary.Nonstationary` runs with fitted
coefficients (Shaul et al. 2024, "Bespoke Non-Stationary Solvers for Fast Sampling of Diffusion and Flow Models":
each step a free linear combination of the previous states and model outputs).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..context import RunContext
from ..nodes import NodeTable
from .base import Solver


class LinearForm(NamedTuple):
    """``coefficients`` C ((N + 1) x (N + 1), lower triangular, row 0 = e_0) in the schedule's frame, the ``times``
    (N,) of the requests and ``norms`` (N + 1,), ``alpha + sigma`` at the requests and at the output (module
    docstring)."""

    coefficients: np.ndarray
    times: np.ndarray
    norms: np.ndarray

    def rows(self) -> list[list[float]]:
        """The rows ``R[1] .. R[N]`` in the frame-free form (module docstring), row k of k + 1 numbers."""
        return frame_free(self.coefficients, self.norms)


def frame_free(coefficients: np.ndarray, norms: np.ndarray) -> list[list[float]]:
    """Rows 1 .. N of ``coefficients`` (in a schedule's frame) divided by ``norms`` (module docstring)."""
    out = []
    for k in range(1, len(norms)):
        row = coefficients[k, : k + 1] / norms[k]
        row[0] *= norms[0]
        out.append(row.tolist())
    return out


def linear_form(solver: Solver, nodes: NodeTable) -> LinearForm:
    """The linear form of ``solver`` over ``nodes`` (module docstring). ValueError for a stochastic solver."""
    if solver.stochastic:
        raise ValueError(f"solver: {solver.name!r} is stochastic; only a deterministic solver has a linear form")
    size = solver.nfe(nodes) + 1
    basis = torch.eye(size, dtype=torch.float64)
    steps = solver.solve(basis[:, :1].clone(), nodes, RunContext(nodes))  # column vector: the coefficients of X_0
    rows: list[torch.Tensor] = []
    times: list[float] = []
    norms: list[float] = []
    x, point = next(steps)
    while True:
        k = len(rows)
        if k + 1 >= size:
            raise ValueError(f"solver: {solver.name!r} requested more than its {size - 1} evaluations")
        rows.append(x[:, 0].clone())
        times.append(point.t)
        norms.append(point.alpha + point.sigma)
        x0 = basis[:, k + 1 : k + 2]
        try:
            x, point = steps.send((x0, (x - point.alpha * x0) / point.sigma))
        except StopIteration as done:
            rows.append(done.value[:, 0].clone())
            break
    if len(rows) != size:
        raise ValueError(f"solver: {solver.name!r} made {len(rows) - 1} requests, not its {size - 1} evaluations")
    end = float(nodes.alpha[-1] + nodes.sigma[-1])
    return LinearForm(torch.stack(rows).numpy(), np.asarray(times, dtype=np.float64), np.asarray([*norms, end]))
