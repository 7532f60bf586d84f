"""Multiscale annealed Langevin: the score of each smoothed level estimated by stochastic averaging, with no model
and no inner MCMC loop ("Sampling by averaging: a multiscale approach to score estimation", Cordero-Encinar,
Duncan, Reich & Akyildiz 2025, MultALMC, overdamped form).

Annealed Langevin samples ``pi`` by following its smoothings ``p_s = pi * N(0, s^2 I)`` from a large level down to
a small one (:func:`~fewstep.langevin.annealed.annealed_langevin` takes their scores from a diffusion model). Here
only ``pi`` is known (a :class:`~fewstep.langevin.Target`); ``grad log p_s(y) = (E[x | y] - y) / s^2`` with
``x | y ~ rho_s(x | y) ∝ pi(x) N(y; x, s^2 I)``, and the conditional expectation is estimated by averaging along
a fast process that samples ``rho_s(. | y)`` while the slow one moves:

    x <- x + d_i [grad log pi(x) + (y - x) / s_i^2] + sqrt(2 d_i) xi        (fast, one gradient evaluation)
    y <- y + e_i (x - y) / s_i^2 + sqrt(2 e_i) zeta                          (slow)

with ``e_i = c s_i^2`` (``c = step_size``, default 0.05) and ``d_i = min(e_i / epsilon, fast_step)``: the fast
process runs ``1 / epsilon`` times faster (the time-scale separation; ``epsilon`` default 0.1), its step capped by
``fast_step`` (required; about 0.1 / the largest curvature of ``log pi``) where ``pi``'s own curvature limits it.
As ``epsilon -> 0`` the slow process follows annealed Langevin with the exact scores of ``p_s`` (the averaging
principle). At any fixed level and for any ratio of the steps the pair is a Langevin diffusion preconditioned by
``diag(1, d_i / e_i)`` on the joint density ``pi(x) N(y; x, s^2 I)``, so its stationary law is that joint
density: ``y ~ p_s`` and ``x ~ pi`` exactly, up to the O(step) bias of the discretisation.

Levels ``s_1 > ... > s_L``: ``sigmas=[...]``, or ``levels`` geometric ones from ``sigma_max`` to ``sigma_min``;
``steps_per_level`` moves on each, then ``warmup`` and ``draws`` moves at ``s_L``. The draws are the slow states
(``output="slow"``, law ``p_{s_L}``, the paper's output) or the fast ones (``output="fast"``, law ``pi``). Start
from ``x0 = s_1 * randn(chains, d)`` (``p_{s_1}`` is nearly ``N(0, s_1^2 I)`` for large ``s_1``); the fast states
start there too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..noise.brownian import BrownianPath
from .chains import Chains
from .noise import StepNoise, path_times
from .registry import check_run, register
from .sampler_options import parse_options, positive_float, positive_int
from .target import Target

NAME = "multiscale_annealed"
OUTPUTS = ("slow", "fast")


@dataclass
class AveragingOptions:
    """``fast_step`` (required): the largest fast step; ``epsilon``: the time-scale ratio of the slow to the fast
    process, in ``(0, 1]``; ``sigmas`` (decreasing) or ``levels`` geometric ones from ``sigma_max`` to
    ``sigma_min``; ``steps_per_level``; ``output``: ``"slow"`` or ``"fast"`` (module docstring); ``brownian``: a
    :class:`~fewstep.noise.BrownianPath` (``batch_size = chains``, ``shape = (2, d)``: the fast and the slow
    process's) whose increment over the slow steps' times ``[t0 + sum_{j<k} e_j, t0 + sum_{j<=k} e_j]`` drives move
    ``k`` instead of the generator: in the slow time the pair is one diffusion, so refinements of ``step_size`` (with
    ``steps_per_level`` scaled to keep each level's time) share the path."""

    fast_step: float | None = None
    epsilon: float = 0.1
    sigmas: Sequence[float] | None = None
    levels: int = 10
    sigma_max: float = 10.0
    sigma_min: float = 0.1
    steps_per_level: int = 100
    output: str = "slow"
    brownian: BrownianPath | None = None

    def __post_init__(self) -> None:
        if self.fast_step is None:
            raise ValueError(
                f"fast_step of {NAME!r} is required: the largest step of the fast process, about 0.1 / the largest "
                "curvature of log p (e.g. fast_step=0.1 for a target of unit scale)"
            )
        self.fast_step = positive_float("fast_step", self.fast_step, NAME)
        self.epsilon = positive_float("epsilon", self.epsilon, NAME, maximum=1.0)
        self.levels = positive_int("levels", self.levels, NAME)
        self.steps_per_level = positive_int("steps_per_level", self.steps_per_level, NAME)
        if self.output not in OUTPUTS:
            raise ValueError(
                f"output of {NAME!r} must be 'slow' (the smoothed target at the last level) or 'fast' (the target "
                f"itself), got {self.output!r}"
            )

    def noise_levels(self) -> list[float]:
        """The checked, strictly decreasing levels."""
        if self.sigmas is not None:
            try:
                sigmas = [float(s) for s in self.sigmas]
            except (TypeError, ValueError) as err:
                raise TypeError(f"sigmas of {NAME!r} must be a sequence of floats, got {self.sigmas!r}") from err
            if not sigmas or not all(math.isfinite(s) and s > 0 for s in sigmas):
                raise ValueError(f"sigmas of {NAME!r} must be finite and > 0, got {list(self.sigmas)}")
            if any(b >= a for a, b in zip(sigmas, sigmas[1:], strict=False)):
                raise ValueError(f"sigmas of {NAME!r} must decrease strictly, got {sigmas}")
            return sigmas
        hi = positive_float("sigma_max", self.sigma_max, NAME)
        lo = positive_float("sigma_min", self.sigma_min, NAME)
        if not hi >= lo:
            raise ValueError(f"sigma_max of {NAME!r} must be >= sigma_min, got {hi} and {lo}")
        return np.geomspace(hi, lo, self.levels).tolist()


@dataclass(frozen=True)
class _Move:
    """The constants of one move at level ``s``: slow step ``e``, fast step ``d`` and their noise scales."""

    inv_var: float
    slow: float
    slow_noise: float
    fast: float
    fast_noise: float


@register(NAME)
def multiscale_annealed(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Chains:
    """Multiscale annealed Langevin (module docstring); ``step_size`` is ``c`` in ``e_i = c s_i^2`` (default 0.05,
    at most ``epsilon``)."""
    _, y = check_run(target, x0, draws, warmup, step_size, NAME)
    opts = parse_options(AveragingOptions, options, NAME)
    assert opts.fast_step is not None
    c = 0.05 if step_size is None else float(step_size)
    if c > opts.epsilon:
        raise ValueError(
            f"step_size of {NAME!r} (c = {c}) must be <= epsilon = {opts.epsilon}, so that the fast step "
            f"c s^2 / epsilon is at most s^2 (stable for the coupling term); lower step_size or raise epsilon"
        )
    sigmas = opts.noise_levels()
    moves = []
    for s in sigmas:
        e = c * s * s
        d = min(e / opts.epsilon, opts.fast_step)
        moves.append(_Move(1.0 / (s * s), e, math.sqrt(2.0 * e), d, math.sqrt(2.0 * d)))
    plan = [m for m in moves for _ in range(opts.steps_per_level)] + [moves[-1]] * (warmup + draws)
    first = len(plan) - draws
    fast_out = opts.output == "fast"
    x = y.clone()
    out = y.new_empty(y.shape[0], draws, y.shape[1])
    noise = StepNoise(y, generator=generator)
    path = None
    if opts.brownian is not None:  # both processes' increments over the slow step, normalised by its length
        pair = y.new_empty(y.shape[0], 2, y.shape[1])
        path = StepNoise(pair, generator=None, path=opts.brownian, times=path_times(m.slow for m in plan))
    start = target.gradient_evaluations
    for i, m in enumerate(plan):
        if path is None:
            fast_xi, slow_xi = noise.normal(), noise.normal()
        else:
            both = path.increment(i)
            fast_xi, slow_xi = both[:, 0], both[:, 1]
        x = x + m.fast * (target.score(x) + (y - x) * m.inv_var) + m.fast_noise * fast_xi
        y = y + m.slow * (x - y) * m.inv_var + m.slow_noise * slow_xi
        if i >= first:
            out[:, i - first] = x if fast_out else y
    return Chains(
        draws=out,
        acceptance=None,
        gradient_evaluations=target.gradient_evaluations - start,
        step_size=c,
        inverse_mass=None,
        warmup=first,
        sampler=NAME,
    )
