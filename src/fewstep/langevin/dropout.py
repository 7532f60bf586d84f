"""Dropout-style structured SG-MCMC (Alexos, Boyd & Mandt 2022, "Structured Stochastic Gradient MCMC", the
"dropout" variant of S-SGMCMC): one gradient evaluation per step instead of one per group.

The parameters are split into groups as for :func:`~fewstep.langevin.structured.structured_sgmcmc`. At every step
each group of each chain is kept with probability ``rho`` (``keep``; the mask ``r_g ~ Bernoulli(rho)``); the
dropped groups take their values from an earlier state of the chain (drawn at random, per chain and group, from the
last ``history`` states), one gradient is evaluated at the mixed point, and only the kept groups move:

    theta~ = r * theta + (1 - r) * theta_past,
    theta_g <- theta_g + r_g (h [grad_{theta_g} log p(theta~)]_hat + sqrt(2 h) z_g).

``rho = 1`` is SGLD (every dependency kept); ``rho -> 0`` moves one group at a time against the others' earlier
states, the fully structured (S-SGMCMC) approximation. For a Gaussian posterior ``N(mu, Lambda^-1)``, with ``D``
the block diagonal of ``Lambda`` (the groups' blocks), the drift of a kept group averages to
``-D_gg (theta_g - mu_g) - rho sum_{k != g} Lambda_gk (theta_k - mu_k)`` once the history spans many relaxation
times (the earlier states average to ``mu``), a gradient flow, so the chain samples

    N(mu, (D + rho (Lambda - D))^-1),

which interpolates between the posterior (``rho = 1``) and the structured approximation ``(Lambda_gg)^-1`` per
group (``rho = 0``), up to the O(h) bias of the step. A step costs one gradient evaluation; a group moves on a
fraction ``rho`` of the steps, so the chain's relaxation time grows by ``1 / rho``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..noise.brownian import BrownianPath
from .chains import Chains
from .history import StateHistory
from .minibatch import MinibatchTarget, stochastic_score
from .noise import StepNoise, path_times
from .registry import check_run, register
from .sampler_options import parse_options
from .sgld import required_step, step_schedule
from .structured import StructuredOptions
from .target import Target

NAME = "dropout_sgmcmc"


@dataclass
class DropoutOptions(StructuredOptions):
    """The options of :func:`~fewstep.langevin.structured.structured_sgmcmc` (``groups`` required, ``history``,
    ``decay``, ``decay_offset``) and ``keep``: the probability ``rho`` that a group is kept (moves, with the
    current values) at a step, in ``(0, 1]``; ``brownian``: a :class:`~fewstep.noise.BrownianPath`
    (``batch_size = chains``, ``shape = (d,)``) driving the noise of step ``k`` over the path times of the step
    schedule, as in :func:`~fewstep.langevin.sgld.sgld` (the kept groups and minibatches still come from the
    generator)."""

    sampler: ClassVar[str] = NAME
    keep: float = 0.5
    brownian: BrownianPath | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.keep, bool) or not isinstance(self.keep, int | float) or not 0.0 < self.keep <= 1.0:
            raise ValueError(
                f"keep of {NAME!r} must be a probability in (0, 1] (1: SGLD; small: close to the structured "
                f"approximation of 'structured_sgmcmc'), got {self.keep!r}"
            )
        self.keep = float(self.keep)


@register(NAME)
def dropout_sgmcmc(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Chains:
    """Dropout-style structured SG-MCMC (module docstring)."""
    _, theta = check_run(target, x0, draws, warmup, step_size, NAME)
    opts = parse_options(DropoutOptions, options, NAME)
    h = required_step(step_size, NAME)
    chains, d = theta.shape
    owner = opts.assignment(d).to(theta.device)
    g_count = int(owner.max()) + 1
    steps = step_schedule(h, warmup + draws, opts.decay, opts.decay_offset)
    moves = [(s, math.sqrt(2.0 * s)) for s in steps]
    minibatch = target if isinstance(target, MinibatchTarget) else None
    history = StateHistory(theta, opts.history, generator)
    out = theta.new_empty(chains, draws, d)
    noise = StepNoise(theta, generator=generator, path=opts.brownian, times=path_times(steps))
    start = target.gradient_evaluations
    for i, (s, scale) in enumerate(moves):
        kept = (noise.uniform((chains, g_count)) < opts.keep).to(theta.dtype)[:, owner]  # [chains, d]
        mixed = kept * theta + (1.0 - kept) * history.per_coordinate(owner, g_count)
        index = minibatch.draw_index(chains, theta.device, generator) if minibatch is not None else None
        grad = stochastic_score(target, mixed, index)
        theta = theta + kept * (s * grad + scale * noise.increment(i))
        history.push(theta)
        if i >= warmup:
            out[:, i - warmup] = theta
    return Chains(
        draws=out,
        acceptance=None,
        gradient_evaluations=target.gradient_evaluations - start,
        step_size=steps[-1],
        inverse_mass=None,
        warmup=warmup,
        sampler=NAME,
    )
