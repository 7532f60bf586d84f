"""UniP and UniC, the predictor and corrector of UniPC (Zhao et al. 2023), as coefficient functions plus one
predictor-corrector loop that any multistep solver can reuse (``unipc_*`` here, ``dpmpp_2m``/``dpmpp_3m``
with ``corrector="unic"``).

Data-prediction form (the paper's "UniPC with data prediction", Sec. 3 and App. C; diffusers' ``predict_x0``).
One step goes from node ``s = t_i`` to ``t = t_{i+1}`` with ``h = lambda_t - lambda_s`` and data estimates
``m_0 = x0_hat(x_s)``, ``m_k = x0_hat`` at the earlier nodes ``t_{i-k}``, ``r_k = (lambda_{t_{i-k}} - lambda_s) / h``
(negative), ``D_k = (m_k - m_0) / r_k`` (~ ``h x0'``), and ``B(h)`` either ``h`` ("bh1") or ``1 - e^{-h}`` ("bh2";
diffusers writes both with the opposite sign, ``hh = -h``).

- UniP-p (predictor, order p, p - 1 earlier estimates)::

      x~_t = (sigma_t/sigma_s) x_s + alpha_t h phi_1(-h) m_0 + alpha_t B(h) sum_{k<p} a_k D_k,
      R_{p-1} a = g / B(h),   R_{jk} = r_k^{j-1},   g_j = j! h phi_{j+1}(-h)   (j = 1..p-1)

- UniC-p (corrector, order p + 1): the same step recomputed once the model has been evaluated at the predicted
  ``x~_t``, with that estimate ``m_t`` as one more point at ``r = 1``, ``D_t = m_t - m_0``::

      x_t^c = (sigma_t/sigma_s) x_s + alpha_t h phi_1(-h) m_0 + alpha_t B(h) (sum_{k<p} c_k D_k + c_p D_t),
      R_p c = g / B(h)   over the points r_1, ..., r_{p-1}, 1   (j = 1..p)

  ``m_t`` is the evaluation the next step needs anyway, so the corrector costs no model evaluation: the next
  step starts from ``x_t^c`` and keeps ``m_t`` (taken at ``x~_t``) in its history.

With ``g_j`` the Taylor weights of the exact solution (``fewstep.solvers.phi``), each system makes the step exact
for data estimates polynomial in lambda of degree p - 1 (UniP) or p (UniC). UniP-2 and UniC-1 use
``a_1 = 1/2`` and ``c_1 = 1/2`` instead of solving (``g_1/B(h) = 1/2 + O(h)``, which keeps their order), as the
authors' reference code and diffusers do. With bh2, UniP-2 is exactly DPM-Solver++(2M).

The coefficients come out as weights of the data estimates (``D_k`` expanded), multiplied by ``alpha_t``
before the step loop, which then does tensor arithmetic only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
from torch import Tensor

from ..context import RunContext
from ..nodes import NodeTable
from .base import Steps
from .phi import hphi

VARIANTS = ("bh1", "bh2")
#: ``corrector=`` values of the multistep solvers that accept a UniC corrector, and their B(h).
CORRECTORS = {"unic": "bh2", "unic_bh2": "bh2", "unic_bh1": "bh1"}


class PlanStep(NamedTuple):
    """One predictor step ``x_{i+1} = ratio x_i + sum_j data[j] D_{i-j} + sum_j noise[j] eps_{i-j}`` (weights newest
    first, ``alpha``/``sigma`` factors included), so that predictors in data or noise prediction share the loop."""

    ratio: float
    data: Sequence[float]
    noise: Sequence[float]


class CorrectorStep(NamedTuple):
    """One corrector step ``x_{i+1} = ratio x_i + new D_{i+1} + sum_j old[j] D_{i-j}``."""

    ratio: float
    new: float
    old: Sequence[float]


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant: choose 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1), got {variant!r}")
    return variant


def check_corrector(corrector: str | None) -> str | None:
    """Validate a ``corrector=`` option of a multistep solver: None or a key of :data:`CORRECTORS`."""
    if corrector is not None and corrector not in CORRECTORS:
        raise ValueError(f"corrector: choose None or one of {', '.join(map(repr, CORRECTORS))}, got {corrector!r}")
    return corrector


def _b_of_h(h: float, variant: str) -> float:
    """``B(h)`` in the sign convention of this module (positive): ``h`` or ``1 - e^{-h}``."""
    return h if variant == "bh1" else hphi(1, h)


def _rhs(h: float, n: int, variant: str) -> np.ndarray:
    """``g_j / B(h) = j! h phi_{j+1}(-h) / B(h)`` for j = 1..n (``h phi_{j+1}(-h) = hphi(j+1, h) / h^j``)."""
    b = _b_of_h(h, variant)
    return np.array([math.factorial(j) * hphi(j + 1, h) / h**j / b for j in range(1, n + 1)])


def _expand(h: float, b: float, coeffs: Sequence[float], r: Sequence[float]) -> list[float]:
    """Weights of ``m_0, m_1, ...`` (and a last point, if ``r`` has one more entry than the history uses) in
    ``h phi_1(-h) m_0 + B(h) sum_k coeffs_k (m_k - m_0) / r_k``; the point list is ``r`` in order."""
    per_point = [b * c / rk for c, rk in zip(coeffs, r, strict=True)]
    return [hphi(1, h) - sum(per_point), *per_point]


def unip_weights(lam: np.ndarray, i: int, order: int, variant: str = "bh2") -> list[float]:
    """UniP-``order`` from node i to i+1: weights ``w_j`` of ``m_i, m_{i-1}, ...`` in
    ``x~_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} sum_j w_j m_{i-j}`` (module docstring).

    An infinite step (to sigma = 0, or from alpha = 0) must be first order: ``[1 - e^{-h}] -> [1]``.
    """
    check_variant(variant)
    h = float(lam[i + 1] - lam[i])
    if order == 1:
        return [hphi(1, h)]
    r = [float((lam[i - k] - lam[i]) / h) for k in range(1, order)]
    if order == 2:
        a = np.array([0.5])  # the reference code's and diffusers' simplification of g_1 / B(h) = 1/2 + O(h)
    else:
        a = np.linalg.solve(np.vander(r, increasing=True).T, _rhs(h, order - 1, variant))
    return _expand(h, _b_of_h(h, variant), a.tolist(), r)


def unic_weights(lam: np.ndarray, i: int, order: int, variant: str = "bh2") -> list[float]:
    """UniC-``order`` for the step from node i to i+1: weights ``[w_new, w_0, w_1, ...]`` of
    ``m_{i+1}`` (the estimate at the predicted state) and ``m_i, m_{i-1}, ...`` (``order`` of them) in
    ``x^c_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} (w_new m_{i+1} + sum_j w_j m_{i-j})``."""
    check_variant(variant)
    h = float(lam[i + 1] - lam[i])
    if not math.isfinite(h):
        raise ValueError("unic_weights: the corrector is not defined on a step of infinite lambda-size")
    r = [float((lam[i - k] - lam[i]) / h) for k in range(1, order)] + [1.0]
    if order == 1:
        c = np.array([0.5])  # the reference code's and diffusers' simplification, as for UniP-2
    else:
        c = np.linalg.solve(np.vander(r, increasing=True).T, _rhs(h, order, variant))
    w = _expand(h, _b_of_h(h, variant), c.tolist(), r)  # weights of m_i, m_{i-1}, ..., m_{i+1} (last)
    return [w[-1], *w[:-1]]


def unic_plan(
    nodes: NodeTable, orders: Sequence[int], variant: str = "bh2", disable: Iterable[int] = ()
) -> list[CorrectorStep | None]:
    """For each step i, the UniC correction of node i+1 at the step's predictor order (as diffusers), or None:
    after the last step (no evaluation follows), on a step of infinite lambda-size, and for steps in ``disable``."""
    a, s, lam = nodes.alpha, nodes.sigma, nodes.lam
    off = set(disable)
    plan: list[CorrectorStep | None] = []
    for i, k in enumerate(orders):
        if i == nodes.steps - 1 or i in off or not nodes.finite(i):
            plan.append(None)
        else:
            w_new, *w_old = (float(a[i + 1] * w) for w in unic_weights(lam, i, k, variant))
            plan.append(CorrectorStep(float(s[i + 1] / s[i]), w_new, w_old))
    return plan


def correct_state(x_prev: Tensor, x0: Tensor, hist: Sequence[Tensor], step: CorrectorStep) -> Tensor:
    """The UniC correction ``ratio x_prev + new x0 + sum_j old[j] hist[j]`` of a predicted state (a new tensor)."""
    x = x_prev * step.ratio  # a new tensor: the states already passed on are never changed
    x.add_(x0, alpha=step.new)
    for w, d in zip(step.old, hist, strict=False):
        x.add_(d, alpha=w)
    return x


def predict_state(x: Tensor, hist: Sequence[Tensor], hist_eps: Sequence[Tensor], step: PlanStep) -> Tensor:
    """The predictor step ``ratio x + sum_j data[j] hist[j] + sum_j noise[j] hist_eps[j]`` (a new tensor)."""
    out = x * step.ratio
    for w, d in zip(step.data, hist, strict=False):
        out.add_(d, alpha=w)
    for w, d in zip(step.noise, hist_eps, strict=False):
        out.add_(d, alpha=w)
    return out


def compensate(x0: Tensor, hist: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``weights[0] x0 + sum_j weights[j + 1] hist[j]``: a data estimate replaced by a combination of it and the
    previous ones (DC-Solver's dynamic compensation, :mod:`fewstep.solvers.ode.dc_solver`); a new tensor."""
    out = x0 * weights[0]
    for w, d in zip(weights[1:], hist, strict=False):
        out.add_(d, alpha=w)
    return out


