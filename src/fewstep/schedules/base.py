"""The noise schedule: the forward process ``x_t = alpha(t) x0 + sigma(t) eps``.

Every schedule exposes alpha(t), sigma(t), the half log-SNR ``lambda(t) = log(alpha/sigma)``, its exact
inverse ``t(lambda)``, the time derivatives (needed to turn a velocity into a data estimate) and the range
``[t_min, t_max]`` of times at which a model may be evaluated. Times are float64 tensors; all schedule
arithmetic is done in float64 on the host, once per sampling call, before the step loop starts.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

TimeLike = float | Tensor
OdeVariable = Literal["sigma", "t"]


def as64(t: TimeLike) -> Tensor:
    """A float64 CPU tensor view of a time (or times)."""
    return torch.as_tensor(t, dtype=torch.float64, device="cpu")


class NoiseSchedule(ABC):
    """``x_t = alpha(t) x0 + sigma(t) eps`` with ``lambda(t) = log alpha(t) - log sigma(t)`` decreasing in t.

    Subclasses implement :meth:`log_alpha`, :meth:`log_sigma`, :meth:`t_of_lambda` and the derivatives.
    ``t_max`` is where sampling starts (most noise), ``t_min`` the least-noisy time at which the model is
    defined; sampling can end there or take a last step to the clean data (sigma = 0, alpha = ``alpha_clean``).

    ``ode_variable`` names the noise level that Euler/Heun-type solvers and the ``"karras"``/``"exponential"``
    spacings use: ``"sigma"`` is k-diffusion's ``sigma_hat = sigma / alpha = exp(-lambda)`` (with the scaled
    state ``x / alpha``), ``"t"`` the schedule time itself (flow models, where alpha(t_max) may be 0).
    """

    t_min: float
    t_max: float
    ode_variable: OdeVariable = "sigma"
    default_time_input: str = "t"
    alpha_clean: float = 1.0

    @abstractmethod
    def log_alpha(self, t: TimeLike) -> Tensor: ...

    @abstractmethod
    def log_sigma(self, t: TimeLike) -> Tensor: ...

    @abstractmethod
    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        """The exact inverse of :meth:`lambda_`."""

    @abstractmethod
    def dalpha(self, t: TimeLike) -> Tensor:
        """d alpha / dt."""

    @abstractmethod
    def dsigma(self, t: TimeLike) -> Tensor:
        """d sigma / dt."""

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: TimeLike) -> Tensor:
        return torch.exp(self.log_sigma(t))

    def lambda_(self, t: TimeLike) -> Tensor:
        """Half log signal-to-noise ratio, ``lambda = log(alpha / sigma)``."""
        return self.log_alpha(t) - self.log_sigma(t)

    # The noise level used by Euler/Heun and by the "karras" / "exponential" spacings.
    def level(self, t: TimeLike) -> Tensor:
        return as64(t).clone() if self.ode_variable == "t" else torch.exp(-self.lambda_(t))

    def t_of_level(self, v: TimeLike) -> Tensor:
        return as64(v).clone() if self.ode_variable == "t" else self.t_of_lambda(-torch.log(as64(v)))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def check_range(name: str, lo: float, hi: float) -> None:
    """Validate a ``[t_min, t_max]`` pair (raise ValueError naming the arguments)."""
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name}: need finite t_min < t_max, got t_min={lo!r}, t_max={hi!r}")
