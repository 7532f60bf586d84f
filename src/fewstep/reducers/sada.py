"""SADA-style step skipping: skip the network where the ODE trajectory is stable, by its second-order difference.

Jiang et al. 2025, "SADA: Stability-guided Adaptive Diffusion Acceleration", decide from the sampling trajectory
itself, with one stability criterion built on the gradient of the probability-flow ODE that the solver follows, where
the network may be skipped and its output approximated from the solver's own history. Here, the step-wise part: after
each real call ``k`` the layer forms the ODE's gradient in ``u`` (lambda = log(alpha/sigma), or t) at the request,

    y_k = dx/du = (alpha'(t) x0_hat + sigma'(t) eps_hat) / (du/dt),

and, from the third real call on, its second-order difference: the gap between ``y_k`` and the straight line
through the two previous gradients, evaluated at ``u_k``,

    Delta^2 y_k = y_k - [l_{k-2}(u_k) y_{k-2} + l_{k-1}(u_k) y_{k-1}]   (Lagrange weights l; y_k - 2 y_{k-1} + y_{k-2}
                                                                         on equal steps),

    s_k = ||Delta^2 y_k|| / ||y_k||   (norms over the whole batch).

The trajectory is stable where ``s_k < threshold``: its gradient moves along a line, so the output at the next
request is predicted well by extrapolation; the next request (at most ``max_skips`` in a row) is then answered by
the Lagrange extrapolation of the last ``order`` real outputs (as :class:`~fewstep.reducers.SkipCache`, whose
machinery this layer shares; it differs in the criterion: a curvature of the trajectory rather than the size of
the output's change). The abstract does not give the criterion's normalisation or threshold; these are ours, and the
token-wise half of SADA (sparsity inside a transformer's call) needs access to the network's layers, which an
evaluation layer does not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..model.point import Point
from ..model.stack import Prediction
from ..solvers.frame import lagrange_basis
from .counts import Output
from .skipping import Criterion, SkipCache


def ode_gradient(x: Tensor, p: Point, answer: Prediction, variable: str) -> Tensor | None:
    """``dx/du`` of the probability-flow ODE at ``(x, p)`` from the answer ``(x0_hat, eps_hat)``, ``u`` lambda or t
    (None where lambda's rate is not finite, at alpha = 0 or sigma = 0)."""
    x0, eps = answer
    if eps is None:
        eps = (x - p.alpha * x0) / p.sigma
    rate = 1.0
    if variable == "lambda":
        rate = p.dalpha / p.alpha - p.dsigma / p.sigma if p.alpha > 0 and p.sigma > 0 else math.nan
        if not (math.isfinite(rate) and rate != 0.0):
            return None
    return (x0 * (p.dalpha / rate)).add_(eps, alpha=p.dsigma / rate)


def second_difference(gradients: list[tuple[float, Tensor]]) -> Tensor:
    """``y_2 - line(u_2)``: the last of three ``(u, y)`` minus the line through the first two, at its ``u``."""
    (u0, y0), (u1, y1), (u2, y2) = gradients[-3:]
    w0, w1 = lagrange_basis([u0, u1], np.array(u2)).tolist()
    return y2 - y0 * w0 - y1 * w1


def stability(gradients: list[tuple[float, Tensor]]) -> float:
    """``s = ||Delta^2 y|| / ||y||`` over the whole batch (one host read). The batch's norms, not a maximum of
    per-sample ratios: one sample's gradient can pass near zero (a 2-D trajectory turning), which would make its own
    ratio arbitrarily large while the batch's trajectories are smooth."""
    y = gradients[-1][1]
    return float(second_difference(gradients).norm() / y.norm().clamp_min(torch.finfo(y.dtype).tiny))


@dataclass
class SADA(SkipCache):
    """An evaluation layer (``fewstep.sample(..., wrappers=[SADA(threshold=0.05)])``): :class:`SkipCache`'s options,
    with the stability criterion of the module docstring (``threshold`` on ``s_k``; ``warmup`` default
    ``max(order, 3)``, the first three real calls give the first ``s``)."""

    threshold: float = 0.05

    def __post_init__(self) -> None:
        if self.warmup is None and isinstance(self.order, int):
            self.warmup = max(self.order, 3)
        super().__post_init__()

    def criterion(self, needs_eps: bool) -> Criterion:
        gradients: list[tuple[float, Tensor]] = []
        threshold, variable = self.threshold, self.variable

        def stable(x: Tensor, p: Point, answer: Prediction, history: list[Output]) -> bool:
            y = ode_gradient(x, p, answer, variable)
            if y is None:
                gradients.clear()
                return False
            u = p.lam if variable == "lambda" else p.t
            gradients[:] = [g for g in gradients if g[0] != u]  # a later request at a time replaces the earlier one
            gradients.append((u, y))
            del gradients[:-3]
            return len(gradients) == 3 and stability(gradients) < threshold

        return stable