def predict_correct(
    x: Tensor,
    nodes: NodeTable,
    ctx: RunContext,
    plan: Sequence[PlanStep],
    corrector: Sequence[CorrectorStep | None],
    compensation: Sequence[Sequence[float] | None] | None = None,
) -> Steps:
    """The predictor-corrector loop (a solver's ``solve``): at each node the model is evaluated once, at the
    predicted state; its estimate first corrects that state (UniC, when ``corrector[i - 1]`` is set), then
    the next prediction starts from the corrected state. The history holds the estimates at the predicted states,
    and the callback sees the predicted state of each step (the one the model is evaluated at next).

    ``compensation[i]`` (when given and not None): after the correction, the estimate of node i enters the
    history (and the predictor) as :func:`compensate` of it and the history (DC-Solver)."""
    depth = max([len(p.data) for p in plan] + [len(c.old) for c in corrector if c is not None] + [1])
    if compensation is not None:
        depth = max([depth] + [len(w) - 1 for w in compensation if w is not None])
    depth_eps = max([len(p.noise) for p in plan] + [0])
    hist: list[Tensor] = []
    hist_eps: list[Tensor] = []
    x_prev = x
    for i in ctx.loop():
        x0, eps = yield x, nodes.node(i)
        c = corrector[i - 1] if i > 0 else None
        if c is not None:
            x = correct_state(x_prev, x0, hist, c)
        comp = compensation[i] if compensation is not None else None
        hist = [x0 if comp is None else compensate(x0, hist, comp), *hist[: depth - 1]]
        if depth_eps:
            if eps is None:
                raise RuntimeError("predict_correct: a noise-prediction plan needs a solver with needs_eps = True")
            hist_eps = [eps, *hist_eps[: depth_eps - 1]]
        x_prev = x
        x = predict_state(x, hist, hist_eps, plan[i])
        ctx.emit(i, x, x0)
    return x
