"""Walk-jump sampling (Saremi & Hyvärinen 2019, "Neural empirical Bayes") and its multi-measurement form, the
chain of log-concave Markov chains (Saremi, Park & Bach 2023, "Chain of Log-Concave Markov Chains").

Walk: Langevin moves on the noisy measurement ``y = x + sigma eps`` of the data at one noise level ``sigma`` (the
:class:`~fewstep.langevin.DiffusionTarget`'s); jump: the empirical-Bayes estimate ``x_hat(y) = E[x | y]``, read
from the same model evaluation. With ``measurements = m > 1``, the measurements ``y_1, ..., y_m`` (each ``x +
sigma eps_k``) are sampled one after the other: ``y_k`` from ``p(y_k | y_1..y_{k-1})``, which is log-concave for
large k, with the score

    grad_{y_k} log p(y_1, ..., y_k) = (E[x | y_1..y_k] - y_k) / sigma^2,   E[x | y_1..y_k] = x_hat(ybar_k, sigma/sqrt(k)),

``ybar_k`` the running mean of the measurements, a measurement at noise ``sigma/sqrt(k)``: the model evaluated
at ``ybar_k`` at that level. Each walk is ULA,

    y_k <- y_k + e score + sqrt(2 e) z,    e = c sigma^2   (c = step_size),

``steps_per_measurement`` moves for each of the first ``m - 1`` measurements (the last move's state is kept), then,
on the last one, ``warmup`` moves and ``draws`` kept moves. A kept draw is the jump ``x_hat(ybar_m)`` of the
state (``jump=False``: the measurement mean ``ybar_m`` itself, distributed as the data smoothed at
``sigma/sqrt(m)``). ``m = 1`` is walk-jump sampling; its jumps are posterior means, smoother than the data (a
component of variance ``v`` jumps with variance ``v^2/(v + sigma^2)``), which the accumulated measurements reduce.
The first walk alone moves between modes (the later conditionals are log-concave), so it sets the modes' weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .annealed import as_diffusion_target
from .chains import Chains
from .noise import StepNoise
from .registry import check_run, register
from .sampler_options import parse_options, positive_float, positive_int
from .target import Target

NAME = "walk_jump"


@dataclass
class WalkJumpOptions:
    """``measurements``: how many noisy measurements are accumulated (1: walk-jump); ``steps_per_measurement``:
    the walk's moves on each measurement but the last; ``jump``: keep the jumps (else the measurement means)."""

    measurements: int = 1
    steps_per_measurement: int = 50
    jump: bool = True

    def __post_init__(self) -> None:
        self.measurements = positive_int("measurements", self.measurements, NAME)
        self.steps_per_measurement = positive_int("steps_per_measurement", self.steps_per_measurement, NAME)
        if not isinstance(self.jump, bool):
            raise TypeError(f"jump of {NAME!r} must be a bool, got {self.jump!r}")


@register(NAME)
def walk_jump(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Chains:
    """Walk-jump sampling at the target's noise level (module docstring); ``step_size`` is ``c`` in ``e = c
    sigma^2`` (default 0.1)."""
    model = as_diffusion_target(target, NAME)
    _, y = check_run(target, x0, draws, warmup, step_size, NAME)
    opts = parse_options(WalkJumpOptions, options, NAME)
    c = 0.1 if step_size is None else positive_float("step_size", step_size, NAME, maximum=2.0)
    m, sigma = opts.measurements, model.sigma
    sigmas = model.check_sigmas([sigma / math.sqrt(k) for k in range(1, m + 1)], "measurements (sigma/sqrt(m))")
    levels = model.levels(sigmas, y.shape[0], y.device, y.dtype)
    scale = math.sqrt(2.0 * c) * sigma  # sqrt(2 e)
    out = y.new_empty(y.shape[0], draws, y.shape[1])
    noise = StepNoise(y, generator=generator)
    start = model.gradient_evaluations
    total = torch.zeros_like(y)  # the sum of the measurements kept so far
    for k, level in enumerate(levels, start=1):
        last = k == m
        moves = warmup + draws if last else opts.steps_per_measurement
        first = moves - draws  # the first kept move (on the last measurement)
        for i in range(moves):
            mean = (total + y) / k
            x_hat = model.evaluate(mean, level)[1]
            if last and opts.jump and i > first:
                out[:, i - first - 1] = x_hat  # the jump of the previous kept state
            y = y + c * (x_hat - y) + scale * noise.normal()
            if last and not opts.jump and i >= first:
                out[:, i - first] = (total + y) / k
        if not last:
            total = total + y  # keep y_k; the next walk starts from it
    if opts.jump:
        out[:, -1] = model.evaluate((total + y) / m, levels[-1])[1]
    return Chains(
        draws=out,
        acceptance=None,
        gradient_evaluations=model.gradient_evaluations - start,
        step_size=c,
        inverse_mass=None,
        warmup=(m - 1) * opts.steps_per_measurement + warmup,
        sampler=NAME,
    )
