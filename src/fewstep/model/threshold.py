"""Dynamic thresholding (Saharia et al. 2022, diffusers' convention), a layer of the model-call stack on x0."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .calls import CallCount
from .point import Point
from .stack import Evaluation, Prediction


@dataclass
class Threshold:
    """Per sample ``s = clamp(quantile(|x0|, ratio), 1, max_value)`` and ``x0 <- clamp(x0, -s, s) / s``.

    ``ratio=None`` gives static clipping of x0 to ``[-max_value, max_value]``.
    """

    ratio: float | None = 0.995
    max_value: float = 1.0

    def __post_init__(self) -> None:
        if self.ratio is not None and not (0 < self.ratio <= 1):
            raise ValueError(f"threshold.ratio: must be in (0, 1] or None, got {self.ratio}")
        if not self.max_value > 0:
            raise ValueError(f"threshold.max_value: must be > 0, got {self.max_value}")

    def __call__(self, x0: Tensor) -> Tensor:
        if self.ratio is None:
            return x0.clamp(-self.max_value, self.max_value)
        flat = x0.reshape(x0.shape[0], -1).abs()
        s = torch.quantile(flat.float(), self.ratio, dim=1).to(x0.dtype)
        s = s.clamp(min=1.0, max=self.max_value).reshape(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s

    def apply(self, x: Tensor, x0: Tensor, p: Point, needs_eps: bool) -> Prediction:
        """``x0`` thresholded, and ``eps = (x - alpha x0) / sigma`` from it (None unless needed)."""
        x0 = self(x0)
        return x0, ((x - p.alpha * x0) / p.sigma if needs_eps else None)

    def wrap(self, inner: Evaluation, needs_eps: bool, calls: CallCount | None = None) -> Evaluation:
        """The evaluation ``inner`` (asked for x0 alone) with x0 thresholded and ``eps = (x - alpha x0) / sigma``."""
        return Thresholded(inner, self, needs_eps)


class Thresholded:
    def __init__(self, inner: Evaluation, threshold: Threshold, needs_eps: bool):
        self.inner, self.threshold, self.needs_eps = inner, threshold, needs_eps

    def __call__(self, x: Tensor, p: Point) -> Prediction:
        return self.threshold.apply(x, self.inner(x, p)[0], p, self.needs_eps)
