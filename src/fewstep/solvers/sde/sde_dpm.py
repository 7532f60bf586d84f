"""SDE-DPM-Solver-1 and SDE-DPM-Solver++(2M)/(3M): exponential integrators of the reverse SDE family
(Lu et al. 2022, "DPM-Solver++", Sec. 5 and App. B), with k-diffusion's ``eta``.

The family, indexed by ``eta >= 0`` (k-diffusion's parameter; 0 is the probability-flow ODE, 1 the reverse SDE
of Song et al. 2021, in general the noise ``sqrt(eta) g dW``): with ``h = lambda_t - lambda_s``,
``H = (1 + eta) h`` and the data estimates ``D_j``, integrating the linear part exactly gives

- data prediction (SDE-DPM-Solver++): ``x_t = (sigma_t/sigma_s) e^{-eta h} x_s
  + alpha_t int_0^h (1 + eta) e^{-(1 + eta)(h - u)} x0(lambda_s + u) du + sigma_t sqrt(1 - e^{-2 eta h}) z``.
  With ``x0`` expanded in lambda (``d1 ~ h x0'``, ``d2 ~ h^2 x0''/2``, the scaled divided differences of the
  last data estimates as in :mod:`fewstep.solvers.ode.dpmpp`) the integral is
  ``(1 - e^{-H}) D_i + H phi_2(-H) d1 + 2 H phi_3(-H) d2``:

  - 2M, ``solver_type="midpoint"`` (DPM-Solver++ eq. for SDE-DPM-Solver++(2M)): ``d1`` weighted by
    ``(1 - e^{-H})/2``; ``solver_type="heun"``: by the exact ``H phi_2(-H)``. With ``r = h_{i-1}/h``,
    ``d1 = (D_i - D_{i-1})/r``.
  - 3M: ``H phi_2(-H) d1 + 2 H phi_3(-H) d2`` (``d2_weight="taylor"``, the default, as fewstep's ``dpmpp_3m``);
    ``d2_weight="reference"`` weights ``d2`` by ``H phi_3(-H)`` as k-diffusion's ``sample_dpmpp_3m_sde``. The default
    is deliberate: ``int_0^h (1 + eta) e^{-(1 + eta)(h - u)} u^2/2 du = H^3 phi_3(-H) / (1 + eta)^2`` times ``x0''``, and
    ``x0'' = 2 d2 / h^2``, so the Taylor weight is ``2 H phi_3(-H)``; the reference's half of it leaves an ``O(h^3)``
    local error in that term. With ``lower_order_final`` (default) the order is also lowered on the last steps of runs
    under 15 steps, which k-diffusion does not do; ``d2_weight="reference", lower_order_final=False`` reproduces
    ``sample_dpmpp_3m_sde`` (``fewstep.integrations.kdiffusion.sample_dpmpp_3m_sde`` selects it). Its
    second-order warm-up step uses the exact ``H phi_2(-H)`` weight (k-diffusion's too).

- noise prediction (SDE-DPM-Solver-1, DPM-Solver++ App. B, generalised to eta):
  ``x_t = (alpha_t/alpha_s) x_s - (1 + eta) sigma_t (e^h - 1) eps_s + sqrt(eta) sigma_t sqrt(e^{2h} - 1) z``.

``s_noise`` multiplies the drawn noise. Steps of infinite lambda-size are deterministic first-order steps
(:mod:`fewstep.solvers.stochastic`); the noise-prediction step would otherwise leave noise of size
``alpha_t sigma_s/alpha_s`` at sigma = 0. Multistep warm-up and ``lower_order_final`` are as for ``dpmpp_2m``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ...options import bool_option
from ..base import Solver, Steps, register
from ..multistep import PAPER_PP, DataStep, multistep_orders, multistep_weights, run_data_plan
from ..phi import hphi
from ..stochastic import EtaNoiseOptions, noise_levels

SOLVER_TYPES = ("midpoint", "heun")


class NoiseStep(NamedTuple):
    """One planned noise-prediction step ``x_t = c_x x_s + c_x0 x0_hat + c_eps eps_hat + c_z z``."""

    c_x: float
    c_x0: float
    c_eps: float
    c_z: float


@register
class DPMSolver1SDE(EtaNoiseOptions, Solver):
    """SDE-DPM-Solver-1 (noise prediction); eta = 0 is DPM-Solver-1 (= DDIM)."""

    name = "dpm_solver_1_sde"
    order = 1
    stochastic = True
    records_transitions = True
    summary = "SDE-DPM-Solver-1: first-order exponential integrator of the reverse SDE, noise prediction"
    paper = PAPER_PP + " (App. B, SDE-DPM-Solver-1)"
    peers = "diffusers DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver', solver_order=1)"

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        a, s, h = nodes.alpha, nodes.sigma, nodes.h
        level = noise_levels(nodes)
        plan = []
        for i in range(nodes.steps):
            if nodes.finite(i):
                hi, eta = float(h[i]), self.eta if ctx.stochastic_step(i) else 0.0
                c_eps = -(1.0 + eta) * float(s[i + 1]) * math.expm1(hi)
                c_z = math.sqrt(eta * math.expm1(2.0 * hi)) * float(s[i + 1]) * self.s_noise
                plan.append(NoiseStep(float(a[i + 1] / a[i]), 0.0, c_eps, c_z))
            else:  # deterministic: x_t = alpha_t x0_hat + sigma_t eps_hat
                plan.append(NoiseStep(0.0, float(a[i + 1]), float(s[i + 1]), 0.0))
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            step = plan[i]  # x_t = c_x x_s + c_eps eps_hat + c_z z, or c_x0 x0_hat + c_eps eps_hat where c_x = 0
            x = step.c_x * x + step.c_eps * eps if step.c_x else step.c_x0 * x0 + step.c_eps * eps
            if step.c_z:
                x = ctx.transition(i, x, level[i], level[i + 1], step.c_z)[0]
            ctx.emit(i, x, x0)
        return x


class _MultistepSDE(EtaNoiseOptions, Solver):
    """Shared loop: ``x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t sum_j w_j D_{i-j} + c_z z``."""

    stochastic = True
    records_transitions = True
    needs_eps = False
    paper = PAPER_PP + " (SDE-DPM-Solver++); k-diffusion (eta)"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, lower_order_final: bool = True):
        super().__init__(eta, s_noise)
        self.lower_order_final = bool_option("lower_order_final", lower_order_final)

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return multistep_orders(nodes, self.order, self.lower_order_final)

    def weights(self, big_h: np.ndarray, i: int, order: int) -> list[float]:
        """Weights of ``D_i, D_{i-1}, ...`` on a finite step, in terms of ``H = (1 + eta) h``."""
        raise NotImplementedError

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        plan = self.data_plan(nodes, ctx.stochastic_step)
        return (yield from run_data_plan(x, nodes, ctx, plan, self.order))

    def data_plan(self, nodes: NodeTable, stochastic_step: Callable[[int], bool]) -> list[DataStep]:
        """The plan rows ``x_t = ratio x_s + sum_j w_j D_{i-j} + noise z`` of every step (``stochastic_step(i)``:
        whether step i may add noise); the Gaussian transitions a particle method proposes from."""
        a, s, h = nodes.alpha, nodes.sigma, nodes.h
        plan: list[DataStep] = []
        for i, k in enumerate(self.step_orders(nodes)):
            if nodes.finite(i):
                eta = self.eta if stochastic_step(i) else 0.0
                big_h = (1.0 + eta) * h  # this step's eta on the whole array: the weights use ratios of its entries
                eta_h = eta * float(h[i])
                ratio = float(s[i + 1] / s[i]) * math.exp(-eta_h)
                noise = float(s[i + 1]) * math.sqrt(-math.expm1(-2.0 * eta_h)) * self.s_noise
                plan.append(DataStep(ratio, [float(a[i + 1]) * w for w in self.weights(big_h, i, k)], noise))
            else:  # deterministic first order: x_t = (sigma_t/sigma_s) x_s + alpha_t x0_hat
                plan.append(DataStep(float(s[i + 1] / s[i]), [float(a[i + 1])], 0.0))
        return plan


def _second_order(big_h: np.ndarray, i: int, solver_type: str) -> list[float]:
    w1 = hphi(1, big_h[i])  # 1 - e^{-H}
    r = big_h[i - 1] / big_h[i]  # = h_{i-1}/h_i
    c = 0.5 * w1 / r if solver_type == "midpoint" else hphi(2, big_h[i]) / big_h[i] / r  # H phi_2(-H) / r
    return [w1 + c, -c]


@register
class DPMSolverPP2MSDE(_MultistepSDE):
    name = "dpmpp_2m_sde"
    order = 2
    summary = "SDE-DPM-Solver++(2M): second-order multistep for the reverse SDE family (eta), data prediction"
    peers = "k-diffusion sample_dpmpp_2m_sde; diffusers DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++')"

    def __init__(
        self, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint", lower_order_final: bool = True
    ):
        super().__init__(eta, s_noise, lower_order_final)
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type: choose 'midpoint' or 'heun', got {solver_type!r}")
        self.solver_type = solver_type

    def weights(self, big_h: np.ndarray, i: int, order: int) -> list[float]:
        if order == 1:
            return [hphi(1, big_h[i])]
        return _second_order(big_h, i, self.solver_type)


@register
class DPMSolverPP3MSDE(_MultistepSDE):
    name = "dpmpp_3m_sde"
    order = 3
    summary = "SDE-DPM-Solver++(3M): third-order multistep for the reverse SDE family (eta), data prediction"
    peers = "k-diffusion sample_dpmpp_3m_sde (d2_weight='reference')"

    def __init__(
        self, eta: float = 1.0, s_noise: float = 1.0, lower_order_final: bool = True, d2_weight: str = "taylor"
    ):
        super().__init__(eta, s_noise, lower_order_final)
        if d2_weight not in ("reference", "taylor"):
            raise ValueError(f"d2_weight: choose 'reference' or 'taylor', got {d2_weight!r}")
        self.d2_weight = d2_weight

    def weights(self, big_h: np.ndarray, i: int, order: int) -> list[float]:
        if order == 1:
            return [hphi(1, big_h[i])]
        if order == 2:
            return _second_order(big_h, i, "heun")
        return multistep_weights(big_h, i, 3, self.d2_weight)
