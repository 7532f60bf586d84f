"""Affine-invariant interacting Langevin dynamics, ALDI (Garbuno-Inigo, Nüsken & Reich 2020, "Affine invariant
interacting Langevin dynamics for Bayesian inference"); an ensemble sampler in the line of "Ensemble-based
samplers" / "Enhancing score-based sampling methods with ensembles".

The chains form ensembles of J members ``theta_1..theta_J`` that precondition each other with their empirical
covariance ``C = (1/J) sum_j (theta_j - m)(theta_j - m)^T`` (``m`` the ensemble mean):

    d theta_i = C grad log p(theta_i) dt + (d + 1)/J (theta_i - m) dt + sqrt(2) C^{1/2} dW_i,

``C^{1/2} dW_i = J^{-1/2} sum_j (theta_j - m) dW_ij`` (the square root that needs no factorisation), and the
second term the finite-ensemble correction that makes ``p^{⊗J}`` invariant for ``J > d + 1``. The dynamics are
invariant under affine maps of the parameters, so the chains move at the same speed however ill-conditioned the
target is. Discretised by Euler–Maruyama with a step ``h = step_size`` measured in the target's own scale (default
0.05; the stationary covariance of a Gaussian is then inflated by about ``h/2``). Far from equilibrium (an ensemble
much wider than the target, where ``C grad`` is large) the step is tamed, per ensemble:

    h_e = h / max(1, sqrt(r / (4 d))),    r = mean_i grad_i^T C grad_i,

where ``r ≈ d`` in equilibrium (so ``h_e = h`` there). A step costs one gradient evaluation and
``O(J^2 d + J d^2)`` per ensemble.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..noise.brownian import BrownianPath
from .chains import Chains
from .noise import StepNoise
from .registry import check_run, register
from .sampler_options import parse_options, positive_float, positive_int
from .target import Target

NAME = "aldi"


@dataclass
class EnsembleOptions:
    """``ensemble_size``: the members J of each ensemble (consecutive chains; default: all chains form one);
    ``brownian``: a :class:`~fewstep.noise.BrownianPath` (``batch_size = chains``, ``shape = (J,)``: member ``i``'s
    ``dW_ij``) whose increment over ``[t0 + k h, t0 + (k + 1) h]`` drives step ``k`` instead of the generator."""

    ensemble_size: int | None = None
    brownian: BrownianPath | None = None


@register(NAME)
def aldi(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Chains:
    """Affine-invariant interacting Langevin dynamics (module docstring)."""
    _, x = check_run(target, x0, draws, warmup, step_size, NAME)
    opts = parse_options(EnsembleOptions, options, NAME)
    chains, d = x.shape
    size = chains if opts.ensemble_size is None else positive_int("ensemble_size", opts.ensemble_size, NAME)
    if size < d + 2 or chains % size:
        raise ValueError(
            f"ensemble_size of {NAME!r} must divide the {chains} chains and exceed d + 1 = {d + 1} (the ensemble's "
            f"covariance must have full rank), got {size}; use at least {d + 2} chains per ensemble"
        )
    h = 0.05 if step_size is None else positive_float("step_size", step_size, NAME, maximum=1.0)
    correction = (d + 1) / size
    out = x.new_empty(chains, draws, d)
    # member i's dW_ij (j over the ensemble), [chains, J], viewed per ensemble as [E, J, J]
    mixing = StepNoise(x.new_empty(chains, size), generator=generator, path=opts.brownian, step_size=h)
    start = target.gradient_evaluations
    for i in range(warmup + draws):
        score = target.score(x).view(-1, size, d)
        theta = x.view(-1, size, d)
        spread = theta - theta.mean(1, keepdim=True)  # [E, J, d]
        cov = spread.transpose(1, 2) @ spread / size  # [E, d, d]
        xi = mixing.increment(i).view(-1, size, size)
        drift = score @ cov  # C grad, per member
        r = (drift * score).sum(-1).mean(1).view(-1, 1, 1)  # mean grad^T C grad, per ensemble
        he = h / (r / (4.0 * d)).sqrt().clamp_min(1.0)
        step = he * (drift + spread * correction) + (2.0 * he / size).sqrt() * (xi @ spread)
        x = (theta + step).view(chains, d)
        if i >= warmup:
            out[:, i - warmup] = x
    return Chains(
        draws=out,
        acceptance=None,
        gradient_evaluations=target.gradient_evaluations - start,
        step_size=h,
        inverse_mass=None,
        warmup=warmup,
        sampler=NAME,
    )
