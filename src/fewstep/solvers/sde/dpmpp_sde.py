"""DPM-Solver++(2S) with ancestral noise at its stage and at its step: k-diffusion's ``sample_dpmpp_sde``
(Crowson's stochastic DPM-Solver++; the deterministic part is Lu et al. 2022, "DPM-Solver++", Alg. 1 with ``r``).

In the levels ``s = sigma_s/alpha_s`` (k-diffusion's sigma), the scaled state ``y = x/alpha`` and
``h = lambda_t - lambda_s``, one step with the stage at ``lambda_s + r h`` (level ``s_r``) is

- stage: ``(d_1, u_1) = ancestral(s, s_r)`` (k-diffusion's ``get_ancestral_step``, as in
  :mod:`fewstep.solvers.sde.ancestral_dpm`), ``y_u = (d_1/s) y_s + (1 - d_1/s) D_s + s_noise u_1 z_1``,
  ``D_u = D(y_u)`` at ``s_r``;
- step: ``(d_2, u_2) = ancestral(s, s')``, ``D' = (1 - 1/(2r)) D_s + 1/(2r) D_u``,
  ``y_t = (d_2/s) y_s + (1 - d_2/s) D' + s_noise u_2 z_2``,

the first-order DPM-Solver++ step ``(d/s) y + (1 - d/s) D`` (``= (sigma_d/sigma_s) y - (e^{-h_d} - 1) D``) down to the
ancestral level, then the fresh noise. In x: ``x = alpha y`` at each point. ``z_1`` is drawn between the levels
``(s, s_r)`` and ``z_2`` between ``(s, s')``: the two intervals overlap, as in the reference, where both are
normalised increments of one Brownian path ``W`` in the level (k-diffusion's Brownian tree). A noise sampler
(``noise_sampler=brownian_level_sampler(...)``, the k-diffusion function's default with a seed) is asked for exactly
those two intervals. With ``generator=`` or ``seed=`` the path is made from two independent normals, ``z_a`` on
``(s, s_r)`` and ``z_b`` on ``(s_r, s')``:

    z_1 = z_a,    z_2 = (sqrt(d_1) z_a + sqrt(d_2) z_b) / sqrt(d_1 + d_2),    d_1 = |s_r - s|, d_2 = |s' - s_r|,

which has the Brownian correlation ``sqrt(d_1 / (d_1 + d_2))`` (independent ``z_1``, ``z_2`` would add the stage's
noise twice over and converge to a wrong distribution). Because the two draws are correlated, their Gaussian
transitions are not recorded (no ``trajectory=``).

At eta = 0 and ``r = 1/2`` this is ``dpmpp_2s``; other ``r`` in (0, 1] give DPM-Solver++'s 2S with that stage. An
NFE budget is spent with DPM-Solver's order plan (``[2, ..., 2, 1]`` for an odd budget), whose first-order step is
``y_t = (d_2/s) y_s + (1 - d_2/s) D_s + s_noise u_2 z_2``. Steps of infinite lambda-size are deterministic
(:mod:`fewstep.solvers.stochastic`; k-diffusion's Euler step to sigma = 0).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ...context import RunContext
from ...model import Point
from ...nodes import NodeTable
from ...options import real_option
from ..base import Steps, register
from ..multistep import PAPER_PP
from ..singlestep import BudgetOrders, FirstOrder
from ..stochastic import EtaNoiseOptions, noise_levels
from .ancestral_dpm import ancestral_levels


class AncestralUpdate(NamedTuple):
    """``x' = c_x x_s + c_d D + c_z z``, with ``z`` drawn between the levels ``cut``."""

    c_x: float
    c_d: float
    c_z: float
    cut: tuple[float, float]


class StochasticMidpoint(NamedTuple):
    """A planned step: the stage (at ``point``) and the step's end, with the end's data-estimate weights ``(w0, w1)``
    of ``D_s`` and ``D_u``, and the weights ``(sqrt(d_1), sqrt(d_2)) / sqrt(d_1 + d_2)`` of the step's noise ``z_2``
    made from two independent draws (module docstring)."""

    point: Point
    stage: AncestralUpdate
    end: AncestralUpdate
    weights: tuple[float, float]
    path: tuple[float, float]


def ancestral_update(alpha: float, sigma_s: float, s_s: float, s_to: float, h: float, eta: float, s_noise: float,
                     cut: tuple[float, float]) -> AncestralUpdate:  # fmt: skip
    """The first-order ancestral DPM-Solver++ update from the level ``s_s`` to ``s_to`` (``h`` apart in lambda) at a
    point with ``alpha``: ``x' = alpha ((d/s) x_s/alpha_s + (1 - d/s) D + s_noise u z)``."""
    lv = ancestral_levels(s_to, h, eta)
    ratio = lv.down / s_s
    # alpha (d/s) x_s / alpha_s = alpha d x_s / sigma_s
    return AncestralUpdate(alpha * lv.down / sigma_s, alpha * (1.0 - ratio), alpha * s_noise * lv.up, cut)


