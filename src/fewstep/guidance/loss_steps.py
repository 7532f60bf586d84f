"""The shared math of the rules that steer with a loss on the clean-sample prediction
(:mod:`~fewstep.guidance.gradient`, :mod:`~fewstep.guidance.flow_steering`, :mod:`~fewstep.guidance.event`).

- A user loss ``loss(x0_hat, **kwargs)`` returns one value per sample, shape ``(B,)``; :func:`loss_value` checks
  that, :func:`loss_gradient` differentiates it with respect to ``x0_hat`` (no network involved) and checks the
  gradient is finite, naming the evaluation and its time.
- :func:`descend`: ``n`` gradient steps ``x0 <- x0 - lr grad L(x0)`` on the prediction itself (Bansal et al. 2023's
  backward guidance; FlowChef's update, Patel et al. 2024).
- :func:`shifted`: the pair ``(x0_hat + delta, eps_hat - (alpha/sigma) delta)``, which keeps
  ``x = alpha x0_hat + sigma eps_hat``: the solver sees a moved clean sample at its own state, so every solver (data-
  or noise-prediction, or both) takes the same guided field.
- A scale is a number or a callable of the noise level ``sigma = sigma_t/alpha_t`` (:func:`check_scale`,
  :func:`scale_at`).

The gradients need autograd: the rules enable it locally (the run may be under ``torch.no_grad()``), but a run under
``torch.inference_mode()`` cannot build a graph (:func:`require_autograd` says so when the stack is built).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..model.point import Point
from ..model.stack import Prediction
from .rule_checks import finite_number
from .scale_schedule import noise_level

#: ``loss(x0_hat, **kwargs) -> (B,)``: one value per sample, lower is better.
LossFn = Callable[..., Tensor]
#: A step size or guidance scale: a number, or a callable of the noise level ``sigma`` (inf at pure noise).
Scale = float | Callable[[float], float]


class NonFiniteGuidance(FloatingPointError):
    """A guidance rule's loss or gradient is NaN or inf."""


class Where(NamedTuple):
    """An evaluation of the run (its number among the rule's evaluations, from 1) and its schedule time."""

    evaluation: int
    t: float

    def __str__(self) -> str:
        return f"evaluation {self.evaluation} (t = {self.t:.6g})"


def check_loss(name: str, loss: object, loss_kwargs: object) -> None:
    """``loss`` callable and ``loss_kwargs`` a mapping (TypeError naming ``name`` otherwise)."""
    if not callable(loss):
        raise TypeError(f"{name}: must be callable as {name}(x0_hat, **loss_kwargs) -> (B,), got {type(loss).__name__}")
    if not isinstance(loss_kwargs, Mapping):
        raise TypeError(f"loss_kwargs: must be a mapping of keyword arguments, got {type(loss_kwargs).__name__}")


def check_scale(name: str, scale: object) -> Scale:
    """A number >= 0 or a callable of sigma (TypeError / ValueError naming ``name``)."""
    if callable(scale):
        return scale  # type: ignore[return-value]  # a callable of sigma, checked at each evaluation
    value = finite_number(name, scale)
    if value < 0:
        raise ValueError(
            f"{name}: must be >= 0 (a negative step climbs the loss; negate the loss instead), got {scale}"
        )
    return value


def check_count(name: str, value: object, low: int = 0) -> int:
    """An integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}: must be >= {low}, got {value}")
    return value


def scale_at(name: str, scale: Scale, p: Point, where: Where) -> float:
    """The scale at point ``p``: the number, or the callable at the point's noise level (checked finite, >= 0)."""
    if not callable(scale):
        return float(scale)
    sigma = noise_level(p)
    value = scale(sigma)
    try:
        v = finite_number(name, value)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{err} from {name}(sigma={sigma:.6g}) at {where}") from None
    if v < 0:
        raise ValueError(f"{name}: {name}(sigma={sigma:.6g}) = {v} at {where}; must be >= 0")
    return v


def require_autograd(rule: str) -> None:
    """Raise where gradients cannot be taken: under ``torch.inference_mode()``."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{rule}: takes gradients, which torch.inference_mode() forbids; call sample() outside inference_mode "
            "(torch.no_grad() is fine: the rule enables autograd for its own gradients)"
        )


def loss_value(name: str, loss: LossFn, x0: Tensor, kwargs: Mapping[str, Any], where: Where) -> Tensor:
    """``loss(x0, **kwargs)``, checked to be a floating-point tensor of shape ``(B,)``."""
    value = loss(x0, **kwargs)
    if not isinstance(value, Tensor) or not value.is_floating_point():
        got = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"{name}: must return a floating-point tensor of shape (B,), got {got} at {where}")
    if value.shape != (x0.shape[0],):
        raise ValueError(
            f"{name}: must return one value per sample, shape ({x0.shape[0]},), got {tuple(value.shape)} at {where}; "
            "reduce over the other dimensions only, e.g. .flatten(1).sum(1)"
        )
    return value


def check_gradient(name: str, grad: Tensor, where: Where) -> Tensor:
    """``grad`` itself, after checking it is finite (one reduction: a host sync per guided evaluation)."""
    if not bool(torch.isfinite(grad).all()):
        raise NonFiniteGuidance(
            f"{name}: the gradient of the loss is NaN/inf at {where}; the loss is not finite or not differentiable "
            "there (check its value on the clean-sample prediction, or lower the scale)"
        )
    return grad


def loss_gradient(name: str, loss: LossFn, x0: Tensor, kwargs: Mapping[str, Any], where: Where) -> Tensor:
    """``grad_x0 sum_b loss(x0)_b``: the per-sample gradient of the loss at ``x0`` (the network is not involved)."""
    with torch.enable_grad():
        leaf = x0.detach().clone().requires_grad_(True)
        value = loss_value(name, loss, leaf, kwargs, where)
        if not value.requires_grad:
            raise TypeError(
                f"{name}: its value does not depend differentiably on x0_hat at {where} (no autograd graph)"
            )
        (grad,) = torch.autograd.grad(value.sum(), leaf)
    return check_gradient(name, grad, where)


def descend(
    name: str, loss: LossFn, x0: Tensor, kwargs: Mapping[str, Any], steps: int, lr: float, where: Where
) -> Tensor:
    """``steps`` gradient steps ``x0 <- x0 - lr grad L(x0)`` on the prediction (``x0`` itself for none)."""
    for _ in range(steps if lr > 0 else 0):
        x0 = x0 - lr * loss_gradient(name, loss, x0, kwargs, where)
    return x0


def posterior_variance(sigma: float, data_std: float) -> float:
    """``C = S^2 sigma^2 / (S^2 + sigma^2)``: the variance of ``x0 | x_t`` for Gaussian data of scale ``S = data_std``
    at noise level sigma (``S^2`` at sigma = inf); ``alpha C / sigma_t^2`` is that data's denoiser Jacobian."""
    s2 = data_std * data_std
    return s2 if math.isinf(sigma) else s2 * sigma * sigma / (s2 + sigma * sigma)


def shifted(x0: Tensor, eps: Tensor | None, delta: Tensor, p: Point) -> Prediction:
    """``(x0 + delta, eps - (alpha/sigma) delta)``: the prediction moved by ``delta`` at the same state."""
    moved = x0 + delta
    if eps is None:
        return moved, None
    return moved, (eps - (p.alpha / p.sigma) * delta if p.alpha != 0.0 else eps)
