"""Refinement by the model's implicit density (Kollovieh et al. 2023, "Predict, Refine, Synthesize: Self-Guiding
Diffusion Models for Probabilistic Time Series Forecasting", TSDiff, Sec. 3.3): a prediction ``y`` (a base
forecaster's) is moved down the energy

    E(y) = sum_k |eps_hat(alpha_k y + sigma_k eps_k, t_k) - eps_k|^2  +  (reg / 2) |m (y - y_obs)|^2,

the denoising loss of the unconditional model at the levels ``t_k`` (fresh ``eps_k ~ N(0, I)`` at every iteration: a
stochastic estimate of the loss, which is low where the model puts its density) plus a regulariser that keeps the
observed entries ``m`` near ``y_obs`` (a :class:`fewstep.posterior.Mask`), by gradient steps

    y <- y - lr grad E(y)                     (the maximum-likelihood refinement, ``temperature=0``)
    y <- y - lr grad E(y) + sqrt(2 lr T) z    (Langevin refinement at temperature ``T``)

Each iteration costs one network call and one backward pass per level, counted in ``calls``. For Gaussian data
``N(m, S^2 I)`` and the exact model the expected loss is ``c |y - m|^2`` plus a constant, ``c = sum_k (alpha_k sigma_k
/ (alpha_k^2 S^2 + sigma_k^2))^2``, so the refinement's mean converges to ``(2 c m + reg y_obs) / (2 c + reg)`` on
the observed entries and to ``m`` elsewhere (tested). This module is a sampler of its own
(``from fewstep.guidance.refine import refine``); the rules' package does not import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..model.calls import CallCount
from ..model.denoiser import Denoiser
from ..schedules import NoiseSchedule
from .loss_steps import check_count, require_autograd
from .rule_checks import finite_number
from .state_moves import check_generator, drawer, require_mask

if TYPE_CHECKING:  # the posterior package builds on the rules: no import back at run time
    from ..posterior.measurement import Mask


def refine(
    model: Callable[..., Tensor],
    initial: Tensor,
    schedule: NoiseSchedule,
    measurement: Mask,
    *,
    levels: Sequence[float],
    steps: int = 20,
    lr: float = 0.01,
    reg: float = 1.0,
    temperature: float = 0.0,
    prediction: str = "auto",
    time_input: str = "auto",
    model_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    calls: CallCount | None = None,
) -> Tensor:
    """``steps`` refinement steps of ``initial`` (module docstring) on the denoising loss of ``model`` (called as
    ``model(x, time, **model_kwargs)``, as by :func:`fewstep.sample`) at the schedule times ``levels``, with the
    regulariser ``reg`` on the observed entries of ``measurement``, at ``temperature`` (0: gradient descent);
    ``generator`` draws the loss's noise and the Langevin noise."""
    require_autograd("refine")
    require_mask("measurement", measurement, "the observed entries")
    if not isinstance(initial, Tensor) or not initial.is_floating_point() or initial.ndim < 2:
        raise TypeError("initial: must be a floating-point tensor (B, ...) of predictions to refine")
    ts = [finite_number("levels", t) for t in levels]
    if not ts or any(not 0.0 < t <= float(schedule.t_max) for t in ts):
        raise ValueError(f"levels: need at least one schedule time in (0, t_max = {float(schedule.t_max)}], got {ts}")
    check_count("steps", steps)
    step, weight, temp = (finite_number(n, v) for n, v in (("lr", lr), ("reg", reg), ("temperature", temperature)))
    if step <= 0 or weight < 0 or temp < 0:
        raise ValueError(f"lr > 0, reg >= 0, temperature >= 0 required, got lr={lr}, reg={reg}, temperature={temp}")
    check_generator(generator)
    measurement.check(initial)
    denoiser = Denoiser(model, schedule, prediction, time_input, dict(model_kwargs or {}))
    counts = calls if calls is not None else CallCount()
    evaluate = denoiser.stack(counts, True).outer
    points = [denoiser.point(t, initial.shape[0], initial.device, initial.dtype) for t in ts]
    draw, noise_scale = drawer(generator), math.sqrt(2 * step * temp)
    y = initial.detach().clone()
    for _ in range(int(steps)):
        with torch.enable_grad():
            leaf = y.requires_grad_(True)
            energy = measurement.residual(leaf).square().sum() * (weight / 2)
            for p in points:
                eps = draw(y)
                _, eps_hat = evaluate(leaf * p.alpha + eps * p.sigma, p)
                assert eps_hat is not None
                energy = energy + (eps_hat - eps).square().sum()
            (grad,) = torch.autograd.grad(energy, leaf)
        counts.backward += len(points)
        y = y.detach() - grad * step
        if noise_scale > 0:
            y = y + draw(y) * noise_scale
    return y.detach()
