"""Embedded pairs: one step of two orders from the same model evaluations, whose difference estimates the error.

A pair steps in its own variable ``s``: ``lambda = log(alpha/sigma)``, or ``t`` for Dormand-Prince on flows; :meth:`EmbeddedPair.step` is a generator of
model-evaluation requests, like :meth:`fewstep.solvers.Solver.solve`: it is given the state ``x`` at point ``ps``
with its evaluation ``(x0_hat, eps_hat)`` there, yields ``(x, point)`` where it needs the model and returns
``(x_high, x_low, end)``, with ``end`` the evaluation at ``(x_high, pt)`` when the pair computed it (first same as
last), else None.

- ``dpm_solver_12`` / ``dpm_solver_23`` (Lu et al. 2022, "DPM-Solver", Sec. 3.4 and Alg. 4-5): DPM-Solver-2
  (``r1 = 1/2``) with DPM-Solver-1 (DDIM) from its first evaluation; DPM-Solver-3 with DPM-Solver-2 at
  ``r1 = 1/3``, which reuses the first intermediate evaluation of DPM-Solver-3. Noise prediction, in lambda;
  the formulas are :func:`fewstep.solvers.singlestep.singlestep_plan`.
- ``dopri5``: Dormand & Prince (1980) 5(4) on the probability-flow ODE in the frame of
  :meth:`fewstep.nodes.NodeTable.ode_frame`, seven stages, the last one reused as the next step's first. Flows
  (``ode_variable = "t"``): ``y = x``, ``dy/dt = alpha' x0_hat + sigma' eps_hat``, steps in t. Diffusion schedules:
  ``y = x/alpha`` and the noise level ``tau = sigma/alpha`` on a log scale, ``u = -log tau = lambda``:
  ``dy/du = -tau eps_hat = x0_hat - y`` (EDM eq. 4 in log sigma). In tau itself a step from tau = 25 to 0.002
  places no stage below tau = 5, where the data's structure appears, and passes the error test with an O(1) error.
- ``ggf_sde`` (Jolicoeur-Martineau et al. 2021, "Gotta Go Fast When Generating Data with Score-Based Models",
  Alg. 1): Euler-Maruyama and improved Euler (stochastic Heun, the accepted "extrapolated" value) on the reverse
  SDE in the frame ``y = x/alpha``, ``tau = sigma/alpha`` (the VE form of every schedule, EDM eq. 6 with
  ``beta = 1``)::

      dy = 2 eps_hat(y, tau) dtau + dW_v,   v = tau^2       (tau decreasing)
      EM:    y' = y_s + 2 (tau_t - tau_s) eps_s + dW
      Heun:  y~ = y_s + (tau_t - tau_s) (eps_s + eps_hat(y', tau_t)) + dW,   dW = W(tau_s^2) - W(tau_t^2)

  The noise term ``sqrt(2 tau) dW_tau`` is a Brownian motion in ``v = tau^2`` (same law, ``d v = 2 tau dtau``),
  so its increments are read exactly from a :class:`~fewstep.noise.BrownianPath` in ``v``; a rejected step's
  retry asks the same path for a sub-interval and gets the Brownian bridge value, not a fresh draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..model import CallCount, Denoiser, Point
from ..noise import BrownianPath
from ..schedules import NoiseSchedule
from ..solvers.singlestep import singlestep_plan, singlestep_update

Eval = tuple[Tensor, Tensor]
StepGen = Generator[tuple[Tensor, Point], Eval, tuple[Tensor, Tensor, Eval | None]]


@dataclass
class Context:
    """What a step needs besides the state: evaluation points at any time, and the Brownian path (SDE)."""

    denoiser: Denoiser
    batch: int
    device: torch.device
    dtype: torch.dtype
    #: the run's model-call stack (eps always computed) and its call count
    evaluate: Callable[[Tensor, Point], Eval]
    calls: CallCount
    brownian: BrownianPath | None = None

    @property
    def schedule(self) -> NoiseSchedule:
        return self.denoiser.schedule

    def point(self, t: float) -> Point:
        t = min(max(float(t), self.schedule.t_min), self.schedule.t_max)
        return self.denoiser.point(t, self.batch, self.device, self.dtype)

    def point_at_lambda(self, lam: float) -> Point:
        return self.point(float(self.schedule.t_of_lambda(lam)))


class EmbeddedPair:
    """An embedded pair (module docstring)."""

    name: ClassVar[str]
    orders: ClassVar[tuple[int, int]]  # (lower, higher); the run continues from the higher
    error_order: ClassVar[float]  # the order k of the error estimate, in the controller's exponent 1/k
    nfe_per_step: ClassVar[int]
    stochastic: ClassVar[bool] = False
    variable: ClassVar[str] = "lambda"
    summary: ClassVar[str] = ""

    def var(self, schedule: NoiseSchedule, t: float) -> float:
        """The step variable at schedule time ``t``."""
        return float(schedule.lambda_(t))

    def time(self, schedule: NoiseSchedule, s: float) -> float:
        """The schedule time of the step variable ``s``."""
        return float(schedule.t_of_lambda(s))

    def default_h(self, schedule: NoiseSchedule, span: float) -> float:
        """The first step when none is given: k-diffusion's 0.05 in lambda."""
        return 0.05

    def step(self, x: Tensor, first: Eval, ps: Point, pt: Point, ctx: Context) -> StepGen:
        raise NotImplementedError


