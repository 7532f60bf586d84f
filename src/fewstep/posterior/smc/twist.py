"""The twisted proposal of one SMC step: the prior's Gaussian transition times a twist, linearised.

A twisting potential (TDS) gives, at the current state ``x``, its value's gradient ``g = grad_x v`` and (where it
knows it) its curvature ``h >= 0`` along ``g``: the twist near ``x`` is ``v + g . d - (h / 2) (g^ . d)^2``,
``g^ = g / |g|``. The product of the prior's step ``N(m, c^2 I)`` with ``exp`` of that quadratic is the Gaussian

    q = N(m + c^2 g / (1 + c^2 h),  c^2 (I - rho g^ g^T)),   rho = c^2 h / (1 + c^2 h),

the locally optimal proposal of a particle filter whose observation is linear-Gaussian in the state (Doucet,
Godsill & Andrieu 2000, "On Sequential Monte Carlo Sampling Methods for Bayesian Filtering", §II.D), and, with
``h = 0``, TDS's first-order shift ``N(m + c^2 g, c^2 I)`` (Wu et al. 2023, eq. 10). When the twist is sharp on the
scale of the step (``c^2 h`` not small: few steps, a small measurement noise) the first-order shift overshoots by
the factor ``1 + c^2 h`` along ``g`` and the weights, which correct for it, degenerate; the product does not.
The incremental log-weight's proposal part is ``log p(x' | x) - log q(x')``, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...trajectory import gaussian_log_prob

__all__ = ["TwistStep", "twisted_step"]


@dataclass(frozen=True)
class TwistStep:
    """A twisting potential's value ``(N,)`` (detached), its gradient w.r.t. the state (shaped like the state) and
    its curvature along the gradient ``(N,)`` (``None``: unknown, the first-order shift)."""

    value: Tensor
    grad: Tensor
    curvature: Tensor | None = None


def twisted_step(mean: Tensor, std: float, g: Tensor, curvature: Tensor | None, z: Tensor) -> tuple[Tensor, Tensor]:
    """The next state ``x'`` drawn from the twisted proposal (module docstring) for the prior's step ``N(mean,
    std^2 I)``, the twist's gradient ``g`` and ``curvature`` (``None``: the first-order shift), with standard normal
    ``z``; and the log density ratio ``log p(x' | x) - log q(x' | x)`` per particle ``(N,)``."""
    c2 = std * std
    if curvature is None:
        shifted = mean + c2 * g
        x = shifted + std * z
        return x, gaussian_log_prob(x, mean, std) - gaussian_log_prob(x, shifted, std)
    n = g.shape[0]
    view = (n, *([1] * (g.ndim - 1)))
    ch = c2 * curvature.clamp_min(0.0)  # c^2 h, (N,)
    rho = ch / (1.0 + ch)
    norm = g.flatten(1).norm(dim=1)
    unit = g / norm.clamp_min(torch.finfo(g.dtype).tiny).reshape(view)
    shifted = mean + (c2 / (1.0 + ch)).reshape(view) * g
    along = (unit * z).flatten(1).sum(1)
    x = shifted + std * (z - ((1.0 - (1.0 - rho).sqrt()) * along).reshape(view) * unit)
    d, e = (x - shifted).flatten(1), (x - mean).flatten(1)
    quad = (d.square().sum(1) + ch * (unit.flatten(1) * d).sum(1).square()) / (2.0 * c2)
    log_ratio = quad - e.square().sum(1) / (2.0 * c2) - 0.5 * torch.log1p(ch)
    return x, log_ratio