@register
class DPMSolverPPSDE(EtaNoiseOptions, BudgetOrders):
    """k-diffusion's ``sample_dpmpp_sde``: ``eta`` scales the ancestral noise (0: DPM-Solver++(2S) with ``r``),
    ``s_noise`` multiplies the drawn noise, ``r`` is the stage's fraction of the lambda-step (default 1/2)."""

    name = "dpmpp_sde"
    order = 2
    nfe_per_step = 2
    stochastic = True
    summary = "DPM-Solver++(2S) with ancestral noise after its stage and its step (stage at r h in lambda)"
    paper = PAPER_PP + "; Crowson's k-diffusion (stochastic variant)"
    peers = "k-diffusion sample_dpmpp_sde"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
        super().__init__(eta, s_noise)
        self.r = real_option("r", r, high=1.0)
        if self.r == 0.0:
            raise ValueError(f"r: must be in (0, 1] (the stage's fraction of the step), got {r!r}")

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        a, s, h = nodes.alpha, nodes.sigma, nodes.h
        level = noise_levels(nodes)
        plan: list[FirstOrder | AncestralUpdate | StochasticMidpoint] = []
        for i, k in enumerate(self.step_orders(nodes)):
            if not nodes.finite(i):  # deterministic: x_t = alpha_t x0_hat + sigma_t eps_hat
                plan.append(FirstOrder(float(a[i + 1]), float(s[i + 1])))
                continue
            eta = self.eta if ctx.stochastic_step(i) else 0.0
            a_t, s_i, hi = float(a[i + 1]), float(s[i]), float(h[i])
            k_s, k_t = s_i / float(a[i]), float(s[i + 1]) / a_t  # k-diffusion's sigma = sigma/alpha
            lev_s, lev_t = float(level[i]), float(level[i + 1])  # the noise levels the draws are asked for
            end = ancestral_update(a_t, s_i, k_s, k_t, hi, eta, self.s_noise, (lev_s, lev_t))
            if k == 1:
                plan.append(end)
                continue
            p = nodes.point_at_lambda(float(nodes.lam[i]) + self.r * hi)
            k_r = p.sigma / p.alpha
            lev_r = p.t if nodes.schedule.ode_variable == "t" else k_r  # the stage's noise level (t for flows)
            stage = ancestral_update(p.alpha, s_i, k_s, k_r, self.r * hi, eta, self.s_noise, (lev_s, lev_r))
            fac = 0.5 / self.r  # D' = (1 - 1/(2r)) D_s + 1/(2r) D_u
            d1, d2 = abs(lev_r - lev_s), abs(lev_t - lev_r)  # the Brownian path's two increments (in the level)
            path = ((d1 / (d1 + d2)) ** 0.5, (d2 / (d1 + d2)) ** 0.5) if d1 + d2 > 0 else (1.0, 0.0)
            plan.append(StochasticMidpoint(p, stage, end, (1.0 - fac, fac), path))
        one_path = ctx.noise.kind == "sampler"  # a noise sampler is asked for both (overlapping) intervals
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            step = plan[i]
            if isinstance(step, FirstOrder):
                x = step.alpha_t * x0 + step.sigma_t * eps
            elif isinstance(step, AncestralUpdate):
                x = self._update(step, x, x0, ctx)
            else:
                z_1 = ctx.draw(*step.stage.cut, x) if step.stage.c_z else None
                u = self._update(step.stage, x, x0, ctx, z_1)
                x0_u, _ = yield u, step.point
                w0, w1 = step.weights
                z_2 = None
                if step.end.c_z and not one_path:  # z_2 = c_a z_a + c_b z_b, the path over the whole step
                    lev_r, lev_t = step.stage.cut[1], step.end.cut[1]
                    z_a = z_1 if z_1 is not None else ctx.draw(*step.stage.cut, x)
                    z_2 = (z_a * step.path[0]).add_(ctx.draw(lev_r, lev_t, x), alpha=step.path[1])
                x = self._update(step.end, x, w0 * x0 + w1 * x0_u, ctx, z_2)
            ctx.emit(i, x, x0)
        return x

    @staticmethod
    def _update(step: AncestralUpdate, x: Tensor, d: Tensor, ctx: RunContext, z: Tensor | None = None) -> Tensor:
        """``c_x x + c_d d + c_z z`` (a new tensor), ``z`` given or drawn between the update's levels."""
        out = x * step.c_x
        out.add_(d, alpha=step.c_d)
        if step.c_z:
            out.add_(z if z is not None else ctx.draw(*step.cut, out), alpha=step.c_z)
        return out
