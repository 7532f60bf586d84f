"""Shared pieces of the stochastic samplers (:mod:`~fewstep.solvers.sde.ancestral`, :mod:`~fewstep.solvers.sde.sde_dpm`,
:mod:`~fewstep.solvers.sde.edm_sde`): option checks, the noise levels and which steps draw noise.

Noise. A stochastic step draws one standard normal ``z`` between the levels ``level_s`` and ``level_t`` (:meth:`~fewstep.context.RunContext.draw`):
``torch.randn`` with the run's generator, or the user's ``noise_sampler(level_s, level_t)``. The levels are the
schedule's noise level at the two ends of the step (:meth:`~fewstep.nodes.NodeTable.ode_frame`: sigma/alpha, k-diffusion's sigma,
or t for flows; 0 at the clean end), so that a Brownian-path noise sampler gives increments over disjoint
intervals, independent across steps and consistent across step counts.

Deterministic steps. A step of infinite lambda-size is deterministic, first order and written in the
``(x0_hat, eps_hat)`` form ``x_t = alpha_t x0_hat + sigma_t eps_hat`` (DDIM), which is finite at both ends:

- to sigma = 0 (the clean end) it is ``alpha_t x0_hat``: no noise is added at the data, as in k-diffusion and
  diffusers, where every sampler's last step to sigma = 0 returns the data estimate.
- from alpha = 0 (a flow at t = 1, a zero-terminal-SNR schedule) the marginal-preserving SDE in the x/alpha
  frame is undefined (sigma/alpha = inf). Its limit over the infinite lambda-step forgets the state entirely,
  ``x_t = alpha_t x0_hat + sigma_t z``, which has the same law as the deterministic step (``eps_hat = x/sigma``
  is the given standard normal noise there) but throws the given noise away; fewstep takes the deterministic
  step so that the sample depends on ``noise`` (and the noise draws start with the second step).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..context import RunContext
from ..model import Point
from ..nodes import NodeTable
from ..options import real_option


class EtaNoiseOptions:
    """The options of the stochastic solvers that take exactly these two: ``eta >= 0`` (the stochasticity; 0 is
    the ODE step) and ``s_noise >= 0`` (a factor on the drawn noise)."""

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        self.eta = real_option("eta", eta)
        self.s_noise = real_option("s_noise", s_noise)


class FlowDownstep(NamedTuple):
    """ComfyUI's ancestral split of a rectified-flow step from ``sigma_s`` to ``sigma_t`` (``alpha = 1 - sigma``):
    the deterministic step goes to the real point ``sigma_down`` of the flow, its result is rescaled by ``scale =
    alpha_t / alpha_down`` and ``std z`` is added, so that ``x_t = scale x_down + s_noise std z``."""

    sigma_down: float
    scale: float
    std: float


def flow_downstep(nodes: NodeTable, i: int, eta: float) -> FlowDownstep:
    """The split of step ``i`` (ComfyUI's ``*_RF`` ancestral samplers):

        sigma_down = sigma_t (1 + (sigma_t / sigma_s - 1) eta),   alpha_down = 1 - sigma_down,
        std^2 = sigma_t^2 - (alpha_t sigma_down / alpha_down)^2   (the marginal's variance sigma_t^2 is kept).

    Needs a rectified-flow schedule (``alpha + sigma = 1``, :class:`~fewstep.Flow`): a ValueError naming
    ``downstep`` otherwise."""
    a_s, s_s = float(nodes.alpha[i]), float(nodes.sigma[i])
    a_t, s_t = float(nodes.alpha[i + 1]), float(nodes.sigma[i + 1])
    if abs(a_s + s_s - 1.0) > 1e-9 or abs(a_t + s_t - 1.0) > 1e-9:
        raise ValueError("downstep: 'flow' needs a rectified-flow schedule (alpha + sigma = 1, fewstep.Flow)")
    if s_t == 0.0:  # the step to the clean end: no noise
        return FlowDownstep(0.0, a_t, 0.0)
    down = s_t * (1.0 + (s_t / s_s - 1.0) * eta)
    if eta == 0.0:  # sigma_down = sigma_t: the deterministic step, exactly
        return FlowDownstep(s_t, 1.0, 0.0)
    scale = a_t / (1.0 - down)
    return FlowDownstep(down, scale, math.sqrt(max(s_t**2 - down**2 * a_t**2 / (1.0 - down) ** 2, 0.0)))


def noise_levels(nodes: NodeTable) -> np.ndarray:
    """The noise level of every node, as passed to the noise sampler (inf at alpha = 0, 0 at the clean end)."""
    return nodes.ode_frame()[0]


class Churn(NamedTuple):
    """Step i's churn: the model is evaluated at ``point`` on ``x_hat = scale x_i + std z``."""

    point: Point
    scale: float
    std: float


class ChurnOptions:
    """EDM's churn (Karras et al. 2022, Alg. 2; :mod:`fewstep.solvers.sde.edm_sde`): the options ``s_churn``,
    ``s_tmin``, ``s_tmax``, ``s_noise`` and the churn of a step, shared by the samplers that churn before their
    deterministic step (``edm_sde``, k-diffusion's ``dpm_2`` and ComfyUI's ``heunpp2`` with ``s_churn > 0``)."""

    def __init__(self, s_churn: float = 40.0, s_tmin: float = 0.05, s_tmax: float = 50.0, s_noise: float = 1.0):
        self.s_churn = real_option("s_churn", s_churn)
        self.s_tmin = real_option("s_tmin", s_tmin)
        self.s_tmax = real_option("s_tmax", s_tmax, allow_inf=True)
        if self.s_tmax < self.s_tmin:
            raise ValueError(f"s_tmax: must be >= s_tmin = {self.s_tmin}, got {s_tmax!r}")
        self.s_noise = real_option("s_noise", s_noise)

    def churn_point(self, nodes: NodeTable, ctx: RunContext, i: int) -> Point | None:
        """Where step i evaluates the model after the churn (None: no churn, at node i)."""
        alpha, sigma, lam = float(nodes.alpha[i]), float(nodes.sigma[i]), float(nodes.lam[i])
        s = sigma / alpha if alpha > 0 else math.inf
        if not (self.s_churn > 0 and alpha > 0 and self.s_tmin <= s <= self.s_tmax and ctx.stochastic_step(i)):
            return None
        gamma = min(self.s_churn / nodes.steps, math.sqrt(2.0) - 1.0)
        sched = nodes.schedule
        t_hat = min(float(sched.t_of_lambda(lam - math.log1p(gamma))), sched.t_max)  # s_hat = (1 + gamma) s
        return nodes.point(t_hat) if t_hat > nodes.t[i] else None

    def churn(self, nodes: NodeTable, ctx: RunContext, i: int) -> Churn | None:
        """Step i's churn, ``x_hat = (alpha_hat/alpha_i) x_i + alpha_hat sqrt(s_hat^2 - s_i^2) s_noise z``, or None."""
        p = self.churn_point(nodes, ctx, i)
        if p is None:
            return None
        s_i, s_hat = float(nodes.sigma[i] / nodes.alpha[i]), p.sigma / p.alpha
        std = p.alpha * math.sqrt(max(s_hat**2 - s_i**2, 0.0)) * self.s_noise
        return Churn(p, p.alpha / float(nodes.alpha[i]), std)
