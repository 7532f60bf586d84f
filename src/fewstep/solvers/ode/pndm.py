"""iPNDM: the improved pseudo-numerical method of Zhang & Chen (DEIS, 2023), Adams-Bashforth on the PF-ODE of
the noise prediction, as diffusers' ``IPNDMScheduler`` and the DEIS repository's ``ipndm``; and its
variable-step form.

With ``y = x/alpha``, ``rho = sigma/alpha`` and ``dy/drho = eps`` (:meth:`~fewstep.nodes.NodeTable.ode_frame`; for flows ``y = x``,
``t`` and the velocity, the frame Euler steps in), step i uses the last ``k = min(4, i + 1)`` estimates (the
first-order steps are DDIM in both frames):

- ``ipndm``: the Adams-Bashforth weights of equal steps, ``y_{i+1} = y_i + (rho_{i+1} - rho_i) sum_j c_j eps_{i-j}``
  with ``c = 1; 3/2, -1/2; 23/12, -16/12, 5/12; 55/24, -59/24, 37/24, -9/24``. This is DDIM with the noise
  estimate replaced by the extrapolation ``sum_j c_j eps_{i-j}`` (diffusers' form). The weights are exact only
  where the steps are equal in rho (in t for flows); on any other grid the method is consistent but second
  order: the step-size changes enter its ``h^2`` term (measured order 2.05 on logSNR grids). Its registered
  order is therefore 2; on equal steps it coincides with ``ipndm_v``.
- ``ipndm_v``: the variable-step Adams-Bashforth weights ``W_j = int_{rho_i}^{rho_{i+1}} l_j(rho) drho`` of the
  Lagrange basis on the nodes ``rho_i, ..., rho_{i-k+1}``, exact, fourth order on every smooth grid. This is
  the same method as :class:`~fewstep.solvers.ode.lms.LMS` (k-diffusion's ``sample_lms``).

Both keep the full order up to and including a step to sigma = 0, as diffusers' scheduler does (its last
step lands on ``alpha = 1, sigma = 0``), and restart their history after a pure-noise node of infinite rho.
"""

from __future__ import annotations

import numpy as np

from ..base import register
from ..frame import AB_UNIFORM, FrameMultistep, lagrange_integrals

PAPER_DEIS = "Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator"


@register
class IPNDM(FrameMultistep):
    name = "ipndm"
    order = 2
    summary = "iPNDM: Adams-Bashforth 4 with equal-step weights on the noise-prediction ODE (order 4 on equal steps)"
    paper = PAPER_DEIS
    peers = "diffusers IPNDMScheduler; DEIS repository ipndm"

    def _weights(self, tau: np.ndarray, i: int, k: int) -> list[float]:
        dtau = float(tau[i + 1] - tau[i])
        return [dtau * c for c in AB_UNIFORM[k]]


@register
class IPNDMVariable(FrameMultistep):
    name = "ipndm_v"
    order = 4
    summary = "iPNDM with variable-step Adams-Bashforth weights (order 4 on any grid; same method as lms)"
    paper = PAPER_DEIS
    peers = "diff-sampler ipndm_v (whose order-3/4 weights are exact for equal steps only)"

    def _weights(self, tau: np.ndarray, i: int, k: int) -> list[float]:
        return lagrange_integrals([tau[i - j] for j in range(k)], tau[i], tau[i + 1])
