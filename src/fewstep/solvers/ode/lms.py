"""LMS: the linear multistep (variable-step Adams-Bashforth) method in the noise level, as k-diffusion's
``sample_lms`` and diffusers' ``LMSDiscreteScheduler``.

On the PF-ODE ``dy/dtau = f`` (:meth:`~fewstep.nodes.NodeTable.ode_frame`: ``tau = sigma/alpha``, ``y = x/alpha``, ``f = eps`` for
diffusion schedules, k-diffusion's ``d = (x - denoised)/sigma``; ``tau = t``, ``y = x``, ``f`` = the velocity for
flows) the step from ``tau_i`` to ``tau_{i+1}`` integrates the interpolating polynomial of the last
``k = min(4, i + 1)`` values of ``f``:

    y_{i+1} = y_i + sum_{j<k} W_j f_{i-j},    W_j = int_{tau_i}^{tau_{i+1}} l_j(tau) dtau,

with ``l_j`` the Lagrange basis on the nodes ``tau_i, ..., tau_{i-k+1}``. k-diffusion and diffusers integrate
the basis with ``scipy.integrate.quad`` on every step; here it is integrated exactly (Gauss-Legendre with
``k`` points is exact for the degree ``k - 1`` basis), once, before the loop. As in both peers the step to
sigma = 0 keeps the full order (the basis integral over ``[sigma_i, 0]`` is finite). First-order steps (the
first, and one from a node of infinite sigma/alpha) are DDIM, ``alpha_{i+1} x0_hat + sigma_{i+1} eps_hat``, which
is Euler in the sigma frame.
"""

from __future__ import annotations

import numpy as np

from ..base import register
from ..frame import FrameMultistep, lagrange_integrals


@register
class LMS(FrameMultistep):
    name = "lms"
    order = 4
    summary = "linear multistep (variable-step Adams-Bashforth, order 4) in sigma/alpha (t for flows)"
    paper = "Adams-Bashforth linear multistep; Karras et al. 2022 / k-diffusion"
    peers = "k-diffusion sample_lms; diffusers LMSDiscreteScheduler"

    def _weights(self, tau: np.ndarray, i: int, k: int) -> list[float]:
        return lagrange_integrals([tau[i - j] for j in range(k)], tau[i], tau[i + 1])
