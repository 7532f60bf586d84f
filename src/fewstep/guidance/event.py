"""Sampling conditioned on a user-defined event ``C(x0) >= 0``: the scheme of Finzi et al. 2023, "User-defined Event
Sampling and Uncertainty Quantification in Diffusion Models for Physical Dynamical Systems", as loss guidance.

The conditional score is ``grad log p_t(x) + grad_x log P(C(x0) >= 0 | x_t = x)``. With ``x0 | x_t`` approximated by
a Gaussian ``N(x0_hat(x), c(sigma) I)`` and ``C`` linearised at ``x0_hat``,

    P(C(x0) >= 0 | x) ~ Phi(C(x0_hat) / sqrt(c(sigma) |grad C(x0_hat)|^2)),

whose variance vanishes with the noise, so the approximation becomes exact as sigma -> 0. Here
``c(sigma) = S^2 sigma^2 / (S^2 + sigma^2)`` (``S = data_std``), the posterior variance of Gaussian data of that
scale: for Gaussian data and a linear ``C`` the whole scheme is exact and the samples follow the data distribution
truncated to the event (the tests check this). The rule is :class:`~fewstep.guidance.LossGuidance` with the loss
``-log Phi(...)`` at scale 1, differentiated through the network (one backward pass per evaluation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .gradient import LossGuidance
from .loss_steps import Scale, posterior_variance
from .rule_checks import finite_number

#: ``constraint(x0) -> (B,)``: the event is ``constraint(x0) >= 0``.
Constraint = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class EventLoss:
    """``-log Phi(C(x0) / sqrt(c(sigma) |grad C(x0)|^2))`` (module docstring), one value per sample."""

    constraint: Constraint
    data_std: float = 1.0

    def __post_init__(self) -> None:
        if not callable(self.constraint):
            raise TypeError(f"constraint: must be callable as constraint(x0) -> (B,), got {self.constraint!r}")
        if finite_number("data_std", self.data_std) <= 0:
            raise ValueError(f"data_std: must be > 0 (the data's scale, 1 for normalised data), got {self.data_std}")

    def __call__(self, x0: Tensor, sigma: float) -> Tensor:
        value = self.constraint(x0)
        if not isinstance(value, Tensor) or value.shape != (x0.shape[0],):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"constraint: must return one value per sample, shape ({x0.shape[0]},), got {got}")
        (grad,) = torch.autograd.grad(value.sum(), x0, create_graph=True)
        spread = (posterior_variance(sigma, float(self.data_std)) * grad.flatten(1).square().sum(1)).clamp(
            min=torch.finfo(x0.dtype).tiny
        )
        return -torch.special.log_ndtr(value / spread.sqrt())


def event_guidance(
    constraint: Constraint, data_std: float = 1.0, scale: Scale = 1.0, through_network: bool = True
) -> LossGuidance:
    """Guidance towards the event ``constraint(x0) >= 0`` (module docstring); ``scale=1`` is the conditional score,
    ``through_network=False`` replaces the network's Jacobian by that of Gaussian data of scale ``data_std``."""
    loss = EventLoss(constraint, data_std)
    return LossGuidance(loss, scale=scale, through_network=through_network, sigma_arg=True, data_std=data_std)
