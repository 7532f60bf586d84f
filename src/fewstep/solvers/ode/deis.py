"""DEIS: the diffusion exponential integrator sampler (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
Exponential Integrator"), its multistep AB variants.

The PF-ODE with the noise prediction is linear in ``y = x/alpha`` along ``rho = sigma/alpha``:
``dy/drho = eps(x, t)``, so the exact step is ``y_{i+1} = y_i + int_{rho_i}^{rho_{i+1}} eps drho``. DEIS
replaces ``eps`` by the polynomial through its last ``k`` values (``eps_i, ..., eps_{i-k+1}``) in an
interpolation variable ``v`` and integrates exactly (the exponential integrator: the linear part exactly, the
nonlinear part by a polynomial):

    y_{i+1} = y_i + sum_{j<k} W_j eps_{i-j},    W_j = int_{rho_i}^{rho_{i+1}} l_j(v(rho)) drho,

``l_j`` the Lagrange basis on the nodes ``v_i, ..., v_{i-k+1}``. Written in ``t`` this is the paper's tAB
coefficient ``C_ij = int Psi(t_{i+1}, tau) (1/2) g^2(tau) L^{-T}(tau) prod_{m != j} (tau - t_{i-m})/(t_{i-j} - t_{i-m})
dtau`` (with ``Psi = alpha_{i+1}/alpha(tau)``: ``C_ij = alpha_{i+1} W_j``). The variants:

- ``deis_1/2/3`` (default ``basis="logrho"``): interpolation in ``log rho = -lambda``, ``W_j`` in closed form,
  ``W_j = -rho_i sum_p c_jp p! h^{p+1} phi_{p+1}(-h)`` with ``l_j = sum_p c_jp (lambda_{i+1} - lambda)^p``.
  This is what diffusers' ``DEISMultistepScheduler`` implements (``solver_type="logrho"``); it is the multistep noise-prediction exponential integrator of DPM-Solver with exact Lagrange
  weights, and like every other fewstep solver it depends on the noise levels only, not on how the schedule
  labels its time.
- ``basis="t"``: **tAB**, interpolation in the schedule's time t (the paper's main method). It depends on the
  time variable: the same noise levels labelled differently (EDM's t = sigma, as in the k-diffusion wrapper,
  which represents every schedule by EDM) give rhoAB. ``W_j`` is computed in ``u = log rho``
  (``drho = e^u du``, ``t(u)`` = the schedule's exact ``t_of_lambda(-u)``) by composite Gauss-Legendre
  (16 points per panel of width <= 0.5 in u), on which the integrand is analytic: equal to the paper's
  integrals to rounding for the continuous schedules (the repository's reference code sums 10 000 rectangles
  instead). A ``DiscreteVP``'s log alpha is piecewise linear in t, where the rule is accurate to the size of
  its kinks and tAB interpolates across them.
- ``deis_rho_2/3``: **rhoAB**, interpolation in rho itself: ``W_j`` the exact integrals of the Lagrange basis
  (variable-step Adams-Bashforth on ``dy/drho = eps``, the paper's rhoAB).

All warm up with lower orders and follow diffusers' ``lower_order_final`` rule (:func:`multistep_orders`); the
steps written out are DDIM plus corrections (:func:`fewstep.solvers.frame.eps_frame_step`), finite from
alpha = 0 and to sigma = 0, where the step is first order (DDIM).

``corrector="unic"`` (every DEIS variant; also ``"unic_bh1"``/``"unic_bh2"``) adds UniPC's UniC corrector at no
extra model evaluation and raises the order by one (:mod:`fewstep.solvers.unic`). The DEIS step is then the
predictor, written from the state the step starts at (which the corrector may have changed):

    x~_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_{j<k} W_j eps_{i-j}

(``y = x/alpha``; ``W_0 = rho_{i+1} - rho_i`` at order 1, DDIM), and once the model has been evaluated at
``x~_{i+1}`` (the evaluation the next step needs anyway) UniC-k recomputes the step in UniPC's data-prediction form
from ``x_i``, ``x0_hat`` at the last k nodes and the new estimate ``m_{i+1}``,

    x^c_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} h phi_1(-h) m_i + alpha_{i+1} B(h) (sum_{j<k} c_j D_j + c_k D_t),

(``D_j = (m_{i-j} - m_i) / r_j``, ``D_t = m_{i+1} - m_i``, the coefficients of :func:`~fewstep.solvers.unic.unic_weights`),
exact for data estimates polynomial of degree k in lambda, so the corrected method has order k + 1 (the
predictor's O(h^{k+1}) local error enters only through the O(h)-weighted ``m_{i+1}``). Steps of infinite
lambda-size stay uncorrected DDIM steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, register
from ..frame import eps_frame_step, lagrange_basis, lagrange_integrals, run_plan
from ..multistep import multistep_orders
from ..phi import hphi
from ..unic import CORRECTORS, PlanStep, check_corrector, predict_correct, unic_plan

PAPER_DEIS = "Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator"
GL_POINTS = 16  # Gauss-Legendre points per panel of the tAB quadrature
PANEL = 0.5  # widest panel in u = log rho (the integrand's singularities lie >= pi/2 off the real u axis)


def logrho_weights(nodes: NodeTable, i: int, k: int) -> list[float]:
    """``W_j = int_{rho_i}^{rho_{i+1}} l_j(log rho) drho`` in closed form (finite step, ``k >= 1``)."""
    lam = nodes.lam
    h = float(lam[i + 1] - lam[i])
    rho_i = float(nodes.sigma[i] / nodes.alpha[i])
    # int_{u_i}^{u_{i+1}} e^u s^p du = -rho_i p! h^{p+1} phi_{p+1}(-h), with s = u - u_{i+1} = lambda_{i+1} - lambda
    moments = [math.factorial(p) * hphi(p + 1, h) for p in range(k)]
    knots = [float(lam[i + 1] - lam[i - m]) for m in range(k)]
    out = []
    for j in range(k):
        others = [knots[m] for m in range(k) if m != j]
        coef = np.atleast_1d(np.poly(others))[::-1] / math.prod(knots[j] - o for o in others)  # ascending powers
        out.append(-rho_i * math.fsum(float(c) * mo for c, mo in zip(coef, moments, strict=True)))
    return out


def rho_weights(nodes: NodeTable, i: int, k: int) -> list[float]:
    """``W_j = int_{rho_i}^{rho_{i+1}} l_j(rho) drho`` (exact polynomial integrals)."""
    rho = [float(nodes.sigma[i - m] / nodes.alpha[i - m]) for m in range(-1, k)]  # rho_{i+1}, rho_i, ..., rho_{i-k+1}
    return lagrange_integrals(rho[1:], rho[1], rho[0])


def t_weights(nodes: NodeTable, steps: list[tuple[int, int]]) -> list[list[float]]:
    """``W_j = int_{rho_i}^{rho_{i+1}} l_j(t(rho)) drho`` for each ``(i, k)`` of ``steps`` (finite steps), by
    composite Gauss-Legendre in ``u = log rho``; the schedule's ``t_of_lambda`` is called once for all points."""
    if not steps:
        return []
    x_gl, w_gl = np.polynomial.legendre.leggauss(GL_POINTS)
    rules = []
    for i, _ in steps:
        a, b = -float(nodes.lam[i]), -float(nodes.lam[i + 1])  # u decreases along the step
        edges = np.linspace(a, b, max(1, math.ceil(abs(b - a) / PANEL)) + 1)
        mid, half = 0.5 * (edges[:-1] + edges[1:]), 0.5 * (edges[1:] - edges[:-1])
        u = (mid[:, None] + half[:, None] * x_gl).ravel()
        rules.append((u, (half[:, None] * w_gl).ravel() * np.exp(u)))
    u_all = np.concatenate([u for u, _ in rules])
    t_all = nodes.schedule.t_of_lambda(torch.from_numpy(-u_all)).numpy()
    out, start = [], 0
    for (i, k), (u, w) in zip(steps, rules, strict=True):
        tq = t_all[start : start + len(u)]
        start += len(u)
        knots = [float(nodes.t[i - m]) for m in range(k)]
        out.append([float(v) for v in lagrange_basis(knots, tq) @ w])
    return out


