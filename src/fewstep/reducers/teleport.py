"""Analytic teleportation: jump the first part of the probability-flow ODE in closed form, then run a solver.

Wang & Vastola 2024, "The Hidden Linear Structure in Score-Based Models and its Application" (analytical
teleportation): at high noise a model's denoiser is nearly that of the Gaussian fit of its data
(:class:`~fewstep.reducers.GaussianFit`), whose probability-flow ODE has an exact solution. A teleported run maps
the start noise at ``t_max`` to ``t_skip`` by that solution (no network call) and spends the whole NFE on
``[t_min, t_skip]``: the same solver and spacing, on a shorter span.

``t_skip`` is chosen by a measured criterion (:func:`choose_t_skip`): the jump's predicted error. At probe times
uniform in lambda from ``t_max`` down, on states drawn from the Gaussian's marginal there, the model's and the
Gaussian's ``x0`` predictions are compared; their difference enters the probability-flow ODE in lambda with the
weight ``alpha_t`` (DPM-Solver++'s form, ``dx/dlambda = ... + alpha_t x0``), and on the state's own scale
``sqrt(alpha_t^2 + sigma_t^2)``, so the rate at which following the Gaussian drifts away from the model is

    r(t) = alpha_t / sqrt(alpha_t^2 + sigma_t^2) * rms(x0_model(x_t) - x0_gauss(x_t)) / sqrt(tr Sigma / D)

(relative to the data's scale), and the predicted error of a jump to ``t`` is its integral over lambda from
``t_max`` (trapezoids between probes; from ``lambda = -inf`` the first interval counts ``r(t_1)``). ``t_skip`` is
where that integral, interpolated linearly in lambda between probes, reaches ``tol`` (at most the last probe before
``t_min``: a solver always runs the last probe interval). At very high noise the weight ``alpha_t`` discounts the
large ``x0`` errors every epsilon-prediction network makes there (amplified by ``sigma_t / alpha_t``), which barely
move the trajectory. Each probe is one batched network call, a one-off cost per model (as DPM-Solver-v3's
statistics), reported in :class:`SkipChoice`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..model import Denoiser
from ..sampling import sample
from ..schedules import NoiseSchedule
from ..solvers import Solver
from ..spacing import DISCRETE_SPACINGS, SpacingLike, is_named, model_times
from .gaussian import GaussianFit


def restrict(schedule: NoiseSchedule, t_min: float, t_max: float) -> NoiseSchedule:
    """``schedule`` on ``[t_min, t_max]`` (inside its own span): the same alpha and sigma, a run planned on it
    spaces that span."""
    window = copy.copy(schedule)
    window.t_min, window.t_max = float(t_min), float(t_max)
    return window


def continuous_spacing(spacing: SpacingLike | None, why: str) -> SpacingLike:
    """``spacing`` (None: ``"logsnr"``) when it is a continuous rule; ValueError otherwise (``why`` says why the run
    spaces a span of its own)."""
    spacing = "logsnr" if spacing is None else spacing
    if not is_named(spacing) or getattr(spacing, "name", spacing) in DISCRETE_SPACINGS:
        raise ValueError(
            f"spacing: {why}, so give a continuous spacing name (e.g. 'logsnr') or a Spacing, got {spacing!r}"
        )
    return spacing


@dataclass(frozen=True)
class SkipChoice:
    """The probes of :func:`choose_t_skip`: their ``times`` (from ``t_max`` down), the measured ``rates`` ``r(t)`` and
    the ``predicted`` error of a jump to each (as many as were measured), the chosen ``t_skip`` and the
    ``network_calls`` spent (one per measured probe)."""

    times: list[float]
    rates: list[float]
    predicted: list[float]
    t_skip: float
    network_calls: int


def choose_t_skip(
    fit: GaussianFit,
    denoiser: Denoiser,
    shape: tuple[int, ...],
    tol: float = 0.01,
    *,
    probes: int = 12,
    samples: int = 64,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SkipChoice:
    """Pick ``t_skip`` where the Gaussian fit's predicted error reaches ``tol`` (module docstring): ``probes`` times
    uniform in lambda over ``[t_min, t_max]``, ``samples`` states each, of one sample's ``shape``."""
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser: must be a fewstep.Denoiser, got {type(denoiser).__name__}")
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol: must be a positive number (e.g. 0.01), got {tol!r}")
    if not (isinstance(probes, int) and probes >= 2):
        raise ValueError(f"probes: must be an integer >= 2, got {probes!r}")
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples: must be a positive integer, got {samples!r}")
    schedule = denoiser.schedule
    times = model_times(schedule, probes, "logsnr").tolist()
    lams = schedule.lambda_(torch.tensor(times, dtype=torch.float64)).tolist()
    scale = math.sqrt(float(fit.eigenvalues.sum()) / fit.dim) or 1.0
    root = fit.eigenvectors * fit.eigenvalues.sqrt()
    rates: list[float] = []
    predicted: list[float] = []
    t_skip = times[0]
    for j, t in enumerate(times[:-1]):  # the last span is left to the solver
        point = denoiser.point(t, samples, torch.device(device), dtype)
        z = torch.randn(samples, fit.dim, generator=generator, dtype=torch.float64)
        x0 = fit.mean + z @ root.T  # the Gaussian's data, pushed to time t
        noise = torch.randn(samples, fit.dim, generator=generator, dtype=torch.float64)
        x = (point.alpha * x0 + point.sigma * noise).reshape(samples, *shape)
        model_x0 = denoiser(x.to(device=device, dtype=dtype), point, eps=False)[0]
        gauss_x0 = fit.denoise(x, point.alpha, point.sigma)[0]
        diff = model_x0.detach().to(device="cpu", dtype=torch.float64) - gauss_x0
        weight = point.alpha / math.hypot(point.alpha, point.sigma)
        rates.append(weight * float(diff.pow(2).mean().sqrt()) / scale)
        if j == 0:
            predicted.append(0.0)
        elif math.isfinite(lams[j - 1]):
            predicted.append(predicted[-1] + 0.5 * (rates[-2] + rates[-1]) * (lams[j] - lams[j - 1]))
        else:  # from lambda = -inf, where r ~ exp(lambda)
            predicted.append(predicted[-1] + rates[-1])
        if predicted[-1] > tol:
            w = (tol - predicted[-2]) / (predicted[-1] - predicted[-2])
            lam = lams[j - 1] + w * (lams[j] - lams[j - 1]) if math.isfinite(lams[j - 1]) else lams[j]
            t_skip = float(schedule.t_of_lambda(torch.tensor(lam, dtype=torch.float64)))
            break
        t_skip = t
    return SkipChoice(times, rates, predicted, t_skip, len(rates))


