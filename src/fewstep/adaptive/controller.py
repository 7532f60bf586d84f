"""Step-size controllers: how an adaptive run picks its next step from the embedded error estimate.

The error of a step is measured on the state ``x`` (DPM-Solver, Alg. 4-5; Jolicoeur-Martineau et al. 2021,
"Gotta Go Fast When Generating Data with Score-Based Models", Alg. 1)::

    delta = max(atol, rtol * max(|x_low|, |x_low_prev|))          elementwise
    E     = || (x_high - x_low) / delta ||_RMS

with ``x_low_prev`` the low-order solution of the previous accepted step (the initial state at first). Both papers
(and k-diffusion) combine the tolerances with ``max``; diffrax's ``atol + rtol * |x|`` differs from it by at most a
factor 2. ``norm="max"`` takes the RMS over each sample and the largest over the batch (DPM-Solver's reference
code: every sample meets the tolerance); ``norm="rms"`` the RMS over the whole batch (k-diffusion's
``sample_dpm_adaptive``). Either way one step size serves the whole batch.

The PID controller (Söderlind 2003; k-diffusion's ``PIDStepSizeController``) with ``k`` the order of the error
estimate (the lower order of the pair plus one) and ``e_n = 1 / (E_n + 1e-8)`` the inverse errors of this step and
of the last two accepted ones, proposes::

    factor = e_n^{(p + i + d)/k} e_{n-1}^{-(p + 2d)/k} e_{n-2}^{d/k},   factor <- 1 + atan(factor - 1)

(the limiter keeps the factor in (0.21, 2.58)); the step is accepted when ``factor >= accept_safety`` and the
next step size (retry or continuation) is ``h factor``. With ``pcoeff = dcoeff = 0``, ``icoeff = 1`` it is the
classical integral controller ``h E^{-1/k}`` of Hairer, Nørsett & Wanner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..options import real_option
from ..spacing import check_times

NORMS = ("max", "rms")
Norm = Literal["max", "rms"]


@dataclass(frozen=True)
class PIDController:
    """Error-controlled step sizes (module docstring). ``h_init`` is the first step, in the method's step
    variable (lambda; t for Dormand-Prince on flows; None: the method's default, 0.05 in lambda, 1% of the span in
    t)."""

    rtol: float = 0.05
    atol: float = 0.0078
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    accept_safety: float = 0.81
    norm: Norm = "max"
    h_init: float | None = None

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            if real_option(name, getattr(self, name)) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        for name in ("pcoeff", "icoeff", "dcoeff"):
            real_option(name, getattr(self, name), low=-math.inf)
        real_option("accept_safety", self.accept_safety, high=1.0)
        if self.norm not in NORMS:
            raise ValueError(f"norm: choose one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.h_init is not None and real_option("h_init", self.h_init) <= 0:
            raise ValueError(f"h_init: must be > 0, got {self.h_init!r}")

    def error(self, x_high: Tensor, x_low: Tensor, x_prev: Tensor) -> float:
        """``E`` of the module docstring (one host sync)."""
        delta = (self.rtol * torch.maximum(x_low.abs(), x_prev.abs())).clamp_min(self.atol)
        ratio = ((x_high - x_low) / delta).reshape(x_high.shape[0], -1)
        if self.norm == "rms":
            return float(ratio.square().mean().sqrt())
        return float(ratio.square().mean(dim=1).sqrt().max())

    def start(self, h: float, order: float) -> PIDState:
        """The controller's state for a run whose first step is ``h`` and whose error estimate has ``order``."""
        k = float(order)
        betas = ((self.pcoeff + self.icoeff + self.dcoeff) / k, -(self.pcoeff + 2 * self.dcoeff) / k, self.dcoeff / k)
        return PIDState(h, betas, self.accept_safety)


@dataclass
class PIDState:
    """A PID controller's state in one run: the step size and the last inverse errors."""

    h: float
    betas: tuple[float, float, float]
    accept_safety: float
    inv_errors: list[float] = field(default_factory=list)

    def propose(self, error: float) -> bool:
        """Update ``h`` from this step's error; whether the step is accepted."""
        inv = 1.0 / (error + 1e-8)
        if not self.inv_errors:
            self.inv_errors = [inv, inv, inv]
        self.inv_errors[0] = inv
        b1, b2, b3 = self.betas
        e0, e1, e2 = self.inv_errors
        factor = 1.0 + math.atan(e0**b1 * e1**b2 * e2**b3 - 1.0)
        accept = factor >= self.accept_safety
        if accept:
            self.inv_errors = [inv, e0, e1]
        self.h *= factor
        return accept


@dataclass(frozen=True)
class StepTo:
    """Fixed steps through the given schedule times (strictly decreasing, from ``t_max`` to ``t_min``), every step
    accepted (diffrax's ``StepTo``): the embedded pair run as a fixed-step method of its higher order, e.g. to replay
    the accepted times of an adaptive run or to measure the pair's order."""

    times: tuple[float, ...]

    def __init__(self, times: Tensor | list[float] | tuple[float, ...]) -> None:
        t = torch.as_tensor(times, dtype=torch.float64)
        if t.ndim != 1 or t.numel() < 2:
            raise ValueError(f"times: need at least two times (1-D), got shape {tuple(t.shape)}")
        object.__setattr__(self, "times", tuple(float(v) for v in t))

    def checked(self, schedule: object) -> list[float]:
        """The times, validated against the schedule's range (ValueError naming ``times``)."""
        return check_times(schedule, list(self.times)).tolist()  # type: ignore[arg-type]
