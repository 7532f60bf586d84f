"""DPM-Solver-v3 (Zheng, Lu, Chen & Zhu 2023, "DPM-Solver-v3: Improved Diffusion ODE Solver with Empirical Model
Statistics"): a multistep exponential integrator of the ODE rewritten with the empirical model statistics
``l``, ``s``, ``b`` of :mod:`fewstep.solvers.ode.ems`, with the pseudo-order corrector.

With ``f_j = (sigma_j eps_j - l_j x_j) / alpha_j`` at the nodes and, for a step from ``s`` to ``t`` anchored at
``lambda_s`` (``L``, ``S``, ``B``, ``I_k``, ``C`` as in :meth:`EmpiricalModelStatistics.step_integrals`),
``g_j = e^{-S(lambda_j)} f_j - B(lambda_j)``, the exact solution ``x_t = alpha_t e^{-L_t} (x_s/alpha_s -
int e^{L+S} g - C)`` becomes, with ``g`` replaced by its Taylor polynomial at ``lambda_s`` (paper eq. 11-12)

    x_t = alpha_t e^{-L_t} ( x_s / alpha_s - sum_{k=0}^{n} I_k g^{(k)}(lambda_s) - C )

where the derivatives ``g^{(k)}`` come from the ``n + 1`` data points of the step:

- predictor (order ``n + 1``): the nodes ``s, s-1, ..., s-n``, derivatives of their interpolating polynomial at
  ``lambda_s`` (``predictor_pseudo=True``: ``k!`` times the k-th Newton divided difference of the first
  ``k + 1`` points, the paper's pseudo-order estimate);
- corrector (after the model is evaluated at the predicted ``x_t``, no extra evaluation, UniC-style): the same
  step recomputed from ``x_s`` with one more point, ``t``, in the order ``s, t, s-1, ...``; pseudo-order
  (``corrector_pseudo=True``, the paper's) or the interpolating polynomial (``False``, which is UniC's
  corrector for these statistics). The next step starts from the corrected state and keeps the estimate taken
  at the predicted one (the paper keeps ``sigma eps - l x`` fixed, which is the same).

``l = 1, s = b = 0`` (``statistics=None``, the default until calibrated) gives DPM-Solver++ in data prediction:
the predictor is the Taylor-exact DPM-Solver++ (``res_multistep`` at order 2, ``dpmpp_3m`` at order 3) and
the exact corrector is UniC. ``l = s = b = 0`` gives multistep DPM-Solver in noise prediction (``deis_k``).
Steps of infinite lambda-size are first-order ``x_t = alpha_t x0_hat + sigma_t eps_hat``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from numpy.polynomial.polynomial import polyfromroots
from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ...options import bool_option
from ..base import Solver, Steps, register
from ..multistep import multistep_orders
from .ems import EmpiricalModelStatistics, schedule_fingerprint

PAPER_V3 = "Zheng et al. 2023, DPM-Solver-v3: Improved Diffusion ODE Solver with Empirical Model Statistics"
Coef = float | Tensor
#: One step ``x_t = cx x_s + sum_j w_j f_j + c0`` (``f_j`` in the order of the step's points).
StepPlan = tuple[Coef, list[Coef], Coef | None]


def derivative_matrix(lam: Sequence[float], pseudo: bool) -> np.ndarray:
    """``D`` with ``g^{(k)}(lam_0) ~ sum_j D[k, j] g(lam_j)`` for k = 0..n (n + 1 points, ``lam_0`` first).

    Exact: the derivatives at ``lam_0`` of the polynomial through all points (of its Lagrange basis). Pseudo: ``g^{(k)} ~ k! g[lam_0, ..., lam_k]``, the Newton
    divided difference of the first ``k + 1`` points (paper Sec. 3.3).
    """
    r = np.asarray(lam, dtype=np.float64) - lam[0]
    n = r.size - 1
    d = np.zeros((n + 1, n + 1))
    d[0, 0] = 1.0
    if n == 0:
        return d
    if pseudo:
        for k in range(1, n + 1):
            for j in range(k + 1):  # g[x_0..x_k] = sum_j g_j / prod_{m != j} (x_j - x_m)
                d[k, j] = math.factorial(k) / math.prod(r[j] - r[m] for m in range(k + 1) if m != j)
        return d
    for j in range(n + 1):  # the Lagrange basis polynomial of point j in powers of (lambda - lam_0): k! coef_k
        others = np.delete(r, j)
        coef = polyfromroots(others) / np.prod(r[j] - others)
        d[:, j] = coef * [math.factorial(k) for k in range(n + 1)]
    return d


def v3_coefficients(
    integrals: dict, lam: Sequence[float], alpha_s: float, alpha_t: float, points: Sequence[int], pseudo: bool
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """``(cx, [w_j], c0)`` of ``x_t = cx x_s + sum_j w_j f_j + c0`` (module docstring) for the data points
    ``points`` (indices into ``integrals["S"]``/``["B"]`` and ``lam``; the first is ``s``), from
    :meth:`EmpiricalModelStatistics.step_integrals` of the step, as event-shaped float64 arrays."""
    n = len(points) - 1
    it = integrals
    d = derivative_matrix([lam[j] for j in points], pseudo)
    a = [sum(it["I"][k] * d[k, j] for k in range(n + 1)) for j in range(n + 1)]  # weight of g_j
    pre = alpha_t * np.exp(-it["L_t"])
    weights = [-pre * a_j * np.exp(-it["S"][p]) for a_j, p in zip(a, points, strict=True)]
    c0 = -pre * (it["C"] - sum(a_j * it["B"][p] for a_j, p in zip(a, points, strict=True)))
    return pre / alpha_s, weights, c0


@register
class DPMSolverV3(Solver):
    """DPM-Solver-v3: multistep predictor of order ``solver_order`` (1-3) with the pseudo-order corrector."""

    name = "dpm_solver_v3"
    order = 2
    summary = "DPM-Solver-v3: multistep predictor on the EMS-parameterised ODE + pseudo-order corrector"
    paper = PAPER_V3
    peers = "DPM-Solver-v3 reference code (thu-ml/DPM-Solver-v3)"

    @property
    def corrects_requests(self) -> bool:
        return True

    def __init__(
        self,
        statistics: EmpiricalModelStatistics | None = None,
        solver_order: int = 3,
        predictor_pseudo: bool = False,
        use_corrector: bool = True,
        corrector_pseudo: bool = True,
        lower_order_final: bool = True,
    ):
        if statistics is not None and not isinstance(statistics, EmpiricalModelStatistics):
            raise TypeError(
                "statistics: need an EmpiricalModelStatistics (fewstep.compute_ems) or None "
                f"(l = 1, s = b = 0: DPM-Solver++), got {type(statistics).__name__}"
            )
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order: choose 1, 2 or 3, got {solver_order!r}")
        self.statistics = statistics
        self.solver_order = int(solver_order)
        self.predictor_pseudo = bool_option("predictor_pseudo", predictor_pseudo)
        self.use_corrector = bool_option("use_corrector", use_corrector)
        self.corrector_pseudo = bool_option("corrector_pseudo", corrector_pseudo)
        self.lower_order_final = bool_option("lower_order_final", lower_order_final)

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return multistep_orders(nodes, self.solver_order, self.lower_order_final)

    def _stats(self, x: Tensor, nodes: NodeTable) -> EmpiricalModelStatistics:
        stats = self.statistics if self.statistics is not None else EmpiricalModelStatistics.constant()
        if stats.event not in ((), tuple(x.shape[1:])):
            raise ValueError(f"statistics: per-dimension shape {stats.event} does not match the data's {x.shape[1:]}")
        if "| schedule=" in stats.key:
            want = stats.key.split("| schedule=")[1].split(" | ")[0]
            have = schedule_fingerprint(nodes.schedule)
            if want != have:
                raise ValueError(f"statistics: computed for schedule {want}, but the run uses {have}")
        return stats

    def plan(
        self, x: Tensor, nodes: NodeTable
    ) -> tuple[list[StepPlan | None], list[StepPlan | None], list[tuple[float, Coef] | None]]:
        """Per step the predictor (None: first-order step of infinite size) and the corrector of its end node
        (None: none), and per node the coefficients ``(c_eps, c_x)`` of ``f = c_eps eps - c_x x`` (or None)."""
        stats = self._stats(x, nodes)
        lam, a, s = nodes.lam, nodes.alpha, nodes.sigma
        conv = lambda v: float(v) if v.ndim == 0 else torch.as_tensor(v).to(x.device, x.dtype)  # noqa: E731

        def conv_plan(coef: tuple[np.ndarray, list[np.ndarray], np.ndarray]) -> StepPlan:
            cx, w, c0 = coef
            return conv(cx), [conv(v) for v in w], (conv(c0) if np.any(c0 != 0) else None)

        orders = self.step_orders(nodes)
        pred: list[StepPlan | None] = []
        corr: list[StepPlan | None] = []
        used: set[int] = set()
        for i, k in enumerate(orders):
            if not nodes.finite(i):
                pred.append(None)
                corr.append(None)
                continue
            data = [i - j for j in range(k)]
            used.update(data)
            correct = self.use_corrector and i < nodes.steps - 1
            every = data + [i + 1] if correct else data  # the data points of the step's predictor and corrector
            it = stats.step_integrals(lam[i], lam[i + 1], [lam[j] for j in every], k if correct else k - 1)
            local = {j: m for m, j in enumerate(every)}  # node index -> position in it["S"], it["B"]
            lam_loc = [lam[j] for j in every]
            pos = [local[j] for j in data]
            pred.append(conv_plan(v3_coefficients(it, lam_loc, a[i], a[i + 1], pos, self.predictor_pseudo)))
            if correct:
                used.add(i + 1)
                pts = [pos[0], local[i + 1], *pos[1:]]
                corr.append(conv_plan(v3_coefficients(it, lam_loc, a[i], a[i + 1], pts, self.corrector_pseudo)))
            else:
                corr.append(None)
        node_f: list[tuple[float, Coef] | None] = [None] * nodes.steps
        for j in sorted(used):
            node_f[j] = (float(s[j] / a[j]), conv(stats.value("l", lam[j])[0] / a[j]))
        return pred, corr, node_f

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        pred, corr, node_f = self.plan(x, nodes)
        a, s = nodes.alpha, nodes.sigma
        depth = self.solver_order
        hist: list[Tensor | None] = []  # f at the nodes, newest first (taken at the predicted states)
        x_prev = x
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            nf = node_f[i]
            f = None if nf is None else eps * nf[0] - x * nf[1]  # f = (sigma eps - l x) / alpha
            c = corr[i - 1] if i > 0 else None
            if c is not None:  # the corrector of step i - 1 (points s, t, s-1, ...)
                x = _combine(x_prev, c, [hist[0], f, *hist[1:]])
            hist = [f, *hist[: depth - 1]]
            x_prev = x
            p = pred[i]
            x = float(a[i + 1]) * x0 + float(s[i + 1]) * eps if p is None else _combine(x, p, hist)
            ctx.emit(i, x, x0)
        return x


def _combine(x: Tensor, plan: StepPlan, fs: Sequence[Tensor | None]) -> Tensor:
    """``cx x + sum_j w_j f_j + c0`` (a new tensor)."""
    cx, weights, c0 = plan
    out = x * cx
    for w, f in zip(weights, fs, strict=False):
        assert f is not None
        if isinstance(w, Tensor):
            out.addcmul_(w, f)
        else:
            out.add_(f, alpha=w)
    return out if c0 is None else out.add_(c0)
