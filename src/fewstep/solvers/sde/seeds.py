"""SEEDS-1/2/3: exponential SDE solvers with exact stochastic integrals (Gonzalez et al. 2023, "SEEDS: Exponential
SDE Solvers for Fast High-Quality Sampling from Diffusion Models"), in the data prediction with k-diffusion's ``eta``.

The reverse SDE family (``eta`` as in :mod:`fewstep.solvers.sde.sde_dpm`: 0 the probability-flow ODE, 1 the reverse SDE)
from ``lambda_s`` over ``h = lambda_t - lambda_s``, with ``H = (1 + eta) h``, is solved by variation of constants:

    x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t int_0^h (1 + eta) e^{-(1 + eta)(h - u)} x0(lambda_s + u) du
          + sigma_t int_0^h sqrt(2 eta) e^{-eta (h - u)} dW_u.

A singlestep method evaluates the data estimate at stages ``lambda_s + c_j h`` (``0 = c_0 < c_1 < ... < 1``) and
approximates the drift integral as DPM-Solver++ does; SEEDS' point is the noise: the Ito integral is split over the
sub-intervals ``[c_{k-1}, c_k]`` into independent standard normals ``z_k`` (one per sub-interval, drawn with
``nodes.noise`` between the sub-interval's noise levels), and every stage uses exactly its share,

    noise at stage c_j = sum_{k <= j} sigma_{c_j} e^{-eta (c_j - c_k) h} sqrt(1 - e^{-2 eta (c_k - c_{k-1}) h}) z_k,

so that the stages see one Brownian path and the noise of the full step has the exact variance
``sigma_t^2 (1 - e^{-2 eta h})``. The drift (``D_j`` the data estimate at stage j):

- SEEDS-1: ``x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-H}) D_0 + noise`` (= SDE-DPM-Solver++(1));
- SEEDS-2 (``c_1 = 1/2``): stage ``u_1`` by SEEDS-1 over ``h/2``;
  ``x_t = ... + alpha_t (1 - e^{-H}) D_1 + noise`` (DPM-Solver++(2S) with ``r = 1/2``);
- SEEDS-3 (``c = 1/3, 2/3``): ``u_1`` by SEEDS-1 over ``h/3``;
  ``u_2 = ... + alpha_{s2} ((1 - e^{-c_2 H}) D_0 + (c_2/c_1) c_2 H phi_2(-c_2 H) (D_1 - D_0))``;
  ``x_t = ... + alpha_t ((1 - e^{-H}) D_0 + (1/c_2) H phi_2(-H) (D_2 - D_0))`` (DPM-Solver-3's weights).

Log-probabilities (``trajectory=``). Stage j of a step (``u_K = x_t``, the step's end) is
``u_j = r_j x_s + sum_{l<j} w_jl f_l + sum_{k<=j} n_jk z_k``, ``f_l`` the model's estimate at stage l (at ``x_s``
for l = 0). Its last normal ``z_j`` enters no earlier stage, and the earlier ones are fixed by the earlier stage
states, ``z_k = (u_k - mean_k)/n_kk``, so ``u_j | x_s, u_1, ..., u_{j-1} ~ N(mean_j, n_jj^2 I)`` with
``mean_j = r_j x_s + sum_{l<j} w_jl f_l + sum_{k<j} n_jk z_k``. A step records one transition per draw, in order
(``Trajectory.step`` the step, ``noisy`` the stage states, the last ``x_t``); by the chain rule their
log-densities sum to the log-density of the stage states ``(u_1, ..., u_K)`` given ``x_s`` (and over the run, of
all stage states given the start). The earlier ``z_k`` enter ``mean_j`` as the drawn tensors (with ``grad=True``
the means are differentiated with the noise held fixed, as for the other samplers).

Options of the stages (ComfyUI's ``sample_seeds_2`` / ``sample_seeds_3``): SEEDS-2 takes its stage at ``c_1 = r``
(default 1/2) and ``solver_type`` picks its final drift: ``"phi_1"`` (default) the DPM-Solver++(2S) form
``alpha_t (1 - e^{-H}) ((1 - 1/(2r)) D_0 + 1/(2r) D_1)``, ``"phi_2"`` the exponential integrator of the data
estimate interpolated linearly in lambda through the two stages,
``alpha_t ((1 - e^{-H}) D_0 + (1/r) H phi_2(-H) (D_1 - D_0))`` (SEEDS' eq. for ``phi_2``; both second order for
any ``0 < r <= 1``). ``r = 1`` with ``"phi_2"`` is the exponential Heun method on ``x0`` (:class:`ExpHeun2X0SDE`,
and its ODE form ``exp_heun_2_x0``). SEEDS-3 takes its stages at ``c = r_1, r_2`` (default 1/3, 2/3); its final
drift weights ``D_2`` alone, which is third order only for ``r_2 = 2/3`` (second order otherwise). A stage at the
step's end (``r = 1``) leaves a sub-interval of zero width, which draws nothing.

At eta = 0 SEEDS-2 is ``dpmpp_2s``. An NFE budget is spent as DPM-Solver's (``[3, ..., 3, 2, 1]``-type order plans). Steps of infinite lambda-size are deterministic first-order steps
(:mod:`fewstep.solvers.stochastic`). The stage machinery (:mod:`fewstep.solvers.stages`) is shared with
:mod:`fewstep.solvers.sde.sde_dpm_2`, the noise-prediction counterpart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ...options import real_option
from ..base import Steps, register
from ..phi import hphi
from ..singlestep import BudgetOrders
from ..stages import Stage, StepPlan, noise_weights, run_stages, stage_points
from ..stochastic import EtaNoiseOptions, noise_levels

PAPER_SEEDS = (
    "Gonzalez et al. 2023, SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion Models"
)


#: The default stage fractions ``c_1, ...`` of SEEDS-1/2/3 (the step's end, 1, is implicit).
FRACTIONS = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}
#: The final drift of a two-stage step (module docstring).
SOLVER_TYPES = ("phi_1", "phi_2")


def seeds_drift(
    order: int, fractions: Sequence[float], big_h: float, solver_type: str = "phi_1"
) -> list[tuple[float, ...]]:
    """Drift weights (before the factor ``alpha_c``) of the data estimates ``D_0, D_1, ...`` at every stage and at the
    step's end, for the step ``H = (1 + eta) h`` (module docstring)."""
    if order == 1:
        return [(hphi(1, big_h),)]
    if order == 2:
        (c1,) = fractions
        if solver_type == "phi_2":  # (1/r) H phi_2(-H) on D_1 - D_0: D linear in lambda through both stages
            g = hphi(2, big_h) / big_h / c1
            return [(hphi(1, c1 * big_h),), (hphi(1, big_h) - g, g)]
        return [(hphi(1, c1 * big_h),), (hphi(1, big_h) * (1 - 0.5 / c1), hphi(1, big_h) * 0.5 / c1)]
    c1, c2 = fractions
    g2 = c2 / c1 * hphi(2, c2 * big_h) / (c2 * big_h)  # (c2/c1) c2 H phi_2(-c2 H) = (c2/c1)(1 - phi_1(-c2 H))
    g3 = hphi(2, big_h) / big_h / c2  # (1/c2) H phi_2(-H)
    return [
        (hphi(1, c1 * big_h),),
        (hphi(1, c2 * big_h) - g2, g2),
        (hphi(1, big_h) - g3, 0.0, g3),
    ]