class DPMSolver12(EmbeddedPair):
    name = "dpm_solver_12"
    orders = (1, 2)
    error_order = 2
    nfe_per_step = 2
    summary = "DPM-Solver-2 with embedded DPM-Solver-1, in lambda (noise prediction)"

    def step(self, x: Tensor, first: Eval, ps: Point, pt: Point, ctx: Context) -> StepGen:
        x0, eps = first
        plan = singlestep_plan(2, ps.lam, pt.lam - ps.lam, ps.alpha, pt.alpha, pt.sigma, ctx.point_at_lambda)
        x_high, _ = yield from singlestep_update(plan, x, eps)
        return x_high, pt.alpha * x0 + pt.sigma * eps, None  # DPM-Solver-1 = DDIM


class DPMSolver23(EmbeddedPair):
    name = "dpm_solver_23"
    orders = (2, 3)
    error_order = 3
    nfe_per_step = 3
    summary = "DPM-Solver-3 with embedded DPM-Solver-2 (r1 = 1/3), in lambda (noise prediction)"

    def step(self, x: Tensor, first: Eval, ps: Point, pt: Point, ctx: Context) -> StepGen:
        _, eps = first
        h = pt.lam - ps.lam
        plan = singlestep_plan(3, ps.lam, h, ps.alpha, pt.alpha, pt.sigma, ctx.point_at_lambda)
        x_high, (eps1, _) = yield from singlestep_update(plan, x, eps)
        # DPM-Solver-2 with r1 = 1/3: its intermediate point and state are DPM-Solver-3's first ones
        p1 = plan.points[0]
        two = singlestep_plan(2, ps.lam, h, ps.alpha, pt.alpha, pt.sigma, lambda _: p1, (1.0 / 3.0,))
        return x_high, two.cx * x + two.ce * eps + two.cd * (eps1 - eps), None


# Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae", RK5(4)7M: nodes, stages, 5th- and
# 4th-order weights (the 5th-order weights are the last stage row: first same as last).
DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def ode_frame(schedule: NoiseSchedule, p: Point) -> tuple[float, float, float]:
    """``(c, a, b)`` at point p: the scale ``y = x / c`` and ``dy/du = a x0_hat + b eps_hat`` in Dormand-Prince's
    variable ``u`` (t for flows, as :meth:`fewstep.nodes.NodeTable.ode_velocity`; lambda = -log(sigma/alpha) else)."""
    if schedule.ode_variable == "t":
        return 1.0, p.dalpha, p.dsigma
    return p.alpha, 0.0, -p.sigma / p.alpha


