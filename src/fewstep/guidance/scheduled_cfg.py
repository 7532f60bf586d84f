"""Classifier-free guidance at a scale that depends on the noise level, and only inside a noise interval.

Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in
Diffusion Models" (eq. 3): the guided denoiser is

    D(x; sigma) = D_u + w (D_c - D_u)   if sigma in (sigma_lo, sigma_hi],      D_c(x; sigma)   otherwise,

with ``sigma = exp(-lambda)`` the k-diffusion/EDM noise level (here the interval is closed,
``sigma_lo <= sigma <= sigma_hi``). Outside the interval only the conditional branch runs: one branch evaluation,
and the same output as the unguided conditional model bit for bit. The scale may also be a function ``w(sigma)``
(a :class:`~fewstep.guidance.ScaleSchedule` or any callable, e.g. the schedulers of Wang et al. 2024); where it
gives 1 only the conditional branch runs too. Inside, the output is plain CFG's at that scale (the same batched call
and formula, :mod:`fewstep.guidance.cfg`, with its rescale).

The rule reads the noise level of each evaluation, so it acts at the point (a
:class:`~fewstep.guidance.PredictionGuidance`) and does not run under the time shift; plain
:class:`~fewstep.guidance.ClassifierFreeGuidance` does.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction, convert
from .cfg import check_rescale, guided, paired_outputs
from .rule_checks import conditioning, finite_number, noise_interval
from .scale_schedule import noise_level

#: A guidance scale: a number, or a function of the noise level sigma returning one.
Scale = float | Callable[[float], float]


@dataclass(frozen=True)
class ScheduledCFG:
    """Classifier-free guidance at ``scale`` (a number, or a callable of sigma such as
    :class:`~fewstep.guidance.ScaleSchedule`), applied only for sigma in ``interval = (sigma_lo, sigma_hi)``
    (None: everywhere); ``uncond_kwargs`` and ``rescale`` as :class:`~fewstep.guidance.ClassifierFreeGuidance`."""

    scale: Scale
    uncond_kwargs: Mapping[str, Any]
    rescale: float = 0.0
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not callable(self.scale):
            finite_number("scale", self.scale)
        conditioning("uncond_kwargs", self.uncond_kwargs, "classifier-free guidance")
        check_rescale(self.rescale)
        if self.interval is not None:
            object.__setattr__(self, "interval", noise_interval("interval", self.interval))

    def scale_at(self, sigma: float) -> float:
        """The scale at noise level ``sigma``: 1 outside the interval, else the number or the schedule's value."""
        if self.interval is not None and not self.interval[0] <= sigma <= self.interval[1]:
            return 1.0
        if not callable(self.scale):
            return float(self.scale)
        value = self.scale(sigma)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(
                f"scale: the schedule returned {value!r} at sigma = {sigma:.6g}; it must return a finite Python "
                "float (the guidance scale at that noise level, 1 = the conditional model alone)"
            )
        return float(value)

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        pair = paired_outputs(network, self.uncond_kwargs)
        phi = self.rescale

        def evaluate(x: Tensor, p: Point) -> Prediction:
            scale = self.scale_at(noise_level(p))
            if scale == 1.0:
                return convert(x, network(x, p.model_time, p.t), p, needs_eps)
            return convert(x, guided(*pair(x, p.model_time, p.t), scale, phi), p, needs_eps)

        return evaluate