class _SEEDS(EtaNoiseOptions, BudgetOrders):
    """Given an NFE budget, SEEDS-2/3 mix orders as DPM-Solver-fast (:func:`fewstep.solvers.singlestep.fast_orders`),
    so any budget can be spent; with ``steps=`` every finite step has the full order."""

    stochastic = True
    records_transitions = True
    paper = PAPER_SEEDS
    solver_type = "phi_1"

    def fractions(self, order: int) -> tuple[float, ...]:
        """The stage fractions of a step of the given order (the defaults; SEEDS-2/3 take theirs as options)."""
        return FRACTIONS[order]

    def plan(self, nodes: NodeTable, ctx: RunContext) -> tuple[list[StepPlan], list[list[float]]]:
        a, s, h = nodes.alpha, nodes.sigma, nodes.h
        level = noise_levels(nodes)
        plans: list[StepPlan] = []
        cuts: list[list[float]] = []
        for i, k in enumerate(self.step_orders(nodes)):
            if not nodes.finite(i):
                plans.append((float(a[i + 1]), float(s[i + 1])))
                cuts.append([])
                continue
            eta = self.eta if ctx.stochastic_step(i) else 0.0
            hi, fr = float(h[i]), self.fractions(k)
            pts = stage_points(nodes, i, fr)
            fractions = [0.0, *fr, 1.0]
            ends = [(p.alpha, p.sigma, p) for p in pts] + [(float(a[i + 1]), float(s[i + 1]), None)]
            # the sub-intervals of the Ito integral: a stage at the step's end (r = 1) adds one of zero width
            keep = [j == 0 or c > fractions[j - 1] for j, c in enumerate(fractions)]
            cut_fractions = [c for c, k_ in zip(fractions, keep, strict=True) if k_]
            stages = []
            for c, (alpha_c, sigma_c, p), w in zip(
                fractions[1:], ends, seeds_drift(k, fr, (1.0 + eta) * hi, self.solver_type), strict=True
            ):
                noise = noise_weights(c, cut_fractions, hi, eta, sigma_c * self.s_noise, data=True) if eta else ()
                ratio = sigma_c / float(s[i]) * math.exp(-eta * c * hi)
                stages.append(Stage(p, ratio, tuple(alpha_c * wj for wj in w), noise))
            plans.append(stages)
            levels = [float(level[i]), *(nodes.frame_at(p)[0] for p in pts), float(level[i + 1])]
            cuts.append([lv for lv, k_ in zip(levels, keep, strict=True) if k_])
        return plans, cuts

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        plans, cuts = self.plan(nodes, ctx)
        return (yield from run_stages(x, nodes, ctx, plans, cuts, use_eps=False))