@dataclass
class Teleport:
    """A Gaussian ``fit`` of the data and the time ``t_skip`` to jump to (module docstring).

    ``Teleport.auto(fit, denoiser, shape, tol)`` measures ``t_skip`` (:func:`choose_t_skip`, kept in ``choice``);
    :meth:`sample` runs ``fewstep.sample`` from the jumped state with the whole NFE, planned exactly as a run of the
    same solver and spacing on the schedule restricted to ``[t_min, t_skip]`` (:meth:`window`); :meth:`jump` is the
    jump.
    """

    fit: GaussianFit
    t_skip: float
    choice: SkipChoice | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.fit, GaussianFit):
            raise TypeError(f"fit: must be a GaussianFit, got {type(self.fit).__name__}")
        if isinstance(self.t_skip, bool) or not isinstance(self.t_skip, int | float) or not math.isfinite(self.t_skip):
            raise ValueError(f"t_skip: must be a finite schedule time, got {self.t_skip!r}")

    @classmethod
    def auto(
        cls, fit: GaussianFit, denoiser: Denoiser, shape: tuple[int, ...], tol: float = 0.01, **options: Any
    ) -> Teleport:
        """The teleport to the ``t_skip`` :func:`choose_t_skip` picks (``options``: its keyword options)."""
        choice = choose_t_skip(fit, denoiser, shape, tol, **options)
        return cls(fit, choice.t_skip, choice)

    def _span(self, schedule: NoiseSchedule) -> float:
        if not schedule.t_min < self.t_skip <= schedule.t_max:
            raise ValueError(
                f"t_skip: must lie in (t_min, t_max] = ({schedule.t_min}, {schedule.t_max}] of the schedule, "
                f"got {self.t_skip}"
            )
        return float(self.t_skip)

    def jump(self, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
        """The exact Gaussian probability-flow ODE image at ``t_skip`` of ``noise`` at ``t_max`` (float64; the noise
        itself for ``t_skip = t_max``)."""
        t_skip = self._span(schedule)
        if t_skip == schedule.t_max:
            return noise.detach().to(torch.float64).clone()
        return self.fit.flow_times(noise, schedule, schedule.t_max, t_skip)

    def window(self, schedule: NoiseSchedule) -> NoiseSchedule:
        """``schedule`` on ``[t_min, t_skip]``: the same alpha and sigma, with ``t_max = t_skip``."""
        return restrict(schedule, schedule.t_min, self._span(schedule))

    def sample(
        self,
        model: Callable[..., Tensor] | Denoiser,
        noise: Tensor,
        schedule: NoiseSchedule | None = None,
        solver: str | Solver | None = None,
        nfe: int | None = None,
        spacing: SpacingLike | None = None,
        *,
        final: str = "zero",
        **options: Any,
    ) -> Tensor:
        """``fewstep.sample`` of ``model`` from ``noise`` at ``t_max``: the jump to ``t_skip``, then ``solver`` with
        exactly ``nfe`` evaluations (or ``steps=``) on ``[t_min, t_skip]`` (``options``: the other options of
        ``fewstep.sample``; ``spacing`` a continuous spacing name or Spacing, None: ``"logsnr"``)."""
        if isinstance(model, Denoiser):
            denoiser = model
        elif schedule is None:
            raise ValueError("schedule: give the model's NoiseSchedule (or pass a fewstep.Denoiser as model)")
        else:
            denoiser = Denoiser(model, schedule, options.pop("prediction", "auto"))
        spacing = continuous_spacing(spacing, "a teleported run spaces its own span [t_min, t_skip]")
        start = self.jump(noise, denoiser.schedule).to(noise.dtype)
        window = copy.copy(denoiser)  # the same model, its schedule starting at t_skip: the run plans as on its own
        window.schedule = self.window(denoiser.schedule)
        return sample(window, start, solver=solver, nfe=nfe, spacing=spacing, final=final, **options)  # type: ignore[arg-type]