class DormandPrince54(EmbeddedPair):
    name = "dopri5"
    orders = (4, 5)
    error_order = 5
    nfe_per_step = 6
    variable = "t or lambda"
    summary = "Dormand-Prince 5(4) on the probability-flow ODE in log(sigma/alpha) (in t for flows)"

    def var(self, schedule: NoiseSchedule, t: float) -> float:
        return float(t) if schedule.ode_variable == "t" else float(schedule.lambda_(t))

    def time(self, schedule: NoiseSchedule, s: float) -> float:
        return float(s) if schedule.ode_variable == "t" else float(schedule.t_of_lambda(s))

    def default_h(self, schedule: NoiseSchedule, span: float) -> float:
        """0.05 in lambda; 1% of the span in t."""
        return 0.01 * abs(span) if schedule.ode_variable == "t" else 0.05

    def step(self, x: Tensor, first: Eval, ps: Point, pt: Point, ctx: Context) -> StepGen:
        sched = ctx.schedule
        u_s = self.var(sched, ps.t)
        c_s, a, b = ode_frame(sched, ps)
        c_t = ode_frame(sched, pt)[0]
        dt = self.var(sched, pt.t) - u_s
        y = x / c_s
        ks = [a * first[0] + b * first[1]]
        end: Eval | None = None
        for ci, row in zip(DP_C[1:], DP_A[1:], strict=True):
            y_i = y + sum((dt * w) * k for w, k in zip(row, ks, strict=False) if w)
            p = pt if ci == 1.0 else ctx.point(self.time(sched, u_s + ci * dt))
            c_i, a_i, b_i = ode_frame(sched, p)
            end = yield c_i * y_i, p
            ks.append(a_i * end[0] + b_i * end[1])
        y_high = y_i  # the last stage's state is the 5th-order solution
        err = sum((dt * (w5 - w4)) * k for w5, w4, k in zip((*DP_A[-1], 0.0), DP_B4, ks, strict=True) if w5 != w4)
        return c_t * y_high, c_t * (y_high - err), end


class GottaGoFast(EmbeddedPair):
    name = "ggf_sde"
    orders = (1, 2)
    error_order = 1.5  # the local error of Euler-Maruyama with additive noise is O(h^1.5)
    nfe_per_step = 2
    stochastic = True
    summary = "Euler-Maruyama / improved Euler on the reverse SDE, Brownian increments in v = (sigma/alpha)^2"

    def step(self, x: Tensor, first: Eval, ps: Point, pt: Point, ctx: Context) -> StepGen:
        assert ctx.brownian is not None
        _, eps = first
        tau_s, tau_t = ps.sigma / ps.alpha, pt.sigma / pt.alpha
        dw = ctx.brownian.increment(tau_t**2, tau_s**2).to(device=x.device, dtype=x.dtype)
        base = x / ps.alpha + dw
        y_em = base + (2.0 * (tau_t - tau_s)) * eps  # Euler-Maruyama
        _, eps_em = yield pt.alpha * y_em, pt
        y_heun = base + (tau_t - tau_s) * (eps + eps_em)  # improved Euler
        return pt.alpha * y_heun, pt.alpha * y_em, None


METHODS: dict[str, EmbeddedPair] = {m.name: m for m in (DPMSolver12(), DPMSolver23(), DormandPrince54(), GottaGoFast())}


def brownian_interval(tau_start: float) -> tuple[float, float]:
    """The path-time interval ``[0, tau_start^2]`` of the SDE pair's Brownian path (its time is ``v = tau^2``)."""
    return 0.0, tau_start**2


def finite_start(pair: EmbeddedPair, schedule: NoiseSchedule, t: float) -> bool:
    """Whether the pair's step variable (and, for the SDE pair, the Brownian time) is finite at ``t``."""
    return math.isfinite(pair.var(schedule, t))
