"""Loss-gradient guidance on the clean-sample prediction: Bansal et al. 2023, "Universal Guidance for Diffusion
Models" (Alg. 1: forward and backward guidance), and Nair et al. 2023, "Steered Diffusion" (a loss of the predicted
clean image, differentiated with respect to the noisy state).

For a loss ``L(x0)`` (one value per sample; lower is better) and a scale ``s`` (a number or a callable of the noise
level sigma = sigma_t/alpha_t), at state ``x`` and point ``(alpha, sigma_t)``:

    forward:   eps <- eps + s sigma_t grad_x L(x0_hat(x)),
               i.e.  x0_hat <- x0_hat - s (sigma_t^2 / alpha) grad_x L(x0_hat(x))    (x = alpha x0 + sigma_t eps kept)

which is the score of ``p_t(x) exp(-s L(x0_hat(x)))``. ``through_network=True`` differentiates ``x0_hat(x)`` through
the network (the exact forward step: one backward pass per evaluation, counted in ``CallCount.backward``, so a run's
NFE is ``network + backward``). ``through_network=False`` skips the backward pass (nothing counted): the network's
Jacobian ``d x0_hat / d x`` is replaced by that of Gaussian data of scale ``S = data_std``, ``alpha C / sigma_t^2``
with ``C = S^2 sigma^2 / (S^2 + sigma^2)`` (sigma the k-diffusion noise level), so

               x0_hat <- x0_hat - s C grad_x0 L(x0_hat)                     (DPS without the Jacobian)

a step on the prediction that stays bounded (by ``s S^2 grad``) at high noise, unlike holding the noise prediction
fixed (``d x0_hat / d x = 1/alpha``, a step ``s sigma^2 grad`` that blows up at high noise).

    backward:  x0_hat <- x0_hat + Delta,  Delta from ``backward_steps`` gradient steps of size ``backward_lr`` on
               L(x0_hat + Delta), and eps_hat moved with it so that x = alpha x0_hat + sigma_t eps_hat is kept.

For Gaussian data ``N(m, S^2 I)`` and ``L = |a x0 - y|^2 / (2 r^2)`` the forward step is exact (the guided
prediction is the denoiser of the posterior ``p(x0 | y)``, a Kalman update of ``x0_hat``) at ``s(sigma) = r^2 /
(a^2 C + r^2)``, through the network and, with ``data_std = S``, without it (the tests check both).

Universal guidance's self-recurrence (re-noising the state to the same level and stepping again, k times per step)
moves the solver's state: it is :class:`~fewstep.guidance.SelfRecurrence` around this rule (for the first-order
solvers, :mod:`~fewstep.guidance.state_moves`). The same kind of Markov move at one noise level is what
``solver="pc_langevin"`` (Langevin corrector steps with the guided score, its draws from the run's noise source and
its evaluations in the plan) adds, with any predictor.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction, convert
from .loss_steps import (
    LossFn,
    Scale,
    Where,
    check_count,
    check_gradient,
    check_loss,
    check_scale,
    descend,
    loss_gradient,
    loss_value,
    posterior_variance,
    require_autograd,
    scale_at,
    shifted,
)
from .rule_checks import finite_number
from .scale_schedule import noise_level


@dataclass(frozen=True)
class LossGuidance:
    """Guidance with ``loss(x0_hat, **loss_kwargs) -> (B,)`` at ``scale`` (module docstring); ``through_network``
    picks the exact forward step or the one without the network's Jacobian; ``backward_steps`` gradient steps of
    size ``backward_lr`` (a number or a callable of sigma) follow it; ``data_std`` is the data scale of the Jacobian
    used without the network's. ``sigma_arg=True`` calls the loss with the
    noise level as well, ``loss(x0_hat, sigma=sigma, **loss_kwargs)`` (a loss whose shape depends on the level)."""

    loss: LossFn
    scale: Scale = 1.0
    through_network: bool = True
    backward_steps: int = 0
    backward_lr: Scale = 0.1
    loss_kwargs: Mapping[str, Any] = field(default_factory=dict)
    sigma_arg: bool = False
    data_std: float = 1.0

    def __post_init__(self) -> None:
        check_loss("loss", self.loss, self.loss_kwargs)
        check_scale("scale", self.scale)
        if not isinstance(self.through_network, bool):
            raise TypeError(f"through_network: must be True or False, got {self.through_network!r}")
        if not isinstance(self.sigma_arg, bool):
            raise TypeError(f"sigma_arg: must be True or False, got {self.sigma_arg!r}")
        check_count("backward_steps", self.backward_steps)
        check_scale("backward_lr", self.backward_lr)
        if finite_number("data_std", self.data_std) <= 0:
            raise ValueError(f"data_std: must be > 0 (the data's scale, 1 for normalised data), got {self.data_std}")

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        require_autograd(type(self).__name__)
        forward = self.through_network

        numbers = itertools.count(1)

        def evaluate(x: Tensor, p: Point) -> Prediction:
            where = Where(next(numbers), p.t)
            s = scale_at("scale", self.scale, p, where)
            lr = scale_at("backward_lr", self.backward_lr, p, where) if self.backward_steps else 0.0
            if p.sigma == 0.0:  # clean state: nothing to guide
                s, lr = 0.0, 0.0
            elif s > 0.0 and forward and p.alpha == 0.0:
                raise ValueError(
                    f"scale: the forward step moves x0_hat by s sigma_t^2/alpha, infinite at alpha = 0 through the network (pure noise, "
                    f"{where}); give a scale callable that is 0 at sigma = inf, a t_max with alpha > 0, or through_network=False"
                )
            kwargs = self._kwargs(p)
            if s > 0.0 and forward:
                x0, eps, grad_x = self._through_network(network, x, p, needs_eps, kwargs, where)
                delta = grad_x * (-s * p.sigma**2 / p.alpha)
            else:
                x0, eps = convert(x, network(x, p.model_time, p.t), p, needs_eps)
                delta = torch.zeros_like(x0)
                if s > 0.0:
                    c = posterior_variance(noise_level(p), float(self.data_std))
                    delta = loss_gradient("loss", self.loss, x0, kwargs, where) * (-s * c)
            if lr > 0.0:
                delta = descend("loss", self.loss, x0 + delta, kwargs, self.backward_steps, lr, where) - x0
            return shifted(x0, eps, delta, p)

        return evaluate

    def _kwargs(self, p: Point) -> Mapping[str, Any]:
        return {**self.loss_kwargs, "sigma": noise_level(p)} if self.sigma_arg else self.loss_kwargs

    def _through_network(
        self, network: Network, x: Tensor, p: Point, needs_eps: bool, kwargs: Mapping[str, Any], where: Where
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """``(x0_hat, eps_hat, grad_x L(x0_hat(x)))``: one network call and one backward pass through it."""
        with torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            out = network(leaf, p.model_time, p.t)
            if not out.requires_grad:
                raise TypeError(
                    f"through_network: the model's output carries no autograd graph at {where} (the model detaches "
                    "its input or runs under torch.no_grad()); make it differentiable, or use through_network=False"
                )
            x0, eps = convert(leaf, out, p, needs_eps)
            value = loss_value("loss", self.loss, x0, kwargs, where)
            if not value.requires_grad:
                raise TypeError(f"loss: its value does not depend differentiably on x0_hat at {where}")
            (grad,) = torch.autograd.grad(value.sum(), leaf)
        network.calls.backward += 1
        return x0.detach(), (eps.detach() if eps is not None else None), check_gradient("loss", grad, where)
