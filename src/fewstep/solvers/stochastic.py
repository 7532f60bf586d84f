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

import numpy as np

from ..nodes import NodeTable
from ..options import real_option


class EtaNoiseOptions:
    """The options of the stochastic solvers that take exactly these two: ``eta >= 0`` (the stochasticity; 0 is
    the ODE step) and ``s_noise >= 0`` (a factor on the drawn noise)."""

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        self.eta = real_option("eta", eta)
        self.s_noise = real_option("s_noise", s_noise)


def noise_levels(nodes: NodeTable) -> np.ndarray:
    """The noise level of every node, as passed to the noise sampler (inf at alpha = 0, 0 at the clean end)."""
    return nodes.ode_frame()[0]
