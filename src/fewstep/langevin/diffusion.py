"""A diffusion model as a Langevin target: the scores of the data distribution smoothed at each noise level.

For ``x_t = alpha x0 + sigma eps``, the scaled state ``y = x_t / alpha = x0 + s eps`` (``s = sigma / alpha``, the
noise level in k-diffusion's convention) has the density ``p_s = p_data * N(0, s^2 I)``, whose score and Tweedie
denoiser follow from one evaluation of the model (``eps_hat = E[eps | x_t]``, ``x0_hat = E[x0 | x_t]``):

    grad log p_s(y) = -eps_hat / s,        E[x0 | y] = y + s^2 grad log p_s(y) = x0_hat.

:class:`DiffusionTarget` is a score-only :class:`~fewstep.langevin.Target` (its :meth:`~Target.score` is the score
at ``sigma``, the smallest level by default, so ULA or kinetic Langevin can sample it) that also evaluates the
score and the denoiser at any level (:meth:`levels`, :meth:`evaluate`), for annealed Langevin and walk-jump
sampling. Every evaluation is one counted network call (``gradient_evaluations``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..model.calls import CallCount
from ..model.denoiser import Denoiser
from ..model.point import Point
from ..model.stack import ModelStack
from .target import Target

__all__ = ["DiffusionTarget", "Level"]


class Level(NamedTuple):
    """One noise level ``sigma`` (= sigma/alpha of the schedule) with the model's evaluation ``point`` there and
    ``alpha`` (the model is evaluated at ``x_t = alpha y``)."""

    sigma: float
    alpha: float
    point: Point


class DiffusionTarget(Target):
    """The data distribution of ``denoiser`` (a :class:`fewstep.Denoiser`), smoothed at noise level ``sigma`` (in
    the sigma/alpha convention; default: the schedule's smallest, at ``t_min``), as a score-only target.

    The chains are flat, ``[chains, d]``; a model that takes images gets them as ``[chains, *shape]`` (``shape``,
    with ``prod(shape) = d``) and its predictions are flattened back."""

    def __init__(
        self,
        denoiser: Denoiser,
        sigma: float | None = None,
        *,
        shape: tuple[int, ...] | None = None,
        name: str | None = None,
    ):
        if not isinstance(denoiser, Denoiser):
            raise TypeError(
                f"denoiser must be a fewstep.Denoiser (e.g. fewstep.Denoiser(model, schedule, 'epsilon')), got "
                f"{type(denoiser).__name__}"
            )
        self.denoiser = denoiser
        if shape is not None and (
            not isinstance(shape, tuple) or not shape or not all(isinstance(n, int) and n >= 1 for n in shape)
        ):
            raise ValueError(
                f"shape must be a tuple of positive ints (one sample's shape, without the batch), got {shape!r}"
            )
        self.shape = shape
        schedule = denoiser.schedule
        lo = float(torch.exp(-schedule.lambda_(torch.tensor(schedule.t_min, dtype=torch.float64))))
        hi = float(torch.exp(-schedule.lambda_(torch.tensor(schedule.t_max, dtype=torch.float64))))
        self.sigma_min, self.sigma_max = lo, (hi if math.isfinite(hi) else math.inf)
        self.sigma = self.sigma_min if sigma is None else self.check_sigmas([sigma], "sigma")[0]
        self.calls = CallCount()
        self._stack: ModelStack | None = None
        self._cache: dict[tuple[int, torch.device, torch.dtype], Level] = {}
        super().__init__(score=self._score, name=name or f"diffusion(sigma={self.sigma:.4g})")

    def check_sigmas(self, sigmas: Sequence[float], name: str) -> list[float]:
        """``sigmas`` as floats within the schedule's levels (ValueError naming ``name`` otherwise)."""
        try:
            values = [float(s) for s in sigmas]
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a sequence of noise levels (floats), got {sigmas!r}") from err
        lo, hi = self.sigma_min, self.sigma_max
        bad = [s for s in values if not (lo * (1 - 1e-9) <= s <= hi * (1 + 1e-9))]
        if not values or bad:
            raise ValueError(
                f"{name} must be noise levels sigma/alpha within the schedule's [{lo:.4g}, {hi:.4g}], got "
                f"{bad[0] if bad else 'none'}"
            )
        return [min(max(s, lo), hi) for s in values]

    def levels(self, sigmas: Sequence[float], batch: int, device: torch.device, dtype: torch.dtype) -> list[Level]:
        """The evaluation of each noise level of ``sigmas`` (already checked), precomputed for ``batch`` chains."""
        schedule = self.denoiser.schedule
        lam = -torch.log(torch.tensor(sigmas, dtype=torch.float64))
        times = schedule.t_of_lambda(lam).clamp(schedule.t_min, schedule.t_max)
        points = self.denoiser.points(times.tolist(), batch, device, dtype)
        return [Level(s, p.alpha, p) for s, p in zip(sigmas, points, strict=True)]

    def evaluate(self, y: Tensor, level: Level) -> tuple[Tensor, Tensor]:
        """``(score, x0_hat)`` at scaled states ``y`` (``[chains, d]``) and ``level``: one network call."""
        self.gradient_evaluations += 1
        return self._evaluate(y, level)

    def _evaluate(self, y: Tensor, level: Level) -> tuple[Tensor, Tensor]:
        if self._stack is None:
            self._stack = self.denoiser.stack(self.calls, True)
        x = y * level.alpha if level.alpha != 1.0 else y
        if self.shape is not None:
            x = x.reshape(x.shape[0], *self.shape)
        x0, eps = self._stack.evaluate(x, level.point)
        assert eps is not None
        if self.shape is not None:
            x0, eps = x0.reshape(y.shape), eps.reshape(y.shape)
        return eps * (-1.0 / level.sigma), x0

    def _score(self, y: Tensor) -> Tensor:
        key = (y.shape[0], y.device, y.dtype)
        if key not in self._cache:
            self._cache[key] = self.levels([self.sigma], *key)[0]
        return self._evaluate(y, self._cache[key])[0]  # counted by Target.score
