"""Annealed Langevin dynamics over a diffusion model's noise levels (Song & Ermon 2019, "Generative modeling by
estimating gradients of the data distribution", Alg. 1; NCSNv2's final denoising step, Song & Ermon 2020).

On decreasing noise levels ``s_1 > ... > s_L`` (sigma/alpha of the model's schedule), ``steps_per_level`` Langevin
moves on each smoothed density ``p_s = p_data * N(0, s^2 I)``, whose score is the model's
(:class:`~fewstep.langevin.DiffusionTarget`):

    y <- y + e_i grad log p_{s_i}(y) + sqrt(2 e_i) z,     e_i = c s_i^2,     z ~ N(0, I),

(``c = step_size``; Song & Ermon's ``alpha_i = eps s_i^2 / s_L^2`` is ``c = eps / s_L^2``). After the annealing,
``warmup`` more moves at ``s_L``, then ``draws`` kept moves; with ``denoise=True`` each kept state is replaced by
its Tweedie denoising ``E[x0 | y] = y + s_L^2 grad log p_{s_L}(y)`` (read from the next move's evaluation, so only
the last draw costs one extra evaluation). The same kind of step, a Langevin corrector per noise level, is
``solver="pc_langevin"`` inside diffusion sampling; this sampler is the corrector alone, as NCSN samples. The
multiscale averaging of "Sampling by averaging" (a fast process estimating each level's score) needs no model:
:func:`~fewstep.langevin.averaging.multiscale_annealed`.

Start the chains from ``x0 = s_1 * randn(chains, d)`` (the smoothed density at a large level is nearly
``N(0, s_1^2 I)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .chains import Chains
from .diffusion import DiffusionTarget
from .noise import StepNoise
from .registry import check_run, register
from .sampler_options import parse_options, positive_float, positive_int
from .target import Target

NAME = "annealed_langevin"


@dataclass
class AnnealedOptions:
    """``sigmas``: the decreasing noise levels (default: ``levels`` geometric ones from ``sigma_max``, default the
    schedule's largest, to ``sigma_min``, default the target's ``sigma``); ``steps_per_level`` moves on each;
    ``denoise``: replace the kept states by their Tweedie denoising."""

    sigmas: Sequence[float] | None = None
    levels: int = 20
    sigma_max: float | None = None
    sigma_min: float | None = None
    steps_per_level: int = 20
    denoise: bool = True

    def __post_init__(self) -> None:
        self.levels = positive_int("levels", self.levels, NAME, minimum=2)
        self.steps_per_level = positive_int("steps_per_level", self.steps_per_level, NAME)
        if not isinstance(self.denoise, bool):
            raise TypeError(f"denoise of {NAME!r} must be a bool, got {self.denoise!r}")
        if self.sigmas is not None and (self.sigma_max is not None or self.sigma_min is not None):
            raise ValueError(f"{NAME!r}: give sigmas= or sigma_max=/sigma_min= (with levels=), not both")

    def noise_levels(self, target: DiffusionTarget) -> list[float]:
        """The checked decreasing levels for ``target``."""
        if self.sigmas is not None:
            sigmas = target.check_sigmas(self.sigmas, "sigmas")
            if any(b >= a for a, b in zip(sigmas, sigmas[1:], strict=False)):
                raise ValueError(f"sigmas of {NAME!r} must decrease strictly, got {list(self.sigmas)}")
            return sigmas
        hi = target.sigma_max if self.sigma_max is None else self.sigma_max
        if not math.isfinite(hi):
            raise ValueError(
                f"sigma_max of {NAME!r}: the schedule's largest level is infinite; give sigma_max or sigmas"
            )
        lo = target.sigma if self.sigma_min is None else self.sigma_min
        hi, lo = target.check_sigmas([hi, lo], "sigma_max, sigma_min")
        if not hi > lo:
            raise ValueError(f"sigma_max of {NAME!r} must exceed sigma_min, got {hi} and {lo}")
        return np.geomspace(hi, lo, self.levels).tolist()


def as_diffusion_target(target: object, sampler: str) -> DiffusionTarget:
    """``target`` when it is a :class:`DiffusionTarget` (TypeError naming ``sampler`` otherwise)."""
    if not isinstance(target, DiffusionTarget):
        raise TypeError(
            f"{sampler!r} needs the scores at several noise levels: pass a "
            f"fewstep.langevin.DiffusionTarget(denoiser), got {type(target).__name__}"
        )
    return target


@register(NAME)
def annealed_langevin(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Chains:
    """Annealed Langevin dynamics (module docstring); ``step_size`` is ``c`` in ``e_i = c s_i^2`` (default 0.1)."""
    model = as_diffusion_target(target, NAME)
    _, y = check_run(target, x0, draws, warmup, step_size, NAME)
    opts = parse_options(AnnealedOptions, options, NAME)
    c = 0.1 if step_size is None else positive_float("step_size", step_size, NAME, maximum=2.0)
    sigmas = opts.noise_levels(model)
    levels = model.levels(sigmas, y.shape[0], y.device, y.dtype)
    plan = [lv for lv in levels for _ in range(opts.steps_per_level)] + [levels[-1]] * (warmup + draws)
    moves = [(lv, c * lv.sigma**2, math.sqrt(2.0 * c) * lv.sigma) for lv in plan]  # (level, e, sqrt(2 e))
    first = len(plan) - draws  # the first kept move
    out = y.new_empty(y.shape[0], draws, y.shape[1])
    noise = StepNoise(y, generator=generator)
    start = model.gradient_evaluations
    for i, (level, e, scale) in enumerate(moves):
        score, x0_hat = model.evaluate(y, level)
        if opts.denoise and i > first:
            out[:, i - first - 1] = x0_hat  # the denoising of the previous kept state
        y = y + e * score + scale * noise.normal()
        if not opts.denoise and i >= first:
            out[:, i - first] = y
    if opts.denoise:
        out[:, -1] = model.evaluate(y, levels[-1])[1]
    return Chains(
        draws=out,
        acceptance=None,
        gradient_evaluations=model.gradient_evaluations - start,
        step_size=c,
        inverse_mass=None,
        warmup=first,
        sampler=NAME,
    )
