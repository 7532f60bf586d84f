"""EDICT-style coupled transformations: exact inversion with two coupled sequences (Wallace, Gokul & Naik 2023,
"EDICT: Exact Diffusion Inversion via Coupled Transformations", CVPR).

On the nodes ``t_0 > ... > t_N`` (:mod:`fewstep.inversion.exact_run`), write the DDIM step from node ``k`` to
``k + 1`` as ``a_k x + b_k eps`` with ``a_k = alpha_{k+1} / alpha_k`` and ``b_k = sigma_{k+1} - a_k sigma_k``.
Two states ``x``, ``y`` (both the noise at ``t_0``) each take the DDIM step with the other's noise prediction,
then are mixed with ``p`` (the paper's 0.93):

    x' = a_k x_k + b_k eps_hat(y_k, t_k)            y' = a_k y_k + b_k eps_hat(x', t_k)
    x_{k+1} = p x' + (1 - p) y'                     y_{k+1} = p y' + (1 - p) x_{k+1}

Each line is an affine map of one state given the other, so the step runs backwards exactly (two network calls):

    y' = (y_{k+1} - (1 - p) x_{k+1}) / p            x' = (x_{k+1} - (1 - p) y') / p
    y_k = (y' - b_k eps_hat(x', t_k)) / a_k         x_k = (x' - b_k eps_hat(y_k, t_k)) / a_k

:func:`edict_invert` starts from ``x_N = y_N = x0`` and returns the pair at ``t_0``; :func:`edict_sample` from it
returns ``x0`` (both states) up to rounding. Every node needs ``alpha_k > 0`` (a spacing ending below a flow's
``t = 1``).

Rounding: linearised about ``x = y``, a step's error map has determinant ``a_k^2`` and eigenvalues ``a_k + b_k J``
(the DDIM step's) and ``a_k^2 / (a_k + b_k J)`` (``J`` the Jacobian of ``eps_hat``; the mixing damps the states'
difference by ``p^2``). Where the ODE contracts hard, as under strong guidance, the second amplifies every rounding
error of a run, the sampler's own included: under CFG 7.5 on the labelled mixture a relative change of 1e-9 in the
latent moves the sample by 1e-3 to 4e-2 at ``p = 0.93`` (its round trip is then up to 7e-10 in float64), and a
smaller ``p`` (0.8) keeps it below 1e-10 (docs/inversion.md, ``benchmarks/exact_inversion.py --only gain``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from ..model import CallCount
from ..schedules import NoiseSchedule
from ..spacing import SpacingLike
from .exact_run import ExactRun, ModelLike, as_state, check_fraction, check_same, prepare_exact

MIX = 0.93


@dataclass(frozen=True)
class CoupledState:
    """The two coupled states ``x`` and ``y`` of an EDICT run at one node."""

    x: Tensor
    y: Tensor


def edict_sample(
    model: ModelLike,
    noise: Tensor | CoupledState,
    schedule: NoiseSchedule | None = None,
    nfe: int = 20,
    spacing: SpacingLike = "logsnr",
    prediction: str = "auto",
    *,
    p: float = MIX,
    model_kwargs: Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
) -> CoupledState:
    """The coupled run (module docstring) from ``noise`` (``x = y = noise``) or a :class:`CoupledState` at
    ``t_max`` to ``t_min``; ``2 nfe`` network calls. Its ``x`` is the sample."""
    state = noise if isinstance(noise, CoupledState) else CoupledState(noise, noise)
    p = check_fraction(p, "p", MIX)
    run = prepare_exact(model, state.x, schedule, nfe, spacing, prediction, model_kwargs, calls, "noise")
    check_same(state.x, state.y, "noise.x, noise.y")
    a, b = _ddim_coefficients(run)
    x, y = as_state(state.x), as_state(state.y)
    for k in range(run.steps):
        xi = (x * a[k]).add_(run.predict(y, k)[1], alpha=b[k])
        yi = (y * a[k]).add_(run.predict(xi, k)[1], alpha=b[k])
        x = (xi * p).add_(yi, alpha=1.0 - p)
        y = (yi * p).add_(x, alpha=1.0 - p)
    run.finish(x)
    return CoupledState(x, y)


def edict_invert(
    model: ModelLike,
    x0: Tensor | CoupledState,
    schedule: NoiseSchedule | None = None,
    nfe: int = 20,
    spacing: SpacingLike = "logsnr",
    prediction: str = "auto",
    *,
    p: float = MIX,
    model_kwargs: Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
) -> CoupledState:
    """The :class:`CoupledState` at ``t_max`` from which :func:`edict_sample` (same options) returns ``x0`` (the
    state at ``t_min``; ``x = y = x0`` for a tensor) up to rounding; ``2 nfe`` network calls."""
    state = x0 if isinstance(x0, CoupledState) else CoupledState(x0, x0)
    p = check_fraction(p, "p", MIX)
    run = prepare_exact(model, state.x, schedule, nfe, spacing, prediction, model_kwargs, calls, "x0")
    check_same(state.x, state.y, "x0.x, x0.y")
    a, b = _ddim_coefficients(run)
    x, y = as_state(state.x), as_state(state.y)
    for k in range(run.steps - 1, -1, -1):
        yi = (y - x * (1.0 - p)).div_(p)
        xi = (x - yi * (1.0 - p)).div_(p)
        y = (yi - run.predict(xi, k)[1] * b[k]).div_(a[k])
        x = (xi - run.predict(y, k)[1] * b[k]).div_(a[k])
    run.finish(x)
    return CoupledState(x, y)


def _ddim_coefficients(run: ExactRun) -> tuple[list[float], list[float]]:
    """``a_k = alpha_{k+1} / alpha_k`` and ``b_k = sigma_{k+1} - a_k sigma_k`` of every step (ValueError where a
    node has alpha = 0, whose step is not invertible)."""
    alpha, sigma = run.nodes.alpha, run.nodes.sigma
    if not bool(np.all(alpha > 0)):
        raise ValueError(
            "spacing: EDICT's steps divide by alpha, which is 0 at the first node (a flow's t = 1); give times that "
            "start below it, e.g. spacing=fewstep.spacing.model_times(schedule, nfe + 1)[1:] or a schedule t_max < 1"
        )
    a = alpha[1:] / alpha[:-1]
    b = sigma[1:] - a * sigma[:-1]
    return a.tolist(), b.tolist()
