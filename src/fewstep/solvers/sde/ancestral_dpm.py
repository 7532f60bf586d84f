"""k-diffusion's DPM-Solver samplers with ancestral steps or EDM's churn: ``dpm_2_ancestral``,
``dpmpp_2s_ancestral``, the ancestral DPM-Solver-fast (:class:`DPMFastAncestral`) and DPM-Solver-2 after churn
(:class:`DPM2Churn`).

Ancestral step (k-diffusion's ``get_ancestral_step``, Crowson; ancestral sampling of Ho et al. 2020). In the levels
``s = sigma_s/alpha_s``, ``s' = sigma_t/alpha_t`` (``s'/s = e^{-h}``, ``h = lambda_t - lambda_s``):

    sigma_up   = min(s', eta s' sqrt(1 - s'^2/s^2)),      sigma_down = sqrt(s'^2 - sigma_up^2),

a deterministic singlestep step of the probability-flow ODE from ``lambda_s`` to ``lambda_down = -log sigma_down``
(``h_down = h - log(sigma_down/s')``), then ``sigma_up`` of fresh noise in the scaled state ``y = x/alpha``:
``x_t = x_down + alpha_t s_noise sigma_up z``. The deterministic step is written for the fictitious end point
``(alpha_t, alpha_t sigma_down)``, whose lambda is ``lambda_down``; its intermediate evaluations are at real points
``lambda_s + r h_down`` of the schedule:

- ``dpm_2_ancestral``: DPM-Solver-2 in the noise prediction, ``r = 1/2`` (Lu et al. 2022, DPM-Solver, Alg. 1):
  ``u = (alpha_u/alpha_s) x_s - sigma_u (e^{h_down/2} - 1) eps_s``,
  ``x_down = (alpha_t/alpha_s) x_s - alpha_t sigma_down (e^{h_down} - 1) eps(u)``. In k-diffusion's EDM form this is
  the midpoint rule in sigma with the midpoint at the geometric mean ``sqrt(s sigma_down)``.
- ``dpmpp_2s_ancestral``: DPM-Solver++(2S), ``r = 1/2`` (Lu et al. 2022, DPM-Solver++, Alg. 1):
  ``u = (sigma_u/sigma_s) x_s - alpha_u (e^{-h_down/2} - 1) D_s``,
  ``x_down = (alpha_t sigma_down/sigma_s) x_s - alpha_t (e^{-h_down} - 1) D(u)``.
- :class:`DPMFastAncestral`: DPM-Solver-1/2/3 (noise prediction) with DPM-Solver-fast's order plan, and
  ``sigma_down`` kept at or above the grid's last level (k-diffusion's ``dpm_solver_fast`` with ``eta > 0``:
  ``sigma_up = sqrt(s'^2 - sigma_down^2)`` after the clamp, so its last step adds no noise).

A step whose ``sigma_down`` is 0 (``eta > 1`` on a large step) is first order, ``x_down = alpha_t x0_hat``; there
``dpm_2_ancestral`` adds no noise, as its reference (which adds the noise in the second-order branch only). A first-order
step of an NFE budget (DPM-Solver's plan ``[2, ..., 2, 1]``) is DDIM to ``sigma_down``,
``x_down = alpha_t (x0_hat + sigma_down eps_hat)``. At eta = 0 the samplers are ``dpm_solver_2``, ``dpmpp_2s`` and
``dpm_solver_3``. ``dpmpp_2s_ancestral`` has a CFG++ form (ComfyUI ``sample_dpmpp_2s_ancestral_cfg_pp``,
:func:`fewstep.solvers.ode.dpmpp.run_midpoint_cfg_pp`). Steps of infinite lambda-size are deterministic (:mod:`fewstep.solvers.stochastic`).

Log-probabilities (``trajectory=``): a step is ``x_t ~ N(x_down, (alpha_t s_noise sigma_up)^2 I)`` given ``x_s``,
with ``x_down`` a deterministic function of ``x_s`` through the model, recorded as step i's transition.

:class:`DPM2Churn` is k-diffusion's ``sample_dpm_2`` with ``s_churn > 0``: EDM's churn
(:class:`~fewstep.solvers.sde.edm_sde.EDMStochastic`, Karras et al. 2022, Alg. 2) raises the level to
``s_hat = (1 + gamma) s``, then a DPM-Solver-2 step (noise prediction, ``r = 1/2``) from ``s_hat`` to the next node.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple, cast

from torch import Tensor

from ...context import RunContext
from ...model import Point
from ...nodes import NodeTable
from ..base import Steps, register
from ..multistep import PAPER_PP
from ..ode.dpmpp import MidpointStep, run_midpoint_cfg_pp
from ..singlestep import BudgetOrders, FirstOrder, SinglestepPlan, singlestep_plan, singlestep_update
from ..stochastic import EtaNoiseOptions, FlowDownstep, flow_downstep, noise_levels
from .edm_sde import EDMStochastic

PAPER_DPM = "Lu et al. 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling"
#: ComfyUI's midpoint level of a rectified-flow DPM-Solver++(2S) step from sigma = 1 (lambda = -inf there)
FLOW_START_MIDPOINT = 0.9999


def flow_point(nodes: NodeTable, sigma: float) -> Point:
    """The point of a rectified-flow schedule at noise level ``sigma`` (``lambda = log((1 - sigma) / sigma)``)."""
    return nodes.point_at_lambda(math.log((1.0 - sigma) / sigma))


class AncestralLevels(NamedTuple):
    """The ancestral split of one step (module docstring): ``sigma_down``, ``sigma_up`` and ``h_down``."""

    down: float
    up: float
    h_down: float


def ancestral_levels(s_to: float, h: float, eta: float, floor: float = 0.0) -> AncestralLevels:
    """k-diffusion's ``get_ancestral_step`` from the level ``s = s_to e^h`` to ``s_to``, with ``sigma_down`` kept at or
    above ``floor`` (then ``sigma_up = sqrt(s_to^2 - sigma_down^2)``)."""
    # sigma_up = min(s', eta s' sqrt(1 - e^{-2h})), sigma_down = sqrt(s'^2 - sigma_up^2)
    up = min(s_to, eta * s_to * math.sqrt(-math.expm1(-2.0 * h)))
    down = math.sqrt(max(s_to**2 - up**2, 0.0))
    if down < floor:
        down, up = floor, math.sqrt(max(s_to**2 - floor**2, 0.0))
    if down == 0.0:
        return AncestralLevels(0.0, up, math.inf)
    # h_down = lambda_down - lambda_s = h - log(sigma_down/s')
    h_down = h - 0.5 * math.log1p(-((up / s_to) ** 2)) if down < s_to else h
    return AncestralLevels(down, up, h_down)


class _AncestralSinglestep(EtaNoiseOptions, BudgetOrders):
    """The step loop of the ancestral singlestep samplers (module docstring); subclasses give the deterministic step
    (and, with ``downstep="flow"``, its rectified-flow form)."""

    #: the choices of ``downstep``: "scaled" (k-diffusion's ``get_ancestral_step`` on ``sigma/alpha``) or "flow"
    #: (ComfyUI's rectified-flow rule on the schedule's sigma, :func:`~fewstep.solvers.stochastic.flow_downstep`)
    DOWNSTEPS: ClassVar[tuple[str, ...]] = ("scaled",)
    stochastic = True
    records_transitions = True
    #: Whether a step whose sigma_down is 0 still adds its sigma_up of noise (k-diffusion's dpm_2_ancestral: no).
    noise_at_zero_down: ClassVar[bool] = True
    #: Whether sigma_down is kept at or above the grid's last level (k-diffusion's dpm_solver_fast).
    clamp_down: ClassVar[bool] = False

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, downstep: str = "scaled"):
        super().__init__(eta, s_noise)
        if downstep not in self.DOWNSTEPS:
            raise ValueError(f"downstep: choose one of {', '.join(map(repr, self.DOWNSTEPS))}, got {downstep!r}")
        self.downstep = downstep

    def levels(self, nodes: NodeTable, i: int, eta: float) -> AncestralLevels:
        """The ancestral split of finite step i at the given eta."""
        s_to = float(nodes.sigma[i + 1] / nodes.alpha[i + 1])
        floor = float(noise_levels(nodes)[-1]) if self.clamp_down else 0.0
        return ancestral_levels(s_to, float(nodes.h[i]), eta, floor)

    def step_orders(self, nodes: NodeTable) -> list[int]:
        orders = super().step_orders(nodes)
        if self.downstep == "flow":  # every step to sigma_down > 0 at the solver's order, from alpha = 0 too
            plain = nodes.nfe_budget is None
            return [
                1 if flow_downstep(nodes, i, self.eta).sigma_down == 0.0 else self.order if plain else k
                for i, k in enumerate(orders)
            ]
        return [
            1 if nodes.finite(i) and self.levels(nodes, i, self.eta).down == 0.0 else k for i, k in enumerate(orders)
        ]

    def down_step(self, nodes: NodeTable, i: int, order: int, lv: AncestralLevels) -> SinglestepPlan | MidpointStep:
        """The deterministic step of order >= 2 from node i to ``(alpha_{i+1}, alpha_{i+1} sigma_down)``."""
        raise NotImplementedError

    def flow_step(self, nodes: NodeTable, i: int, split: FlowDownstep) -> MidpointStep:
        """The rectified-flow step of order 2 from node i to ``sigma_down``, rescaled by ``split.scale``."""
        raise ValueError(f"downstep: {self.name!r} has no rectified-flow form")

    def flow_plan(
        self, nodes: NodeTable, ctx: RunContext
    ) -> list[tuple[FirstOrder | SinglestepPlan | MidpointStep, float]]:
        """The plan with ``downstep="flow"``: ``x_t = scale x_down + s_noise std z`` (ComfyUI's ``*_RF`` samplers)."""
        plan: list[tuple[FirstOrder | SinglestepPlan | MidpointStep, float]] = []
        for i, k in enumerate(self.step_orders(nodes)):
            split = flow_downstep(nodes, i, self.eta if ctx.stochastic_step(i) else 0.0)
            # first order: scale x_down = scale (alpha_down x0_hat + sigma_down eps_hat), alpha_t = scale alpha_down
            first = FirstOrder(float(nodes.alpha[i + 1]), split.scale * split.sigma_down)
            noisy = split.sigma_down > 0.0 or self.noise_at_zero_down
            plan.append(
                (first if k == 1 else self.flow_step(nodes, i, split), split.std * self.s_noise if noisy else 0.0)
            )
        return plan

    def plan(self, nodes: NodeTable, ctx: RunContext) -> list[tuple[FirstOrder | SinglestepPlan | MidpointStep, float]]:
        """Each step as ``(deterministic step, std)``: the step to ``sigma_down``, then ``std z``."""
        if self.downstep == "flow":
            return self.flow_plan(nodes, ctx)
        a, s = nodes.alpha, nodes.sigma
        plan: list[tuple[FirstOrder | SinglestepPlan | MidpointStep, float]] = []
        for i, k in enumerate(self.step_orders(nodes)):
            if not nodes.finite(i):  # deterministic: x_t = alpha_t x0_hat + sigma_t eps_hat
                plan.append((FirstOrder(float(a[i + 1]), float(s[i + 1])), 0.0))
                continue
            a_t = float(a[i + 1])
            lv = self.levels(nodes, i, self.eta if ctx.stochastic_step(i) else 0.0)
            # x_down = alpha_t (x0_hat + sigma_down eps_hat) (first order), or the solver's step to sigma_down
            step = FirstOrder(a_t, a_t * lv.down) if k == 1 or lv.down == 0.0 else self.down_step(nodes, i, k, lv)
            noisy = lv.down > 0.0 or self.noise_at_zero_down  # x_t = x_down + alpha_t s_noise sigma_up z
            plan.append((step, a_t * lv.up * self.s_noise if noisy else 0.0))
        return plan

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        level = noise_levels(nodes)
        plan = self.plan(nodes, ctx)
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            step, std = plan[i]
            if isinstance(step, FirstOrder):
                x = step.alpha_t * x0 + step.sigma_t * eps
            elif isinstance(step, MidpointStep):  # u = u_x x_s + u_d D_s;  x_down = c_x x_s + c_d D(u)
                ux, ud = step.u
                x0_mid, _ = yield ux * x + ud * x0, step.point
                x = step.c_x * x + step.c_d * x0_mid
                if step.c_s:
                    x = x + step.c_s * x0
            elif step.order == 2:  # x_down = cx x_s + ce eps_s + cd (eps(u) - eps_s), with ce = cd at r = 1/2
                _, eps1 = yield step.first[0][0] * x + step.first[0][1] * eps, step.points[0]
                x = step.cx * x + step.cd * eps1
                if step.ce != step.cd:
                    x = x + (step.ce - step.cd) * eps
            else:
                x, _ = yield from singlestep_update(step, x, eps)
            if std:
                x = ctx.transition(i, x, float(level[i]), float(level[i + 1]), std)[0]
            ctx.emit(i, x, x0)
        return x


class _NoisePredictionAncestral(_AncestralSinglestep):
    def down_step(self, nodes: NodeTable, i: int, order: int, lv: AncestralLevels) -> SinglestepPlan | MidpointStep:
        a_t = float(nodes.alpha[i + 1])
        # DPM-Solver-k from lambda_i over h_down to the point (alpha_t, alpha_t sigma_down)
        return singlestep_plan(
            order, float(nodes.lam[i]), lv.h_down, float(nodes.alpha[i]), a_t, a_t * lv.down, nodes.point_at_lambda
        )


@register
class DPM2Ancestral(_NoisePredictionAncestral):
    """Ancestral sampling with DPM-Solver-2 steps: ``eta`` scales ``sigma_up`` (0: ``dpm_solver_2``), ``s_noise``
    multiplies the drawn noise (k-diffusion's options and defaults)."""

    name = "dpm_2_ancestral"
    order = 2
    nfe_per_step = 2
    noise_at_zero_down = False
    DOWNSTEPS = ("scaled", "flow")
    summary = "ancestral: DPM-Solver-2 (noise prediction) down to sigma_down, then sigma_up of fresh noise"
    paper = PAPER_DPM + "; Crowson's k-diffusion (ancestral steps)"
    peers = "k-diffusion sample_dpm_2_ancestral; ComfyUI sample_dpm_2_ancestral_RF (downstep='flow')"

    def flow_step(self, nodes: NodeTable, i: int, split: FlowDownstep) -> MidpointStep:
        """ComfyUI's rectified-flow DPM-2: the midpoint rule in the flow's own ``(x, sigma)``, whose velocity is
        ``d = (x - D) / sigma``, with the midpoint at the geometric mean ``sigma_m = sqrt(sigma_s sigma_down)``:
        ``u = x + d_s (sigma_m - sigma_s)``, ``x_down = x + d(u) (sigma_down - sigma_s)``. With
        ``u = (sigma_m / sigma_s) x + (1 - sigma_m / sigma_s) D_s`` and ``k = (sigma_down - sigma_s) / sigma_m``:
        ``x_down = (1 + k u_x) x + k u_d D_s - k D(u)``."""
        s_s, down = float(nodes.sigma[i]), split.sigma_down
        s_m = math.exp(math.log(s_s) + 0.5 * (math.log(down) - math.log(s_s)))  # ComfyUI's lerp of log-sigmas
        u = (s_m / s_s, 1.0 - s_m / s_s)
        k = (down - s_s) / s_m
        r = split.scale
        return MidpointStep(flow_point(nodes, s_m), u, r * (1.0 + k * u[0]), -r * k, r * k * u[1])


@register
class DPMPP2SAncestral(_AncestralSinglestep):
    """Ancestral sampling with DPM-Solver++(2S) steps: ``eta`` scales ``sigma_up`` (0: ``dpmpp_2s``), ``s_noise``
    multiplies the drawn noise (k-diffusion's options and defaults)."""

    name = "dpmpp_2s_ancestral"
    order = 2
    nfe_per_step = 2
    cfg_pp = True
    DOWNSTEPS = ("scaled", "flow")
    summary = "ancestral: DPM-Solver++(2S) (data prediction) down to sigma_down, then sigma_up of fresh noise"
    paper = PAPER_PP + "; Crowson's k-diffusion (ancestral steps)"
    peers = "k-diffusion sample_dpmpp_2s_ancestral; ComfyUI sample_dpmpp_2s_ancestral_RF (downstep='flow')"

    def flow_step(self, nodes: NodeTable, i: int, split: FlowDownstep) -> MidpointStep:
        """ComfyUI's rectified-flow DPM-Solver++(2S): the midpoint ``sigma_m`` at the half-log-SNR midpoint of
        ``[lambda_s, lambda_down]`` (``lambda = log((1 - sigma) / sigma)``; ComfyUI's 0.9999 from sigma_s = 1, where
        lambda_s is infinite), the x0-steps ``u = (sigma_m / sigma_s) x + (1 - sigma_m / sigma_s) D_s`` and
        ``x_down = (sigma_down / sigma_s) x + (1 - sigma_down / sigma_s) D(u)``."""
        s_s, down = float(nodes.sigma[i]), split.sigma_down
        if float(nodes.alpha[i]) == 0.0:
            s_m = FLOW_START_MIDPOINT
        else:  # lambda_m = (lambda_s + lambda_down) / 2
            s_m = 1.0 / (1.0 + math.sqrt((1.0 - s_s) / s_s * (1.0 - down) / down))
        r = split.scale
        return MidpointStep(
            flow_point(nodes, s_m), (s_m / s_s, 1.0 - s_m / s_s), r * down / s_s, r * (1.0 - down / s_s)
        )

    def down_step(self, nodes: NodeTable, i: int, order: int, lv: AncestralLevels) -> SinglestepPlan | MidpointStep:
        a_t, s_s, hd = float(nodes.alpha[i + 1]), float(nodes.sigma[i]), lv.h_down
        p1 = nodes.point_at_lambda(float(nodes.lam[i]) + 0.5 * hd)
        # u = (sigma_u/sigma_s) x_s - alpha_u (e^{-h_down/2} - 1) D_s;  x_down = (alpha_t sigma_down/sigma_s) x_s
        #                                                                          - alpha_t (e^{-h_down} - 1) D(u)
        u = (p1.sigma / s_s, -p1.alpha * math.expm1(-0.5 * hd))
        return MidpointStep(p1, u, a_t * lv.down / s_s, -a_t * math.expm1(-hd))

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        if not self.runs_cfg_pp:
            return (yield from super().solve(x, nodes, ctx))
        if self.downstep == "flow":
            raise ValueError("downstep: the CFG++ form of 'dpmpp_2s_ancestral' takes the 'scaled' downstep")
        plan = cast(list[tuple[FirstOrder | MidpointStep, float]], self.plan(nodes, ctx))  # down steps: midpoint
        return (yield from run_midpoint_cfg_pp(x, nodes, ctx, plan))


class DPMFastAncestral(_NoisePredictionAncestral):
    """DPM-Solver-fast with ancestral steps (k-diffusion's ``sample_dpm_fast`` with ``eta > 0``): DPM-Solver-1/2/3
    by the NFE budget's order plan to ``max(sigma_down, last level)``, then the rest of the step's noise. At eta = 0 it
    is ``dpm_solver_3`` (the solver k-diffusion's eta = 0 runs)."""

    name = "dpm_fast"
    order = 3
    nfe_per_step = 3
    clamp_down = True
    summary = "ancestral DPM-Solver-fast: DPM-Solver-1/2/3 by the NFE plan down to sigma_down, then sigma_up of noise"
    paper = PAPER_DPM + ", Sec. 3.4 (DPM-Solver-fast)"
    peers = "k-diffusion sample_dpm_fast(eta > 0)"


class DPM2Churn(EDMStochastic):
    """k-diffusion's ``sample_dpm_2`` with churn: EDM's churn to ``s_hat``, then DPM-Solver-2 (noise prediction,
    r = 1/2) from ``s_hat`` to the next node; the step to sigma = 0 is first order (Euler, ``x = x0_hat``)."""

    name = "dpm_2"
    order = 2
    nfe_per_step = 2
    lambda_based = True
    summary = "EDM churn, then a DPM-Solver-2 step (noise prediction)"
    paper = "Karras et al. 2022 (EDM), Alg. 2 with a DPM-Solver-2 step; " + PAPER_DPM
    peers = "k-diffusion sample_dpm_2(s_churn, s_tmin, s_tmax, s_noise)"

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return [self.order if nodes.finite(i) else 1 for i in range(nodes.steps)]

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        a, s = nodes.alpha, nodes.sigma
        level = noise_levels(nodes)
        orders = self.step_orders(nodes)
        plan = []
        for i in range(nodes.steps):
            churn = self.churn(
                nodes, ctx, i
            )  # x_hat = (alpha_hat/alpha_i) x_i + alpha_hat sqrt(s_hat^2 - s_i^2) s_noise z
            p = nodes.node(i) if churn is None else churn.point
            if orders[i] == 1:  # x_{i+1} = alpha_{i+1} x0_hat + sigma_{i+1} eps_hat
                step: FirstOrder | SinglestepPlan = FirstOrder(float(a[i + 1]), float(s[i + 1]))
            else:  # DPM-Solver-2 from lambda_hat to lambda_{i+1}
                h = float(nodes.lam[i + 1]) - p.lam
                step = singlestep_plan(2, p.lam, h, p.alpha, float(a[i + 1]), float(s[i + 1]), nodes.point_at_lambda)
            plan.append((p, churn, step))
        for i in ctx.loop():
            p, churn, step = plan[i]
            if churn is not None:  # x_hat ~ N((alpha_hat/alpha_i) x_i, std^2 I), recorded as step i's transition
                x = ctx.transition(i, churn.scale * x, level[i], level[i + 1], churn.std)[0]
            x0, eps = yield x, p
            if isinstance(step, FirstOrder):
                x = step.alpha_t * x0 + step.sigma_t * eps
            else:
                x, _ = yield from singlestep_update(step, x, eps)
            ctx.emit(i, x, x0)
        return x
