"""Variance-exploding schedules (alpha = 1): the geometric VE SDE and EDM's sigma = t."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import NoiseSchedule, TimeLike, as64, check_range


class VE(NoiseSchedule):
    """VE SDE (Song et al. 2021): ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` for t in [0, 1].

    The model is evaluated for ``sigma(t) >= sigma_min``; the optional last step goes to sigma = 0.
    """

    default_time_input = "sigma"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"sigma_min, sigma_max: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.t_min, self.t_max = 0.0, 1.0
        self._log_ratio = math.log(sigma_max / sigma_min)

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as64(t))

    def log_sigma(self, t: TimeLike) -> Tensor:
        return math.log(self.sigma_min) + as64(t) * self._log_ratio

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        return (-as64(lam) - math.log(self.sigma_min)) / self._log_ratio

    def dalpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as64(t))

    def dsigma(self, t: TimeLike) -> Tensor:
        return self.sigma(t) * self._log_ratio


class EDM(NoiseSchedule):
    """EDM (Karras et al. 2022): ``alpha = 1``, ``sigma(t) = t`` on ``[sigma_min, sigma_max]``."""

    default_time_input = "sigma"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"sigma_min, sigma_max: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        check_range("EDM", sigma_min, sigma_max)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.t_min, self.t_max = sigma_min, sigma_max

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as64(t))

    def log_sigma(self, t: TimeLike) -> Tensor:
        return torch.log(as64(t))

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        return torch.exp(-as64(lam))

    def dalpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as64(t))

    def dsigma(self, t: TimeLike) -> Tensor:
        return torch.ones_like(as64(t))