def deis_weights(nodes: NodeTable, orders: list[int], basis: str) -> list[list[float]]:
    """The weights ``W_j`` of every step (``[]`` for a first-order step, which is DDIM)."""
    high = [(i, k) for i, k in enumerate(orders) if k > 1]
    out: list[list[float]] = [[] for _ in orders]
    if basis == "t":
        for (i, _), w in zip(high, t_weights(nodes, high), strict=True):
            out[i] = w
    else:
        fn = logrho_weights if basis == "logrho" else rho_weights
        for i, k in high:
            out[i] = fn(nodes, i, k)
    for i, w in enumerate(out):
        if not all(math.isfinite(wj) for wj in w):  # repeated nodes: fall back to DDIM
            out[i] = []
    return out


class _DEIS(Solver):
    paper = PAPER_DEIS
    _bases: tuple[str, ...] = ("logrho", "t")

    @property
    def corrects_requests(self) -> bool:
        return self.corrector is not None

    def __init__(self, lower_order_final: bool = True, basis: str = "logrho", corrector: str | None = None):
        if not isinstance(lower_order_final, bool):
            raise TypeError(f"lower_order_final: must be a bool, got {lower_order_final!r}")
        if basis not in self._bases:
            raise ValueError(f"basis: choose one of {', '.join(map(repr, self._bases))}, got {basis!r}")
        self.lower_order_final = lower_order_final
        self.basis = basis
        self.corrector = check_corrector(corrector)

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return multistep_orders(nodes, self.order, self.lower_order_final)

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        orders = self.step_orders(nodes)
        weights = deis_weights(nodes, orders, self.basis)
        if self.corrector is not None:
            corr = unic_plan(nodes, orders, CORRECTORS[self.corrector])
            return (yield from predict_correct(x, nodes, ctx, predictor_plan(nodes, weights), corr))
        plan = [eps_frame_step(nodes.alpha[i + 1], nodes.sigma[i + 1], w) for i, w in enumerate(weights)]
        return (yield from run_plan(x, nodes, ctx, plan, None))


