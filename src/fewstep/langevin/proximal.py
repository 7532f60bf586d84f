"""Proximal Langevin for a non-smooth term: MYULA (Durmus, Moulines & Pereyra 2018, "Efficient Bayesian computation
by proximal MCMC") and its Bregman form with a diagonal quadratic Legendre function (Lau & Liu 2022, "Bregman
Proximal Langevin Monte Carlo via Bregman–Moreau Envelopes").

The target is ``p(x) ∝ exp(-f(x) - g(x))``: ``f`` smooth (the :class:`~fewstep.langevin.Target`, whose score is
``-grad f``) and ``g`` convex and non-smooth, given by its proximity operator. ``g`` is replaced by its
Bregman–Moreau envelope for ``phi(x) = x^T M^{-1} x / 2`` (``M = diag(inverse_mass)``, default ``I``: the
Moreau–Yosida envelope ``g^lambda``), whose gradient in the metric is ``(x - prox^M_{lambda g}(x)) / lambda``:

    x <- x + h M grad log p_f(x) - (h / lambda) (x - prox^M_{lambda g}(x)) + sqrt(2 h) M^{1/2} z,
    prox^M_{lambda g}(x) = argmin_u g(u) + |u - x|^2_{M^{-1}} / (2 lambda).

The chain samples ``exp(-f - g^lambda_M)``, a smoothing of the target whose bias vanishes with ``lambda``
(``smoothing``, default ``2 h``; ``h <= lambda`` keeps the prox term stable). Built-in proximity operators:
:class:`L1` (soft-thresholding; a Laplace prior) and :class:`Box` (projection; a uniform prior on a box); any
``prox(x, lam) -> Tensor`` (``lam`` the per-coordinate ``lambda m_i``, ``[d]``) works. The paper's mirror-Langevin
forms with non-quadratic Legendre functions (the entropy) are :func:`~fewstep.langevin.mirror.mirror_langevin`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..noise.brownian import BrownianPath
from .adaptation import check_inverse_mass
from .chains import Chains
from .noise import StepNoise
from .registry import check_run, register
from .sampler_options import parse_options, positive_float
from .sgld import required_step
from .target import Target

NAME = "myula"

#: ``prox(x: [chains, d], lam: [d]) -> [chains, d]``: the proximity operator of ``g`` with per-coordinate ``lam``.
Prox = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class L1:
    """``g(x) = weight |x|_1`` (a Laplace prior of scale ``1/weight``): ``prox(x)_i = sign(x_i) max(|x_i| - lam_i
    weight, 0)`` (soft-thresholding)."""

    weight: float = 1.0

    def __call__(self, x: Tensor, lam: Tensor) -> Tensor:
        return x.sign() * (x.abs() - lam * self.weight).clamp_min(0.0)


@dataclass(frozen=True)
class Box:
    """``g`` = 0 on the box ``[low, high]^d``, infinite outside: ``prox`` is the projection (for any diagonal
    metric)."""

    low: float = 0.0
    high: float = math.inf

    def __call__(self, x: Tensor, lam: Tensor) -> Tensor:
        return x.clamp(self.low, self.high)


@dataclass
class ProximalOptions:
    """``prox``: the proximity operator of the non-smooth term (required); ``smoothing``: lambda (default
    ``2 step_size``); ``inverse_mass``: the diagonal metric M, ``[d]`` or ``[chains, d]`` (default: identity);
    ``brownian``: a :class:`~fewstep.noise.BrownianPath` driving the noise instead of the generator."""

    prox: Prox | None = None
    smoothing: float | None = None
    inverse_mass: Tensor | None = None
    brownian: BrownianPath | None = None

    def __post_init__(self) -> None:
        if self.prox is None or not callable(self.prox):
            raise TypeError(
                f"prox of {NAME!r} must be the proximity operator of the non-smooth term, prox(x, lam) -> Tensor "
                f"(e.g. fewstep.langevin.L1(weight) or Box(low, high)), got {self.prox!r}"
            )
        if self.smoothing is not None:
            self.smoothing = positive_float("smoothing", self.smoothing, NAME)


def smoothing_for(h: float, smoothing: float | None, name: str) -> float:
    """The envelope's smoothing ``lambda`` (default ``2 h``), at least the step ``h`` for a stable prox term."""
    lam = 2.0 * h if smoothing is None else smoothing
    if h > lam:
        raise ValueError(f"step_size of {name!r} must be <= smoothing (lambda = {lam}) for a stable prox term, got {h}")
    return lam


@register(NAME)
def myula(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Chains:
    """Moreau–Yosida (Bregman–Moreau) unadjusted Langevin (module docstring)."""
    _, x = check_run(target, x0, draws, warmup, step_size, NAME)
    opts = parse_options(ProximalOptions, options, NAME)
    h = required_step(step_size, NAME)
    lam = smoothing_for(h, opts.smoothing, NAME)
    d = x.shape[1]
    given = check_inverse_mass(opts.inverse_mass, x)
    mass = torch.ones(d, dtype=x.dtype, device=x.device) if given is None else given
    prox = opts.prox
    assert prox is not None
    lam_m, drift, pull, noise = lam * mass, h * mass, h / lam, (2.0 * h * mass).sqrt()
    out = x.new_empty(x.shape[0], draws, d)
    normals = StepNoise(x, generator=generator, path=opts.brownian, step_size=h)
    start = target.gradient_evaluations
    for i in range(warmup + draws):
        x = x + drift * target.score(x) - pull * (x - prox(x, lam_m)) + noise * normals.increment(i)
        if i >= warmup:
            out[:, i - warmup] = x
    return Chains(
        draws=out,
        acceptance=None,
        gradient_evaluations=target.gradient_evaluations - start,
        step_size=h,
        inverse_mass=given,
        warmup=warmup,
        sampler=NAME,
    )
