"""Stochastic gradient Langevin dynamics (Welling & Teh 2011, "Bayesian learning via stochastic gradient Langevin
dynamics").

ULA with a minibatch estimate of the score (:class:`~fewstep.langevin.MinibatchTarget`; each chain draws its own
minibatch every step):

    theta <- theta + h_t g_hat(theta) + sqrt(2 h_t) z,     h_t = h (b / (b + t))^gamma,

(``h = step_size``, ``gamma = decay``, ``b = decay_offset``; Welling & Teh's ``eps_t / 2 = h_t``). With a constant
step the chain's stationary law is biased by O(h) (the discretisation and the minibatch noise, of covariance
``h^2 Cov(g_hat)`` per step); a decaying step (``0.5 < gamma <= 1``) removes the bias as t grows. The step size is
not adapted (no acceptance to aim at): give one. On a plain :class:`~fewstep.langevin.Target` it is ULA with the
exact score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..noise.brownian import BrownianPath
from .chains import Chains
from .minibatch import MinibatchTarget, stochastic_score
from .noise import StepNoise, path_times
from .registry import check_run, register
from .sampler_options import parse_options, positive_float
from .target import Target

NAME = "sgld"


@dataclass
class SGLDOptions:
    """``decay`` (gamma) and ``decay_offset`` (b) of the step-size schedule ``h (b / (b + t))^gamma``;
    ``brownian``: a :class:`~fewstep.noise.BrownianPath` (``batch_size = chains``, ``shape = (d,)``) whose increment
    over ``[t0 + sum_{j<k} h_j, t0 + sum_{j<=k} h_j]`` drives step ``k`` instead of the generator (the minibatches
    still come from the generator)."""

    decay: float = 0.0
    decay_offset: float = 100.0
    brownian: BrownianPath | None = None

    def __post_init__(self) -> None:
        if isinstance(self.decay, bool) or not isinstance(self.decay, int | float) or not 0.0 <= self.decay <= 1.0:
            raise ValueError(
                f"decay of {NAME!r} must be in [0, 1] (0: constant step; 0.55: Welling & Teh's), got {self.decay!r}"
            )
        self.decay_offset = positive_float("decay_offset", self.decay_offset, NAME)


def required_step(step_size: float | None, sampler: str) -> float:
    """The step size of a sampler that does not adapt it (ValueError when it is missing)."""
    if step_size is None:
        raise ValueError(
            f"step_size of {sampler!r} is required (an unadjusted sampler has no acceptance rate to adapt it to); "
            "start about 1/(10 L) for a log-density whose score is L-Lipschitz (e.g. 1/(10 N) for N data)"
        )
    return float(step_size)


def step_schedule(h: float, steps: int, decay: float, offset: float) -> list[float]:
    """``h (b / (b + t))^gamma`` for ``t = 0 .. steps - 1``."""
    return [h * (offset / (offset + t)) ** decay for t in range(steps)]


@register(NAME)
def sgld(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Chains:
    """Stochastic gradient Langevin dynamics (module docstring)."""
    _, theta = check_run(target, x0, draws, warmup, step_size, NAME)
    opts = parse_options(SGLDOptions, options, NAME)
    h = required_step(step_size, NAME)
    steps = step_schedule(h, warmup + draws, opts.decay, opts.decay_offset)
    moves = [(s, math.sqrt(2.0 * s)) for s in steps]
    minibatch = target if isinstance(target, MinibatchTarget) else None
    chains = theta.shape[0]
    out = theta.new_empty(chains, draws, theta.shape[1])
    noise = StepNoise(theta, generator=generator, path=opts.brownian, times=path_times(steps))
    start = target.gradient_evaluations
    for i, (s, scale) in enumerate(moves):
        index = minibatch.draw_index(chains, theta.device, generator) if minibatch is not None else None
        theta = theta + s * stochastic_score(target, theta, index) + scale * noise.increment(i)
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