def predictor_plan(nodes: NodeTable, weights: list[list[float]]) -> list[PlanStep]:
    """The DEIS steps as UniC predictors, from the state itself: ``x_{i+1} = (alpha_{i+1}/alpha_i) x_i +
    alpha_{i+1} sum_j W_j eps_{i-j}`` on finite steps (``W = [rho_{i+1} - rho_i]`` for a first-order step), and
    DDIM in (x0, eps) form ``alpha_{i+1} x0_i + sigma_{i+1} eps_i`` on a step of infinite lambda-size."""
    a, s = nodes.alpha, nodes.sigma
    plan: list[PlanStep] = []
    for i, w in enumerate(weights):
        if not nodes.finite(i):
            plan.append(PlanStep(0.0, [float(a[i + 1])], [float(s[i + 1])]))
            continue
        w = w or [float(s[i + 1] / a[i + 1] - s[i] / a[i])]
        plan.append(PlanStep(float(a[i + 1] / a[i]), [], [float(a[i + 1] * wj) for wj in w]))
    return plan


@register
class DEIS1(_DEIS):
    name = "deis_1"
    order = 1
    summary = "DEIS-1: the exponential integrator on the noise-prediction ODE (= DDIM)"
    peers = "diffusers DEISMultistepScheduler(solver_order=1)"


@register
class DEIS2(_DEIS):
    name = "deis_2"
    order = 2
    summary = "DEIS-2: multistep exponential integrator, eps extrapolated in log rho (basis='t': the paper's tAB)"
    peers = "diffusers DEISMultistepScheduler(solver_order=2)"


@register
class DEIS3(_DEIS):
    name = "deis_3"
    order = 3
    summary = "DEIS-3: multistep exponential integrator, eps extrapolated in log rho (basis='t': the paper's tAB)"
    peers = "diffusers DEISMultistepScheduler(solver_order=3)"


class _DEISRho(_DEIS):
    _bases = ("rho",)

    def __init__(self, lower_order_final: bool = True, corrector: str | None = None):
        super().__init__(lower_order_final, basis="rho", corrector=corrector)


@register
class DEISRho2(_DEISRho):
    name = "deis_rho_2"
    order = 2
    summary = "DEIS rhoAB-2: variable-step Adams-Bashforth on dy/drho = eps"
    peers = "DEIS repository get_sampler_rho_ab(ab_order=1)"


@register
class DEISRho3(_DEISRho):
    name = "deis_rho_3"
    order = 3
    summary = "DEIS rhoAB-3: variable-step Adams-Bashforth on dy/drho = eps"
    peers = "DEIS repository get_sampler_rho_ab(ab_order=2)"
