"""The unadjusted Langevin algorithm (ULA): the Euler-Maruyama discretisation of the overdamped Langevin diffusion
``dX = M^{-1} grad log p(X) dt + sqrt(2 M^{-1}) dW``,

    x_{k+1} = x_k + h M^{-1} grad log p(x_k) + sqrt(2 h M^{-1}) xi_k,      xi_k ~ N(0, I),

one gradient per step (Roberts & Tweedie 1996, "Exponential convergence of Langevin distributions and their
discrete approximations"; Durmus & Moulines 2017). With no accept/reject step its stationary law is biased, by
O(h) in the step (the Gaussian case: variance ``sigma^2 / (1 - h / (2 sigma^2))``); MALA removes the bias.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fewstep.noise.brownian import BrownianPath

from .adaptation import check_inverse_mass
from .chains import Chains
from .noise import StepNoise
from .registry import check_run, register
from .target import Target

__all__ = ["ula"]


@register("ula")
def ula(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    inverse_mass: Tensor | None = None,
    brownian: BrownianPath | None = None,
    **options: Any,
) -> Chains:
    """Run ULA for ``warmup`` discarded and ``draws`` kept steps of size ``step_size`` (required: ULA has no
    acceptance to adapt it to). ``inverse_mass``: an optional fixed diagonal preconditioner. ``brownian``: take
    the noise of step ``k`` from the path's increment over ``[t0 + k h, t0 + (k + 1) h]`` (refinements of the
    step then share one path)."""
    if options:
        raise TypeError(f"ula got unexpected options {sorted(options)}; it takes inverse_mass and brownian")
    target, x = check_run(target, x0, draws, warmup, step_size, "ula")
    if step_size is None:
        raise ValueError("ula needs a step_size (it has no acceptance to adapt to); try 0.1 / the largest curvature")
    m = check_inverse_mass(inverse_mass, x)
    noise = StepNoise(x, generator=generator, path=brownian, step_size=step_size)
    h = float(step_size)
    drift = h * m if m is not None else h
    scale = (2.0 * h * m).sqrt() if m is not None else math.sqrt(2.0 * h)
    out = x.new_empty((x.shape[0], draws, x.shape[1]))
    start = target.gradient_evaluations
    for k in range(warmup + draws):
        x = x + drift * target.score(x) + scale * noise.increment(k)
        if k >= warmup:
            out[:, k - warmup] = x
    return Chains(
        draws=out,
        acceptance=None,
        gradient_evaluations=target.gradient_evaluations - start,
        step_size=h,
        inverse_mass=m,
        warmup=warmup,
        sampler="ula",
    )
