"""SA-Solver: stochastic Adams predictor-corrector in the data prediction (Xue et al. 2023, "SA-Solver: Stochastic
Adams Solver for Fast Sampling of Diffusion Models", Sec. 4-5, Alg. 1).

With ``tau(t) >= 0`` the variance-controlled reverse SDE has, on a step ``h = lambda_t - lambda_s`` with constant
``tau`` (``c = 1 + tau^2``, ``H = c h``), the exact solution (paper eq. 12)

    x_t = (sigma_t/sigma_s) e^{-tau^2 h} x_s + alpha_t int_0^h c e^{-c (h - u)} x0(lambda_s + u) du
          + sigma_t sqrt(1 - e^{-2 tau^2 h}) z.

The stochastic Adams methods replace ``x0`` by the Lagrange polynomial through data estimates at nodes
``lambda_j`` and integrate it exactly: with ``theta_j = (lambda_j - lambda_s)/h`` and the basis
``l_j(theta) = sum_k C_jk theta^k``,

    alpha_t int_0^h c e^{-c (h - u)} l_j du = alpha_t H sum_k C_jk k! phi_{k+1}(-H)

(``int_0^1 e^{-H (1 - v)} v^k dv = k! phi_{k+1}(-H)``, :mod:`fewstep.solvers.phi`).

- SA-Predictor of order p (step i): nodes ``lambda_i, lambda_{i-1}, ..., lambda_{i-p+1}``;
- SA-Corrector of order q (step i, applied once ``D_{i+1} = D(x^p_{i+1})`` is known): nodes
  ``lambda_{i+1}, lambda_i, ..., lambda_{i-q+2}``, from the same ``x_i`` with the same noise ``z``, no extra
  evaluation; the next predictor starts from the corrected state and reuses ``D_{i+1}``.

At tau = 0 the method is a deterministic Adams-type exponential integrator of order ``min(q, p + 1)``
(``p`` without corrector). ``second_order="reference"`` replaces ``phi_2(-H)`` by its limit 1/2 in the order-2
predictor and corrector, as the official code and diffusers' ``SASolverScheduler`` do (an O(h^3) change).

Orders (``lower_order_final``, diffusers' rule): the predictor of step i uses ``min(p, i + 1, N - i)`` nodes, the
corrector ``min(q, i + 2, N - i + 1)``; the history restarts after a step of infinite lambda-size, which is a
deterministic first-order step; the last step is not corrected (no evaluation follows it).

Log-probabilities (``trajectory=``). The predicted state ``x~_{i+1} = ratio x_i + sum_j b_j D_{i-j} + std z_i``
is Gaussian given the run so far; the corrected state ``x_{i+1} = x~_{i+1} + sum_j (b^c_j D_{i+1-j} - b_j D_{i-j})``
(corrector weights ``b^c_j``, the same ``z_i``) is a deterministic function of ``x~_{i+1}`` and of estimates
``D`` taken at the earlier predicted states and at ``x~_{i+1}``. So step i records ``x~_{i+1}``
(``Trajectory.noisy[i]``, also the state the step emits) with the mean ``ratio x_i + sum_j b_j D_{i-j}`` and
``std``: given ``x~_1, ..., x~_i`` (which fix ``x_i`` and the ``D``) it is ``N(mean, std^2 I)``, and
:attr:`~fewstep.trajectory.Trajectory.log_prob` is the log-density of the predicted states given the start.
Without corrector ``x~_{i+1} = x_{i+1}``.

PECE (``use_pece=True``, ComfyUI's ``sample_sa_solver_pece``): predict, evaluate, correct, evaluate. After the
corrector of step i - 1 the model is evaluated again at the corrected state ``x_i``, and that estimate replaces
``D(x~_i)`` as ``D_i`` in the next predictor and correctors (Xue et al. 2023, Sec. 5, the PECE mode of Adams
predictor-corrector methods). It costs one evaluation per corrected step: ``N + #corrected`` for ``N`` steps
(``2N - 1`` with a corrector on every step but the last), so only every other NFE can be spent.

tau: a float, or a callable of the noise level at the step's start (``schedule.level``) returning a float; it
applies on the steps starting inside ``tau_window`` (fractions of the schedule's time range, default the paper's
and diffusers' middle ``[0.2, 0.8]``; None: every step) and is 0 elsewhere (and outside ``sde_window``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ...options import bool_option, real_option
from ..base import Solver, Steps, register
from ..frame import lagrange_basis
from ..phi import phi
from ..stochastic import noise_levels

PAPER_SA = "Xue et al. 2023, SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models"
SECOND_ORDER = ("exact", "reference")


def adams_weights(theta: Sequence[float], big_h: float, half_phi2: bool = False) -> list[float]:
    """``int_0^1 H e^{-H (1 - v)} l_j(v) dv`` for the Lagrange basis ``l_j`` of the nodes ``theta`` (in units of the
    step): ``H sum_k C_jk k! phi_{k+1}(-H)``. ``half_phi2``: ``phi_2(-H) -> 1/2`` (the reference code's order 2)."""
    n = len(theta)
    pts = np.arange(n, dtype=np.float64)  # n distinct points determine the degree n - 1 basis polynomials
    coef = np.linalg.solve(np.vander(pts, n, increasing=True), lagrange_basis(theta, pts).T)  # coef[k, j] = C_jk
    moments = np.array([math.factorial(k) * float(phi(k + 1, -big_h)) for k in range(n)])
    if half_phi2 and n == 2:
        moments[1] = 0.5
    return [big_h * float(w) for w in moments @ coef]


def sa_orders(nodes: NodeTable, p: int, q: int, lower_order_final: bool) -> tuple[list[int], list[int]]:
    """Predictor and corrector orders of every step (corrector 0: not corrected)."""
    n = nodes.steps
    pred, corr, run = [], [], 0  # run: nodes with finite lambda since the last restart, the current one included
    for i in range(n):
        if not nodes.finite(i):
            pred.append(1)
            corr.append(0)
            run = 0
            continue
        run += 1
        pred.append(max(1, min(p, run, n - i if lower_order_final else p)))
        last = i == n - 1
        corr.append(0 if last or q == 0 else max(1, min(q, run + 1, n - i + 1 if lower_order_final else q)))
    return pred, corr


def _order_option(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: must be an integer in {low}..4, got {value!r}")
    if not low <= int(value) <= 4:
        raise ValueError(f"{name}: must be in {low}..4, got {value!r}")
    return int(value)


def _window(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(
            f"tau_window: must be None or a pair (lo, hi) with 0 <= lo <= hi <= 1, got {value!r}"
        ) from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"tau_window: must be None or a pair (lo, hi) with 0 <= lo <= hi <= 1, got {value!r}")
    return lo, hi


@register
class SASolver(Solver):
    name = "sa_solver"
    order = 3
    stochastic = True
    records_transitions = True
    needs_eps = False
    summary = "SA-Solver: stochastic Adams predictor (order 3) + corrector (order 3), data prediction, tau"
    paper = PAPER_SA
    peers = "diffusers SASolverScheduler (second_order='reference')"

    @property
    def corrects_requests(self) -> bool:
        return self.corrector_order > 0

    def __init__(
        self,
        predictor_order: int = 3,
        corrector_order: int = 3,
        tau: float | Callable[[float], float] = 1.0,
        tau_window: tuple[float, float] | None = (0.2, 0.8),
        s_noise: float = 1.0,
        lower_order_final: bool = True,
        second_order: str = "exact",
        use_pece: bool = False,
    ):
        self.predictor_order = _order_option("predictor_order", predictor_order, 1)
        self.corrector_order = _order_option("corrector_order", corrector_order, 0)
        self.tau = tau if callable(tau) else real_option("tau", tau)
        self.tau_window = _window(tau_window)
        self.s_noise = real_option("s_noise", s_noise)
        self.lower_order_final = bool_option("lower_order_final", lower_order_final)
        if second_order not in SECOND_ORDER:
            raise ValueError(f"second_order: choose 'exact' or 'reference', got {second_order!r}")
        self.second_order = second_order
        self.use_pece = bool_option("use_pece", use_pece)

    def pece_evaluations(self, nodes: NodeTable) -> int:
        """The extra evaluations of PECE mode: one per corrected step."""
        if not self.use_pece:
            return 0
        return sum(
            c > 0 for c in sa_orders(nodes, self.predictor_order, self.corrector_order, self.lower_order_final)[1]
        )

    def nfe(self, nodes: NodeTable) -> int:
        return super().nfe(nodes) + self.pece_evaluations(nodes)

    def steps_for_nfe(self, nfe: int, first_infinite: bool, clean_end: bool) -> int:
        if not self.use_pece or self.corrector_order == 0:
            return super().steps_for_nfe(nfe, first_infinite, clean_end)
        # every finite step but the last is corrected: N + (N - 1 - [first step infinite]) evaluations
        for steps in range(1, nfe + 1):
            if steps + max(0, steps - 1 - int(first_infinite)) == nfe:
                return steps
        raise ValueError(
            f"nfe: {self.name!r} with use_pece=True spends 2N - 1 evaluations on N steps ({'2N - 2' if first_infinite else '2N - 1'}"
            f" here), so nfe={nfe} cannot be spent exactly; use nfe={nfe + 1}"
        )

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return sa_orders(nodes, self.predictor_order, self.corrector_order, self.lower_order_final)[0]

    def tau_at(self, nodes: NodeTable, ctx: RunContext, i: int, level: float) -> float:
        """tau on step i: ``self.tau`` (at the start's noise level) inside both windows, else 0."""
        sched = nodes.schedule
        if self.tau_window is not None:
            u = (float(nodes.t[i]) - sched.t_min) / (sched.t_max - sched.t_min)
            if not self.tau_window[0] <= u <= self.tau_window[1]:
                return 0.0
        if not ctx.stochastic_step(i):
            return 0.0
        if not callable(self.tau):
            return self.tau
        value = self.tau(float(level))
        return real_option("tau", value.item() if hasattr(value, "item") else value)

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        a, s, lam, h = nodes.alpha, nodes.sigma, nodes.lam, nodes.h
        level = noise_levels(nodes)
        pred, corr = sa_orders(nodes, self.predictor_order, self.corrector_order, self.lower_order_final)
        half = self.second_order == "reference"
        plan: list[SAStep] = []
        for i in range(nodes.steps):
            if not nodes.finite(i):  # deterministic first order: x_t = (sigma_t/sigma_s) x_s + alpha_t x0_hat
                plan.append(SAStep(float(s[i + 1] / s[i]), [float(a[i + 1])], [], 0.0))
                continue
            tau2, hi = self.tau_at(nodes, ctx, i, level[i]) ** 2, float(h[i])
            big_h, a_t = (1.0 + tau2) * hi, float(a[i + 1])
            theta = [float((lam[j] - lam[i]) / hi) for j in range(i + 1, i - 4, -1) if j >= 0]  # theta_{i+1} = 1
            wp = adams_weights(theta[1 : 1 + pred[i]], big_h, half)
            wc = adams_weights(theta[: corr[i]], big_h, half) if corr[i] else []
            ratio = float(s[i + 1] / s[i]) * math.exp(-tau2 * hi)
            std = float(s[i + 1]) * math.sqrt(-math.expm1(-2.0 * tau2 * hi)) * self.s_noise
            plan.append(SAStep(ratio, [a_t * w for w in wp], [a_t * w for w in wc], std))
        keep = max(self.predictor_order, self.corrector_order, 1)
        history: list[Tensor] = []  # D_i, D_{i-1}, ...
        x_prev, z_prev = x, None
        for i in ctx.loop():
            x0, _ = yield x, nodes.node(i)
            history = [x0, *history[: keep - 1]]
            last = plan[i - 1] if i > 0 else None
            if last is not None and last.corrector:  # SA-Corrector of step i - 1, with D_i = D(x^p_i)
                x = _combine(x_prev, last.ratio, last.corrector, history, last.std, z_prev)
                if self.use_pece:  # evaluate the corrected state: D(x_i) replaces D(x~_i) as D_i
                    x0, _ = yield x, nodes.node(i)
                    history[0] = x0
            step = plan[i]
            x_prev = x
            x = _combine(x, step.ratio, step.predictor, history, 0.0, None)
            if step.std:  # x~_{i+1} ~ N(ratio x_i + sum_j b_j D_{i-j}, std^2 I); the corrector reuses z
                x, z_prev = ctx.transition(i, x, level[i], level[i + 1], step.std)
            ctx.emit(i, x, x0)
        return x


class SAStep(NamedTuple):
    """One planned step: ``x~_{i+1} = ratio x_i + sum_j predictor[j] D_{i-j} + std z``, then (next step) the corrected
    ``x_{i+1} = ratio x_i + sum_j corrector[j] D_{i+1-j} + std z`` with the same ``z``."""

    ratio: float
    predictor: list[float]
    corrector: list[float]
    std: float


def _combine(x: Tensor, ratio: float, weights: list[float], ds: list[Tensor], std: float, z: Tensor | None) -> Tensor:
    """``ratio x + sum_j weights[j] ds[j] + std z`` (a new tensor)."""
    out = x * ratio
    for w, d in zip(weights, ds, strict=False):
        out.add_(d, alpha=w)
    if z is not None and std:
        out.add_(z, alpha=std)
    return out
