"""Gradient-free classifier guidance (GFCG): Shenoy et al. 2024, "Gradient-Free Classifier Guidance for Diffusion
Model Sampling".

CFG contrasts the conditional prediction with the unconditional one; GFCG contrasts it with the prediction for a
*reference class* picked, at every evaluation, by a classifier run in inference mode (no gradients) on the
conditional clean-sample prediction, with a scale that adapts to how confused the classifier is:

    x0_c = D(x; c),  p = softmax(classifier(x0_c))                  (one network call, one classifier call)
    r    = argmax_{k != c} p_k                                      the class the sample is most confused with
    w    = scale * confusion(p_c, p_r),   confusion = min(1, p_r / p_c) by default
    x0   = x0_c + w (x0_c - D(x; r)),   eps likewise                (a second network call)

per sample: a sample its classifier already assigns clearly to its class gets little guidance, a confused one up to
``scale``. The reference branch depends on the first call's output, so the two calls cannot be batched: an
evaluation is two network calls and two branch evaluations. The combination is affine in ``(x0, eps)`` per sample,
so the pair stays consistent with the state.

The conditioning is the model keyword ``label_key``: class indices of shape ``(B,)`` or one-hot rows ``(B, K)``; the
reference class is passed in the same form. ``confusion(p_target, p_ref) -> (B,)`` replaces the default adaptive
weight (e.g. ``lambda pc, pr: torch.ones_like(pc)`` for a constant scale).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction, convert
from .loss_steps import NonFiniteGuidance, Scale, Where, check_scale, scale_at

#: ``classifier(x0_hat) -> logits (B, K)``; ``confusion(p_target, p_ref) -> (B,)``.
Classifier = Callable[[Tensor], Tensor]
Confusion = Callable[[Tensor, Tensor], Tensor]


def ratio_confusion(p_target: Tensor, p_ref: Tensor) -> Tensor:
    """``min(1, p_ref / p_target)``: 0 for a sample its classifier is sure of, 1 once the reference class is as
    likely as the target."""
    return (p_ref / p_target.clamp(min=torch.finfo(p_target.dtype).tiny)).clamp(max=1.0)


@dataclass(frozen=True)
class GradientFreeClassifierGuidance:
    """GFCG with ``classifier(x0_hat) -> logits (B, K)`` at ``scale`` (a number or a callable of sigma), the class
    conditioning in the model keyword ``label_key`` and the adaptive weight ``confusion`` (module docstring)."""

    classifier: Classifier
    scale: Scale = 1.0
    label_key: str = "class_labels"
    confusion: Confusion = ratio_confusion

    def __post_init__(self) -> None:
        if not callable(self.classifier):
            raise TypeError(
                f"classifier: must be callable as classifier(x0_hat) -> logits (B, K), got {self.classifier!r}"
            )
        check_scale("scale", self.scale)
        if not isinstance(self.label_key, str):
            raise TypeError(f"label_key: must be the name of the model's class keyword, got {self.label_key!r}")
        if not callable(self.confusion):
            raise TypeError(
                f"confusion: must be callable as confusion(p_target, p_ref) -> (B,), got {self.confusion!r}"
            )

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        labels = _labels(network.kwargs, self.label_key)

        numbers = itertools.count(1)

        def evaluate(x: Tensor, p: Point) -> Prediction:
            where = Where(next(numbers), p.t)
            s = scale_at("scale", self.scale, p, where)
            if labels.shape[0] != x.shape[0]:
                raise ValueError(f"{self.label_key}: has {labels.shape[0]} rows for a batch of {x.shape[0]} samples")
            x0, eps = convert(x, network(x, p.model_time, p.t), p, needs_eps)
            if s == 0.0:
                return x0, eps
            target = labels if labels.ndim == 1 else labels.argmax(dim=1)
            ref, weight = self._reference(x0, target, s, where)
            ref_kwargs = {**network.kwargs, self.label_key: _like(labels, ref)}
            x0_r, eps_r = convert(x, network(x, p.model_time, p.t, ref_kwargs), p, needs_eps)
            w = weight.to(x0.dtype).reshape((-1,) + (1,) * (x0.ndim - 1))
            guided = x0 + w * (x0 - x0_r)
            if eps is None or eps_r is None:
                return guided, None
            return guided, eps + w * (eps - eps_r)

        return evaluate

    def _reference(self, x0: Tensor, target: Tensor, scale: float, where: Where) -> tuple[Tensor, Tensor]:
        """The reference classes ``r`` (B,) and weights ``scale * confusion(p_c, p_r)`` (B,)."""
        with torch.no_grad():
            logits = self.classifier(x0)
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x0.shape[0]:
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"classifier: must return logits of shape (B, K) = ({x0.shape[0]}, K), got {got}")
            if logits.shape[1] < 2:
                raise ValueError(
                    f"classifier: needs K >= 2 classes to pick a reference class, got K = {logits.shape[1]}"
                )
            probs = torch.softmax(logits.to(torch.float64), dim=1)
            rows = torch.arange(probs.shape[0], device=probs.device)
            target = target.to(probs.device)
            p_target = probs[rows, target]
            others = probs.index_put((rows, target), torch.tensor(-1.0, dtype=probs.dtype, device=probs.device))
            ref = others.argmax(dim=1)
            weight = scale * self.confusion(p_target, probs[rows, ref])
            if not isinstance(weight, Tensor) or weight.shape != p_target.shape:
                got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
                raise ValueError(
                    f"confusion: must return one weight per sample, shape {tuple(p_target.shape)}, got {got}"
                )
            if not bool(torch.isfinite(weight).all()):
                raise NonFiniteGuidance(f"GradientFreeClassifierGuidance: the weight is NaN/inf at {where}")
        return ref, weight.to(x0.device)


def _labels(kwargs: Any, key: str) -> Tensor:
    """The run's class conditioning ``kwargs[key]``: indices (B,) or one-hot rows (B, K)."""
    if key not in kwargs:
        raise ValueError(
            f"label_key: {key!r} is not among the model's keyword arguments ({sorted(kwargs)}); pass the class "
            f"labels as model_kwargs={{{key!r}: labels}} or name their keyword with label_key="
        )
    labels = kwargs[key]
    if not isinstance(labels, Tensor) or labels.ndim not in (1, 2):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{key}: GFCG needs class indices (B,) or one-hot rows (B, K), got {got}")
    if labels.ndim == 1 and labels.is_floating_point():
        raise TypeError(f"{key}: class indices must be an integer tensor, got {labels.dtype}")
    return labels


def _like(labels: Tensor, classes: Tensor) -> Tensor:
    """``classes`` (B,) in the form of ``labels``: indices, or one-hot rows of the same width and dtype."""
    classes = classes.to(labels.device)
    if labels.ndim == 1:
        return classes.to(labels.dtype)
    return torch.nn.functional.one_hot(classes, labels.shape[1]).to(labels.dtype)
