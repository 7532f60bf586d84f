"""Adaptive projected guidance (APG): Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance
Scales in Diffusion Models" (Algorithm 1, eq. 8-12).

On the clean-sample predictions ``D_c``, ``D_u`` of the conditional and unconditional branches (one batched call):

    diff = D_c - D_u
    diff <- diff + beta diff_prev                   running average with momentum beta (negative in the paper),
                                                    diff_prev the previous evaluation's averaged diff
    diff <- diff min(1, r / ||diff||)               norm threshold r, per sample (off when r is None)
    diff_par = (<diff, D_c> / ||D_c||^2) D_c,  diff_orth = diff - diff_par     per sample
    D = D_c + (w - 1) (diff_orth + eta diff_par),

and ``eps`` from ``D`` at the point, ``eps = (x - alpha D) / sigma``, so the solver gets a consistent pair. With
``eta = 1``, ``beta = 0`` and no threshold this is CFG on ``x0`` at scale ``w``. The momentum's average runs over the
run's evaluations in order (each run starts from none). diffusers' ``AdaptiveProjectedGuidance`` with
``use_original_formulation=True`` and ``guidance_scale = w - 1`` computes the same ``D``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction
from .branches import Branches
from .rule_checks import conditioning, finite_number


@dataclass(frozen=True)
class AdaptiveProjectedGuidance:
    """APG at ``scale`` w (1: the conditional model alone) with the unconditional inputs ``uncond_kwargs``; ``eta``
    weights the part of the guidance parallel to ``D_c`` (the paper's default 0 removes it), ``momentum`` is beta
    (0: none; the paper uses negative values such as -0.5) and ``norm_threshold`` is r (None: no threshold)."""

    scale: float
    uncond_kwargs: Mapping[str, Any]
    eta: float = 0.0
    momentum: float = 0.0
    norm_threshold: float | None = None

    def __post_init__(self) -> None:
        finite_number("scale", self.scale)
        finite_number("eta", self.eta)
        finite_number("momentum", self.momentum)
        if self.norm_threshold is not None and finite_number("norm_threshold", self.norm_threshold) <= 0:
            raise ValueError(f"norm_threshold: must be > 0 (or None for no threshold), got {self.norm_threshold}")
        conditioning("uncond_kwargs", self.uncond_kwargs, "adaptive projected guidance")

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        branches = Branches(network, [self.uncond_kwargs, None])
        update = ProjectedUpdate(self.eta, self.momentum, self.norm_threshold)
        w1 = float(self.scale) - 1.0

        def evaluate(x: Tensor, p: Point) -> Prediction:
            (x0_u, _), (x0_c, _) = branches.predictions(x, p, False)
            x0 = x0_c + w1 * update(x0_c, x0_u)
            return x0, ((x - p.alpha * x0) / p.sigma if needs_eps else None)

        return evaluate


class ProjectedUpdate:
    """One run's APG update ``diff_orth + eta diff_par`` of the module docstring, with its momentum state."""

    def __init__(self, eta: float, momentum: float, norm_threshold: float | None):
        self.eta, self.beta, self.r = float(eta), float(momentum), norm_threshold
        self.average: Tensor | None = None

    def __call__(self, cond: Tensor, uncond: Tensor) -> Tensor:
        dims = tuple(range(1, cond.ndim))
        diff = cond - uncond
        if self.beta != 0.0:
            if self.average is not None:
                diff = diff + self.beta * self.average
            self.average = diff
        if self.r is not None:
            norm = diff.norm(dim=dims, keepdim=True)
            diff = diff * (self.r / norm).clamp(max=1.0)
        unit = cond / cond.norm(dim=dims, keepdim=True).clamp(min=1e-12)
        parallel = (diff * unit).sum(dim=dims, keepdim=True) * unit
        return (diff - parallel) + self.eta * parallel
