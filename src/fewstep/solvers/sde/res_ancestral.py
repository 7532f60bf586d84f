"""ComfyUI's ``res_multistep_ancestral``: the RES second-order multistep step (:mod:`fewstep.solvers.ode.res`) taken
down to k-diffusion's ancestral ``sigma_down``, then ``sigma_up`` of fresh noise (``eta``, ``s_noise``).

In the k-diffusion levels ``s = sigma/alpha`` (the state scaled to ``y = x/alpha``), with ``s'`` the next node's
level and ``h_i = lambda_{i+1} - lambda_i`` (``s'/s = e^{-h_i}``), k-diffusion's ancestral split is

    sigma_up = min(s', eta s' sqrt(1 - e^{-2 h_i})),    sigma_down = sqrt(s'^2 - sigma_up^2),

and the step integrates the data-prediction ODE from ``lambda_i`` to ``lambda_down = -log sigma_down``
(``h = lambda_down - lambda_i``) with the RES weights, then adds the noise:

    y_t = e^{-h} y_s + h (b1 D_i + b2 D_{i-1}) + s_noise sigma_up z,
    b1 = phi_1(-h) - phi_2(-h)/c,  b2 = phi_2(-h)/c,  c = -h_prev/h,

where ``h_prev = lambda_down,{i-1} - lambda_{i-1}`` is the previous step's own size to its ``sigma_down`` (ComfyUI's
choice: at eta = 0 it is the node spacing, and the method is ``res_multistep``; at eta > 0 the previous data
estimate is placed one previous down-step behind, not at the previous node). In ``x = alpha y``:
``x_t = (alpha_t sigma_down / sigma_s) x_s + alpha_t h (b1 D_i + b2 D_{i-1}) + alpha_t s_noise sigma_up z``.

The first step, a step after one that went down to ``sigma_down = 0`` and a step of infinite lambda-size (to
sigma = 0: ``x_t = alpha_t D_i``; from alpha = 0) are first order, ``y_t = e^{-h} y_s + (1 - e^{-h}) D_i``; a step
to sigma = 0 adds no noise.

Its CFG++ form (ComfyUI ``sample_res_multistep_ancestral_cfg_pp``; :mod:`fewstep.solvers.cfg_pp`) is that of
``res_multistep``, to ``sigma_down``, then the same noise.
"""

from __future__ import annotations

import math

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, register
from ..cfg_pp import guided_rows, run_guided_plan
from ..multistep import DataStep, run_data_plan
from ..ode.res import PAPER_RES, res_cfg_pp_guided, res_weights
from ..stochastic import EtaNoiseOptions


def ancestral_split(s_to: float, h: float, eta: float) -> tuple[float, float]:
    """k-diffusion's ``(sigma_down, sigma_up)`` for the levels ``s`` to ``s_to = s e^{-h}``."""
    sigma_up = min(s_to, eta * s_to * math.sqrt(-math.expm1(-2.0 * h)))
    return math.sqrt(max(s_to**2 - sigma_up**2, 0.0)), sigma_up


@register
class ResMultistepAncestral(EtaNoiseOptions, Solver):
    name = "res_multistep_ancestral"
    order = 2
    stochastic = True
    records_transitions = True
    needs_eps = False
    cfg_pp = True
    summary = "RES second-order multistep step down to the ancestral sigma_down, then sigma_up of fresh noise"
    paper = PAPER_RES
    peers = "ComfyUI res_multistep_ancestral"

    def plan(self, nodes: NodeTable, ctx: RunContext) -> list[DataStep]:
        """Step i as ``x_t = ratio x_s + sum_j w_j D_{i-j} + std z`` (module docstring)."""
        a, s, lam = nodes.alpha, nodes.sigma, nodes.lam
        plan: list[DataStep] = []
        h_eff: list[float] = []  # each step's own size in lambda, to its sigma_down (inf: to 0, or from alpha = 0)
        for i in range(nodes.steps):
            a_t = float(a[i + 1])
            if not nodes.finite(i):  # first order, deterministic: x_t = (sigma_t/sigma_s) x_s + alpha_t D_i
                plan.append(DataStep(float(s[i + 1] / s[i]), [a_t], 0.0))
                h_eff.append(math.inf)
                continue
            eta = self.eta if ctx.stochastic_step(i) else 0.0
            s_to = float(s[i + 1]) / a_t
            sigma_down, sigma_up = ancestral_split(s_to, float(nodes.h[i]), eta)
            h = float(-math.log(sigma_down) - lam[i]) if sigma_down > 0.0 else math.inf
            h_eff.append(h)
            first = i == 0 or not math.isfinite(h) or not math.isfinite(h_eff[i - 1])
            weights = res_weights(h_eff, i, 1 if first else 2)  # [h b1, h b2], or [1 - e^{-h}]
            ratio = a_t * sigma_down / float(s[i])  # alpha_t e^{-h} / alpha_s
            plan.append(DataStep(ratio, [a_t * w for w in weights], a_t * sigma_up * self.s_noise))
        return plan

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        if self.runs_cfg_pp:
            guided = guided_rows(self.plan(nodes, ctx), nodes, res_cfg_pp_guided)
            return (yield from run_guided_plan(x, nodes, ctx, guided, 2))
        return (yield from run_data_plan(x, nodes, ctx, self.plan(nodes, ctx), 2))
