"""Ancestral samplers: Euler ancestral (k-diffusion) and DDPM / DDIM with eta (Ho et al. 2020; Song et al. 2021).

Both are first order, one evaluation per step, and written as ``x_t = alpha_t x0_hat + c_eps eps_hat + c_z z``
with ``h = lambda_t - lambda_s`` and the k-diffusion levels ``s = sigma_s/alpha_s``, ``s' = sigma_t/alpha_t``
(``s'/s = e^{-h}``):

- Euler ancestral (k-diffusion ``get_ancestral_step``, in the scaled state ``y = x/alpha``):
  ``sigma_up = min(s', eta s' sqrt(1 - s'^2/s^2))``, ``sigma_down = sqrt(s'^2 - sigma_up^2)``, an Euler step of
  ``dy/ds = eps_hat`` from ``s`` down to ``sigma_down``, then ``sigma_up`` of fresh noise:
  ``y_t = y_s + (sigma_down - s) eps_hat + s_noise sigma_up z``, i.e.
  ``x_t = alpha_t x0_hat + alpha_t sigma_down eps_hat + alpha_t s_noise sigma_up z``. With ``downstep="flow"``
  (rectified flow, ComfyUI's rule for its flow models): ``sigma_d = sigma_t (1 + (sigma_t/sigma_s - 1) eta)`` in the
  schedule's sigma, ``x_t = alpha_t x0_hat + (alpha_t sigma_d / alpha_d) eps_hat + s_noise c z`` with
  ``alpha_d = 1 - sigma_d`` and ``c^2 = sigma_t^2 - (alpha_t sigma_d / alpha_d)^2``.
- DDPM / DDIM(eta) (DDIM eq. 12, 16): ``c = eta sigma_t sqrt(1 - e^{-2h})`` and
  ``x_t = alpha_t x0_hat + sqrt(sigma_t^2 - c^2) eps_hat + c z``. At eta = 1, ``c^2`` is the variance of the
  posterior ``q(x_t | x_s, x0)`` (DDPM's "fixed_small" variance, Ho et al. eq. 7) and the mean
  ``alpha_t x0_hat + sigma_t e^{-h} eps_hat`` is the posterior mean; at eta = 0 the step is DDIM.

The two are the same update: ``alpha_t sigma_up = eta sigma_t sqrt(1 - e^{-2h}) = c`` while eta <= 1 (where
k-diffusion's clamp ``sigma_up <= s'`` is inactive), and both equal SDE-DPM-Solver++(1) at eta = 1. Steps of
infinite lambda-size (to sigma = 0, from alpha = 0) are deterministic, see :mod:`fewstep.solvers.stochastic`.

Written in ``(x0_hat, eps_hat)``, each update is its own CFG++ form (:mod:`fewstep.solvers.cfg_pp`): with a CFG++
rule's pair (guided ``x0_hat``, unconditional ``eps_hat``) Euler ancestral is ComfyUI's
``sample_euler_ancestral_cfg_pp`` (the ``"scaled"`` downstep).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ...options import real_option
from ..base import Solver, Steps, register
from ..stochastic import EtaNoiseOptions, flow_downstep, noise_levels


class Coefficients(NamedTuple):
    """One planned step ``x_t = c_x0 x0_hat + c_eps eps_hat + c_z z``."""

    c_x0: float
    c_eps: float
    c_z: float


class _Ancestral(Solver):
    order = 1
    stochastic = True
    records_transitions = True
    cfg_pp = True  # the update is in (x0_hat, eps_hat) form: with a CFG++ pair it is the CFG++ step
    eta: float

    def coefficients(self, nodes: NodeTable, i: int, eta: float) -> Coefficients:
        """The coefficients of a step of finite lambda-size (``eta``: the solver's, 0 outside the SDE window)."""
        raise NotImplementedError

    def plan(self, nodes: NodeTable, i: int, eta: float) -> Coefficients:
        """The coefficients of step ``i``; a step of infinite lambda-size is deterministic."""
        if nodes.finite(i):
            return self.coefficients(nodes, i, eta)
        return Coefficients(float(nodes.alpha[i + 1]), float(nodes.sigma[i + 1]), 0.0)

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        level = noise_levels(nodes)
        coef = [self.plan(nodes, i, self.eta if ctx.stochastic_step(i) else 0.0) for i in range(nodes.steps)]
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            step = coef[i]
            x = step.c_x0 * x0 + step.c_eps * eps
            if step.c_z:
                x = ctx.transition(i, x, level[i], level[i + 1], step.c_z)[0]
            ctx.emit(i, x, x0)
        return x


@register
class EulerAncestral(EtaNoiseOptions, _Ancestral):
    """Euler ancestral: ``eta`` scales the fresh noise ``sigma_up`` (1: the ancestral/DDPM step, 0: Euler),
    ``s_noise`` multiplies the drawn noise (k-diffusion's options, same defaults)."""

    name = "euler_ancestral"
    summary = "Euler ancestral: Euler step down to sigma_down, then sigma_up of fresh noise (sigma/alpha frame)"
    paper = "Karras et al. 2022 (EDM); Crowson's k-diffusion (ancestral sampling of Ho et al. 2020)"
    peers = "k-diffusion sample_euler_ancestral; diffusers EulerAncestralDiscreteScheduler"

    #: the choices of ``downstep``
    DOWNSTEPS = ("scaled", "flow")

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, downstep: str = "scaled"):
        super().__init__(eta, s_noise)
        if downstep not in self.DOWNSTEPS:
            raise ValueError(f"downstep: choose one of {', '.join(map(repr, self.DOWNSTEPS))}, got {downstep!r}")
        #: "scaled": k-diffusion's ``get_ancestral_step`` on ``s = sigma/alpha``; "flow": ComfyUI's rectified-flow
        #: rule on the schedule's sigma (needs ``alpha + sigma = 1``, the Flow schedule)
        self.downstep = downstep

    def plan(self, nodes: NodeTable, i: int, eta: float) -> Coefficients:
        if self.downstep == "flow":
            return self.flow_coefficients(nodes, i, eta)
        return super().plan(nodes, i, eta)

    def flow_coefficients(self, nodes: NodeTable, i: int, eta: float) -> Coefficients:
        """ComfyUI's ancestral step for rectified flow (``alpha = 1 - sigma``, :func:`~fewstep.solvers.stochastic.
        flow_downstep`), defined from alpha_s = 0 on: the exact x0-step to ``sigma_d``
        ``x_d = (sigma_d / sigma_s) x + (1 - sigma_d / sigma_s) x0_hat``, then ``x_t = (alpha_t / alpha_d) x_d +
        s_noise std z``. In (x0_hat, eps_hat): ``x_t = alpha_t x0_hat + (alpha_t sigma_d / alpha_d) eps_hat +
        s_noise std z``."""
        split = flow_downstep(nodes, i, eta)
        return Coefficients(float(nodes.alpha[i + 1]), split.scale * split.sigma_down, split.std * self.s_noise)

    def coefficients(self, nodes: NodeTable, i: int, eta: float) -> Coefficients:
        a_t, s_to = float(nodes.alpha[i + 1]), float(nodes.sigma[i + 1] / nodes.alpha[i + 1])
        h = float(nodes.h[i])
        # sigma_up = min(s', eta sqrt(s'^2 (s^2 - s'^2) / s^2)) with s'/s = e^{-h}
        sigma_up = min(s_to, eta * s_to * math.sqrt(-math.expm1(-2.0 * h)))
        sigma_down = math.sqrt(max(s_to**2 - sigma_up**2, 0.0))
        return Coefficients(a_t, a_t * sigma_down, a_t * sigma_up * self.s_noise)


@register
class DDPM(_Ancestral):
    """DDPM's ancestral step, generalised by DDIM's ``eta`` in [0, 1] (1: DDPM, 0: DDIM)."""

    name = "ddpm"
    summary = "DDPM ancestral sampling (posterior q(x_t | x_s, x0_hat)); DDIM with eta"
    paper = "Ho et al. 2020 (DDPM), eq. 6-7; Song, Meng & Ermon 2021 (DDIM), eq. 12 and 16"
    peers = "diffusers DDPMScheduler (variance_type='fixed_small'), DDIMScheduler(eta)"

    def __init__(self, eta: float = 1.0):
        self.eta = real_option("eta", eta, high=1.0)

    def coefficients(self, nodes: NodeTable, i: int, eta: float) -> Coefficients:
        a_t, s_t, h = float(nodes.alpha[i + 1]), float(nodes.sigma[i + 1]), float(nodes.h[i])
        one_minus = -math.expm1(-2.0 * h)  # 1 - e^{-2h} = 1 - (alpha_s sigma_t / (alpha_t sigma_s))^2
        c = eta * s_t * math.sqrt(one_minus)
        return Coefficients(a_t, s_t * math.sqrt(1.0 - eta**2 * one_minus), c)
