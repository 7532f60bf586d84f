"""SDE-DPM-Solver-2: the second-order singlestep solver of the reverse SDE family in the noise prediction
(Lu et al. 2022, "DPM-Solver++", App. B), with k-diffusion's ``eta`` as :mod:`fewstep.solvers.sde.sde_dpm`.

The family's exact solution in the noise prediction (``h = lambda_t - lambda_s``) is

    x_t = (alpha_t/alpha_s) x_s - (1 + eta) sigma_t int_0^h e^{h - u} eps(lambda_s + u) du
          + sigma_t int_0^h sqrt(2 eta) e^{h - u} dW_u.

With the intermediate stage at ``lambda_s + r h`` (``r = 1/2``):

    u   = (alpha_{s1}/alpha_s) x_s - (1 + eta) sigma_{s1} (e^{r h} - 1) eps_s + sqrt(eta) sigma_{s1} sqrt(e^{2 r h} - 1) z_1
    x_t = (alpha_t/alpha_s) x_s - (1 + eta) sigma_t (e^h - 1) eps_s - (1 + eta) sigma_t/(2 r) (e^h - 1) (eps(u) - eps_s)
          + sqrt(eta) sigma_t (e^{(1 - r) h} sqrt(e^{2 r h} - 1) z_1 + sqrt(e^{2 (1 - r) h} - 1) z_2),

where ``z_1, z_2`` are the normals of the sub-intervals ``[s, s1]`` and ``[s1, t]`` (drawn with ``nodes.noise`` between
their noise levels): the stage and the step share one Brownian path and the step's noise has the exact variance
``eta sigma_t^2 (e^{2h} - 1)`` (the exact split of the Ito integral, as SEEDS, :mod:`fewstep.solvers.sde.seeds`). At
eta = 0 this is DPM-Solver-2 (``dpm_solver_2``); its first-order steps are SDE-DPM-Solver-1 (``dpm_solver_1_sde``),
and an NFE budget is spent with DPM-Solver's order plan (``[2, ..., 2, 1]`` for an odd budget).

Log-probabilities (``trajectory=``): a second-order step records two Gaussian transitions (the stage loop of
:mod:`fewstep.solvers.sde.seeds`), ``u | x_s ~ N(mean_u, eta sigma_{s1}^2 (e^{2 r h} - 1) s_noise^2 I)`` with ``mean_u``
the two first terms of ``u``, and ``x_t | x_s, u ~ N(mean_t, eta sigma_t^2 (e^{2 (1 - r) h} - 1) s_noise^2 I)`` with
``mean_t`` everything but the ``z_2`` term of ``x_t``, where ``z_1 = (u - mean_u)/std_u``; their sum is the
log-density of ``(u, x_t)`` given ``x_s``.
"""

from __future__ import annotations

import math

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Steps, register
from ..multistep import PAPER_PP
from ..singlestep import BudgetOrders
from ..stages import Stage, StepPlan, noise_weights, run_stages, stage_points
from ..stochastic import EtaNoiseOptions, noise_levels

R = 0.5


@register
class DPMSolver2SDE(EtaNoiseOptions, BudgetOrders):
    name = "dpm_solver_2_sde"
    order = 2
    nfe_per_step = 2
    stochastic = True
    records_transitions = True
    summary = "SDE-DPM-Solver-2: singlestep midpoint in lambda for the reverse SDE family (eta), noise prediction"
    paper = PAPER_PP + " (App. B, SDE-DPM-Solver-2)"
    peers = "none (k-diffusion's sample_dpmpp_sde is the data-prediction analogue)"

    def _noise(self, c: float, fractions: list[float], h: float, eta: float, sigma_c: float) -> tuple[float, ...]:
        return noise_weights(c, fractions, h, eta, sigma_c * self.s_noise, data=False) if eta else ()

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        a, s, h = nodes.alpha, nodes.sigma, nodes.h
        level = noise_levels(nodes)
        plans: list[StepPlan] = []
        cuts: list[list[float]] = []
        for i, k in enumerate(self.step_orders(nodes)):
            if not nodes.finite(i):  # deterministic: x_t = alpha_t x0_hat + sigma_t eps_hat
                plans.append((float(a[i + 1]), float(s[i + 1])))
                cuts.append([])
                continue
            eta = self.eta if ctx.stochastic_step(i) else 0.0
            hi, a_t, s_t = float(h[i]), float(a[i + 1]), float(s[i + 1])
            fractions = [0.0, 1.0] if k == 1 else [0.0, R, 1.0]
            e = -(1.0 + eta) * s_t * math.expm1(hi)  # -(1 + eta) sigma_t (e^h - 1)
            if k == 1:  # SDE-DPM-Solver-1
                plans.append([Stage(None, a_t / float(a[i]), (e,), self._noise(1.0, fractions, hi, eta, s_t))])
                cuts.append([float(level[i]), float(level[i + 1])])
                continue
            (p1,) = stage_points(nodes, i, [R])
            u = Stage(
                p1,
                p1.alpha / float(a[i]),
                (-(1.0 + eta) * p1.sigma * math.expm1(R * hi),),
                self._noise(R, fractions, hi, eta, p1.sigma),
            )
            end = Stage(
                None, a_t / float(a[i]), (e * (1.0 - 0.5 / R), e * 0.5 / R), self._noise(1.0, fractions, hi, eta, s_t)
            )
            plans.append([u, end])
            cuts.append([float(level[i]), nodes.frame_at(p1)[0], float(level[i + 1])])
        return (yield from run_stages(x, nodes, ctx, plans, cuts, use_eps=True))