@register
class SEEDS1(_SEEDS):
    name = "seeds_1"
    order = 1
    summary = "SEEDS-1: exponential SDE solver, data prediction (= SDE-DPM-Solver++(1)), eta"
    peers = "none (equals ddpm at eta = 1)"


def _solver_type(value: object) -> str:
    if value not in SOLVER_TYPES:
        raise ValueError(f"solver_type: choose 'phi_1' or 'phi_2', got {value!r}")
    return str(value)


def _fraction(name: str, value: object) -> float:
    """A stage fraction ``0 < c <= 1`` of the step in lambda."""
    c = real_option(name, value, 0.0, 1.0)
    if c == 0.0:
        raise ValueError(f"{name}: must be > 0 and <= 1 (a stage inside the step), got {value!r}")
    return c


@register
class SEEDS2(_SEEDS):
    """SEEDS-2 with its stage at ``lambda_s + r h`` and the final drift ``solver_type`` (module docstring)."""

    name = "seeds_2"
    order = 2
    nfe_per_step = 2
    summary = "SEEDS-2: two-stage exponential SDE solver (midpoint in lambda), stages share the Brownian path"
    peers = "ComfyUI sample_seeds_2"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5, solver_type: str = "phi_1"):
        super().__init__(eta, s_noise)
        self.r = _fraction("r", r)
        self.solver_type = _solver_type(solver_type)

    def fractions(self, order: int) -> tuple[float, ...]:
        return (self.r,) if order == 2 else FRACTIONS[order]

    def recording_refusal(self) -> str | None:
        if self.r == 1.0 and self.eta > 0.0:  # the step's end reuses the stage's normal: not a new transition
            return f"trajectory: {self.name!r} with r = 1 adds the stage's own noise again at the step's end"
        return super().recording_refusal()


@register
class SEEDS3(_SEEDS):
    """SEEDS-3 with its stages at ``lambda_s + r_1 h`` and ``lambda_s + r_2 h`` (module docstring)."""

    name = "seeds_3"
    order = 3
    nfe_per_step = 3
    summary = "SEEDS-3: three-stage exponential SDE solver (c = 1/3, 2/3), stages share the Brownian path"
    peers = "ComfyUI sample_seeds_3"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r_1: float = 1.0 / 3.0, r_2: float = 2.0 / 3.0):
        super().__init__(eta, s_noise)
        self.r_1, self.r_2 = _fraction("r_1", r_1), _fraction("r_2", r_2)
        if not self.r_1 < self.r_2:
            raise ValueError(f"r_1, r_2: need 0 < r_1 < r_2 <= 1, got r_1={r_1!r}, r_2={r_2!r}")

    def fractions(self, order: int) -> tuple[float, ...]:
        return (self.r_1, self.r_2) if order == 3 else FRACTIONS[order]

    def recording_refusal(self) -> str | None:
        if self.r_2 == 1.0 and self.eta > 0.0:
            return f"trajectory: {self.name!r} with r_2 = 1 adds the stage's own noise again at the step's end"
        return super().recording_refusal()


@register
class ExpHeun2X0SDE(SEEDS2):
    """The stochastic exponential Heun method on ``x0``: SEEDS-2 with its stage at the step's end (``r = 1``) and the
    ``phi_2`` drift, ``x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t ((1 - e^{-H}) D_s + H phi_2(-H) (D_t - D_s))
    + sigma_t sqrt(1 - e^{-2 eta h}) z``, where ``D_t`` is the data estimate at the SEEDS-1 predictor ``u`` (which
    carries the same ``z``)."""

    name = "exp_heun_2_x0_sde"
    summary = "exponential Heun on x0 in lambda, stochastic: SEEDS-1 predictor to the step's end, phi_2 corrector"
    paper = PAPER_SEEDS
    peers = "ComfyUI sample_exp_heun_2_x0_sde"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "phi_2"):
        super().__init__(eta, s_noise, r=1.0, solver_type=solver_type)


@register
class ExpHeun2X0(SEEDS2):
    """The exponential Heun method on ``x0`` in lambda (the probability-flow ODE; ``exp_heun_2_x0_sde`` at eta = 0):
    the DPM-Solver++(1) predictor ``u = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) D_s`` to the step's end, then
    ``x_t = (sigma_t/sigma_s) x_s + alpha_t ((1 - e^{-h}) D_s + h phi_2(-h) (D(u) - D_s))``: the exact integral of the
    data estimate interpolated linearly in lambda between the step's ends (second order; ``solver_type="phi_1"``
    weights ``D_s`` and ``D(u)`` by ``(1 - e^{-h})/2`` each instead, the DPM-Solver++(2S) form at ``r = 1``)."""

    name = "exp_heun_2_x0"
    stochastic = False
    records_transitions = False
    summary = "exponential Heun on x0 in lambda: DPM-Solver++(1) predictor to the step's end, phi_2 corrector"
    peers = "ComfyUI sample_exp_heun_2_x0"

    def __init__(self, solver_type: str = "phi_2"):
        super().__init__(0.0, 0.0, r=1.0, solver_type=solver_type)
