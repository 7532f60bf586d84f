"""The overshooting sampler of AMO (Hu et al. 2024, "AMO Sampler: Enhancing Text Rendering with Overshooting",
Alg. 1) for flow-matching models: each step overshoots with the ODE to a lower noise level than the next node,
then adds fresh noise to come back to the next node's marginal.

In the paper's rectified-flow convention (time ``r = 1 - t`` from noise to data), from ``r`` to ``r' = r + dr`` the
Euler step goes to ``r_o = min(r' + c dr (1 - r'), 1)`` and ``x_{r'} = a x_{r_o} + b z`` with ``a = r'/r_o`` and
``b = sqrt((1 - r')^2 - (a - r')^2)`` (the marginal's noise level comes back to ``1 - r'``). In fewstep's Flow
convention ``x = (1 - t) x0 + t eps`` (``alpha = 1 - t``, ``sigma = t``) the overshoot point is

    t_o = t' (1 - c (t - t')),

and the step, with the Euler (= DDIM) step to ``t_o`` written in ``(x0_hat, eps_hat)`` form, is

    x_{t'} = alpha_{t'} x0_hat + (alpha_{t'} sigma_o / alpha_o) eps_hat + sqrt(sigma_{t'}^2 - (alpha_{t'} sigma_o /
    alpha_o)^2) z.

On other schedules the same rule is applied in the normalised time ``u = t / t_max`` (``u_o = u' (1 - c (u - u'))``,
never below the schedule's ``t_min``; a flow's ``t_o`` goes down to 0, the data, as the reference's ``r_o`` up to 1). ``c = 0`` is the Euler/DDIM step; on a Flow schedule ``c`` equals ComfyUI's
rectified-flow ancestral ``eta`` times ``t`` at the step's start. A step from ``alpha = 0`` (the first step of a flow
from pure noise) or to ``sigma = 0`` is the deterministic DDIM step (see :mod:`fewstep.solvers.stochastic`).
The attention modulation of AMO (a per-pixel ``c`` from the text attention of an MM-DiT) needs the network's
internals and is not part of this solver.
"""

from __future__ import annotations

import math

import torch

from ...nodes import NodeTable
from ...options import real_option
from ..base import register
from .ancestral import Coefficients, _Ancestral

PAPER_AMO = "Hu et al. 2024, AMO Sampler: Enhancing Text Rendering with Overshooting"


@register
class Overshoot(_Ancestral):
    """AMO's overshooting sampler with strength ``c >= 0`` (module docstring; the reference's default ``c = 1``)."""

    name = "overshoot"
    summary = "AMO overshooting: Euler past the next node to t' (1 - c (t - t')), then fresh noise back to its marginal"
    paper = PAPER_AMO
    peers = "diffusers FlowMatchStochasticOvershootDiscreteScheduler (attn_map=None)"
    cfg_pp = False  # no published CFG++ form

    def __init__(self, c: float = 1.0):
        #: the overshooting strength (the loop of the ancestral samplers reads it as ``eta``: 0 outside the SDE window)
        self.eta = real_option("c", c)

    @property
    def c(self) -> float:
        return self.eta

    def coefficients(self, nodes: NodeTable, i: int, eta: float) -> Coefficients:
        sched = nodes.schedule
        scale = float(sched.t_max)
        s, t = float(nodes.t[i]), float(nodes.t[i + 1])
        a_t, s_t = float(nodes.alpha[i + 1]), float(nodes.sigma[i + 1])
        floor = 0.0 if sched.ode_variable == "t" else float(sched.t_min)  # a flow is defined down to the data
        t_o = max(t * (1.0 - eta * (s - t) / scale), floor)
        if eta == 0.0 or t_o >= t:
            return Coefficients(a_t, s_t, 0.0)
        to = torch.tensor(t_o, dtype=torch.float64)
        a_o, s_o = float(sched.alpha(to)), float(sched.sigma(to))
        c_eps = a_t * s_o / a_o
        return Coefficients(a_t, c_eps, math.sqrt(max(s_t**2 - c_eps**2, 0.0)))

    def __repr__(self) -> str:
        return f"Overshoot(c={self.c!r})"
