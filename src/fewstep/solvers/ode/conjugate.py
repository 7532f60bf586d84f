"""Conjugate integrators (Pandey, Rudolph & Mandt 2024, "Efficient Integrators for Diffusion Generative Models",
Sec. 3): lambda-DDIM, the conjugate integrator with ``B_t = lam I``.

A conjugate integrator maps the PF-ODE ``dx/dt = F_t x - 1/2 G_t G_t^T score`` to ``x^ = A_t x`` with
``A_t = exp(int_0^t (B_u - F_u) du)`` and takes Euler steps there, with the network output frozen over the step
and the coefficient of it integrated exactly (``Phi``). For an isotropic schedule (``x = alpha x0 + sigma eps``,
``y = x / alpha``, ``rho = sigma / alpha``, so that ``dy/dt = rho'(t) eps``) and ``B_t = lam I`` this is, with
``x^ = e^{lam u} y`` in the normalised time ``u = t / t_max`` (the paper's ``t`` on VP, where ``t_max = 1``),

    dx^/du = lam x^ + e^{lam u} (d rho / du) eps,

and one step from ``s`` to ``t`` (``du = u_t - u_s < 0``)

    y_t = e^{-lam du} (1 + lam du) y_s + (int_s^t e^{lam (v - u_t)} d rho(v)) eps_hat(x_s),
    x_t = alpha_t y_t.

``lam = 0`` is DDIM (``y_t = y_s + (rho_t - rho_s) eps_hat``); for any ``lam`` the factor of ``y_s`` is
``1 + O(du^2)`` and the method is first order. The integral is ``rho_t - e^{-lam du} rho_s - lam int e^{lam (v -
u_t)} rho(v) dv`` (by parts), the last term by Gauss-Legendre quadrature of the schedule's ``sigma/alpha``. A step
from ``alpha = 0`` or to ``sigma = 0`` (where ``y`` or ``t`` is not finite) is DDIM's ``alpha_t x0_hat + sigma_t
eps_hat``.

The default ``lam = -0.5`` is the best of a scan on the exact 2-D mixtures (VP, logSNR spacing, 10-20 NFE: RMSE
3-5x below DDIM's; see docs/new_solvers.md), where the best ``lam`` moves from -0.25 at 6 NFE to -0.75 at 40.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, register
from ..singlestep import FirstOrder

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)


class ConjugateStep(NamedTuple):
    """One planned lambda-DDIM step ``x_t = c_x x_s + c_eps eps_hat(x_s)``."""

    c_x: float
    c_eps: float


def conjugate_coefficients(nodes: NodeTable, i: int, lam: float) -> ConjugateStep:
    """The coefficients of the lambda-DDIM step ``x_t = c_x x_s + c_eps eps_hat`` from node i to i + 1 (module
    docstring); the step must have finite ``alpha_s > 0`` and ``sigma_t > 0``."""
    sched = nodes.schedule
    scale = float(sched.t_max)
    s, t = float(nodes.t[i]), float(nodes.t[i + 1])
    du = (t - s) / scale
    a_s, a_t = float(nodes.alpha[i]), float(nodes.alpha[i + 1])
    rho_s, rho_t = float(nodes.sigma[i]) / a_s, float(nodes.sigma[i + 1]) / a_t
    v = s + (t - s) * (_GL_NODES + 1.0) / 2  # Gauss-Legendre nodes in t on [s, t]
    vt = torch.from_numpy(v)
    rho_v = (sched.sigma(vt) / sched.alpha(vt)).double().numpy()
    tail = float(np.sum(_GL_WEIGHTS * np.exp(lam * (v - t) / scale) * rho_v) * du / 2)  # int e^{lam (v - u_t)} rho dv
    decay = math.exp(-lam * du)
    integral = rho_t - decay * rho_s - lam * tail
    return ConjugateStep(a_t / a_s * decay * (1.0 + lam * du), a_t * integral)


@register
class ConjugateDDIM(Solver):
    """lambda-DDIM: the conjugate integrator with ``B_t = lam I`` (module docstring); ``lam=0`` is DDIM."""

    name = "conjugate_ddim"
    order = 1
    lambda_based = False
    summary = "lambda-DDIM: Euler step of the conjugate ODE in x^ = e^{lam t} x / alpha (B_t = lam I)"
    paper = "Pandey, Rudolph & Mandt 2024, Efficient Integrators for Diffusion Generative Models"
    peers = "none (the paper's VP conjugate sampler; lam = 0: diffusers DDIMScheduler)"

    def __init__(self, lam: float = -0.5):
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam):
            raise ValueError(f"lam: need a finite float (0 is DDIM), got {lam!r}")
        self.lam = float(lam)

    def plan(self, nodes: NodeTable) -> list[FirstOrder | ConjugateStep]:
        """Per step a :class:`FirstOrder` row (DDIM, where the step is not finite) or a :class:`ConjugateStep`."""
        rows: list[FirstOrder | ConjugateStep] = []
        for i in range(nodes.steps):
            if nodes.alpha[i] > 0 and nodes.sigma[i + 1] > 0 and np.isfinite(nodes.t[i + 1]):
                rows.append(conjugate_coefficients(nodes, i, self.lam))
            else:
                rows.append(FirstOrder(float(nodes.alpha[i + 1]), float(nodes.sigma[i + 1])))
        return rows

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        plan = self.plan(nodes)
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            row = plan[i]
            if isinstance(row, FirstOrder):
                x = row.alpha_t * x0 + row.sigma_t * eps
            else:
                x = row.c_x * x + row.c_eps * eps
            ctx.emit(i, x, x0)
        return x
