"""Named guidance-scale schedules: the scale as a function of the noise level sigma (= exp(-lambda)).

The shapes are those of Wang et al. 2024, "Analysis of Classifier-Free Guidance Weight Schedulers" (TMLR), who
found scales that grow as sampling proceeds (low at high noise) better than a constant one: with the progress
``u`` from 0 (``sigma >= sigma_hi``, the start of sampling) to 1 (``sigma <= sigma_lo``),

    linear:    w(u) = start + (end - start) u
    cosine:    w(u) = start + (end - start) (1 - cos(pi u)) / 2,

where their ``t / T`` is ``1 - u`` and ``u`` is linear in sigma (``space="sigma"``) or in log sigma
(``space="log_sigma"``, the same fraction of every decade of noise). Their ``linear`` and ``cosine`` schedules with
mean scale ``w0`` are ``start=0, end=2 w0``; a constant scale is a number, not a schedule. Where the schedule gives 1, :class:`~fewstep.guidance.ScheduledCFG`
runs the conditional branch alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..model.point import Point
from ..options import suggestion
from .rule_checks import finite_number, noise_interval

SHAPES: tuple[str, ...] = ("linear", "cosine")
SPACES: tuple[str, ...] = ("sigma", "log_sigma")


@dataclass(frozen=True)
class ScaleSchedule:
    """The scale ``start`` at ``sigma >= sigma_hi``, ``end`` at ``sigma <= sigma_lo``, and between them the
    ``shape`` (module docstring) in ``space``. Called with a noise level ``sigma``, it returns the scale."""

    shape: str
    start: float
    end: float
    sigma_lo: float
    sigma_hi: float
    space: str = "sigma"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape: unknown {self.shape!r}{suggestion(self.shape, SHAPES)}; choose one of {SHAPES}")
        if self.space not in SPACES:
            raise ValueError(f"space: unknown {self.space!r}{suggestion(self.space, SPACES)}; choose one of {SPACES}")
        finite_number("start", self.start)
        finite_number("end", self.end)
        lo, hi = noise_interval("sigma_lo, sigma_hi", (self.sigma_lo, self.sigma_hi))
        if math.isinf(hi) or (self.space == "log_sigma" and lo <= 0):
            raise ValueError(
                f"sigma_lo, sigma_hi: need finite bounds{' and sigma_lo > 0 in log_sigma space' * (lo <= 0)}, "
                f"got ({lo}, {hi})"
            )

    def progress(self, sigma: float) -> float:
        """``u`` in [0, 1]: 0 at ``sigma >= sigma_hi``, 1 at ``sigma <= sigma_lo``."""
        lo, hi, s = self.sigma_lo, self.sigma_hi, sigma
        if self.space == "log_sigma":
            lo, hi, s = math.log(lo), math.log(hi), (math.log(s) if s > 0 else -math.inf)
        return min(1.0, max(0.0, (hi - s) / (hi - lo)))

    def __call__(self, sigma: float) -> float:
        u = self.progress(sigma)
        if self.shape == "cosine":
            u = 0.5 * (1.0 - math.cos(math.pi * u))
        return self.start + (self.end - self.start) * u


def noise_level(p: Point) -> float:
    """The k-diffusion/EDM noise level ``sigma = sigma_t / alpha_t = exp(-lambda)`` of a point (inf at alpha = 0)."""
    return math.exp(-p.lam) if p.lam > -700.0 else math.inf
