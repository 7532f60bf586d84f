"""Edit-friendly DDPM noise: the per-step noises that make a stochastic run reproduce a given sample exactly
(Huberman-Spiegelglas, Kulikov & Michaeli 2024, "An Edit Friendly DDPM Noise Space: Inversion and
Manipulations", CVPR; the inversion used by h-Edit and TurboEdit).

The sampler is the DDPM posterior step (DDIM with ``eta``; ``eta = 1`` is ancestral DDPM) on the nodes
``t_0 > ... > t_N`` of :mod:`fewstep.inversion.exact_run`, from ``x_k`` at ``t_k`` to ``t_{k+1}``:

    x_{k+1} = alpha_{k+1} x0_hat + sqrt(sigma_{k+1}^2 - s_k^2) eps_hat + s_k z_k,
    s_k = eta sigma_{k+1} sqrt(1 - exp(-2 (lambda_{k+1} - lambda_k))),

with ``(x0_hat, eps_hat)`` the model's prediction at ``(x_k, t_k)``. Inversion draws every ``x_k`` (k < N)
independently from ``q(x_k | x0) = N(alpha_k x0, sigma_k^2 I)``, sets ``x_N = x0`` and solves each step for its
noise, ``z_k = (x_{k+1} - mean_k) / s_k``: these noises are not Gaussian-independent of ``x0`` (they are
"edit friendly": they carry the image's structure). Rerunning the sampler from ``x_0`` with them returns ``x0``
under the same condition, and under another condition (``model_kwargs``) an edit of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..model import CallCount
from ..schedules import NoiseSchedule
from ..spacing import SpacingLike
from .exact_run import ExactRun, ModelLike, as_state, check_fraction, prepare_exact

ETA = 1.0


@dataclass(frozen=True)
class EditFriendlyNoise:
    """The start state ``x`` at ``t_max`` and the ``noises`` of every step, shape ``(nfe, *x.shape)``."""

    x: Tensor
    noises: Tensor


def edit_friendly_invert(
    model: ModelLike,
    x0: Tensor,
    schedule: NoiseSchedule | None = None,
    nfe: int = 20,
    spacing: SpacingLike = "logsnr",
    prediction: str = "auto",
    *,
    eta: float = ETA,
    model_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    calls: CallCount | None = None,
) -> EditFriendlyNoise:
    """The start state and per-step noises from which :func:`edit_friendly_sample` (same options) returns ``x0``
    (the state at ``t_min``) up to rounding; ``nfe`` network calls (module docstring)."""
    eta = check_fraction(eta, "eta", ETA)
    run = prepare_exact(model, x0, schedule, nfe, spacing, prediction, model_kwargs, calls, "x0")
    scale = _noise_scales(run, eta)
    x0 = as_state(x0)
    nodes, n = run.nodes, run.steps
    draws = torch.randn((n, *x0.shape), generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)
    states = [x0 * float(nodes.alpha[k]) + draws[k] * float(nodes.sigma[k]) for k in range(n)] + [x0]
    noises = torch.empty_like(draws)
    for k in range(n):
        noises[k] = (states[k + 1] - _mean(run, states[k], k, scale[k])) / scale[k]
    run.finish(noises)
    return EditFriendlyNoise(states[0], noises)


def edit_friendly_sample(
    model: ModelLike,
    latent: EditFriendlyNoise,
    schedule: NoiseSchedule | None = None,
    nfe: int = 20,
    spacing: SpacingLike = "logsnr",
    prediction: str = "auto",
    *,
    eta: float = ETA,
    model_kwargs: Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
) -> Tensor:
    """The DDPM run (module docstring) from ``latent.x`` with the stored ``latent.noises``, under ``model_kwargs``
    (the original condition reproduces the inverted sample; another one edits it); ``nfe`` network calls."""
    if not isinstance(latent, EditFriendlyNoise):
        raise TypeError(f"latent: must be the EditFriendlyNoise of edit_friendly_invert, got {type(latent).__name__}")
    eta = check_fraction(eta, "eta", ETA)
    run = prepare_exact(model, latent.x, schedule, nfe, spacing, prediction, model_kwargs, calls, "latent.x")
    want = (run.steps, *latent.x.shape)
    if tuple(latent.noises.shape) != want:
        raise ValueError(
            f"latent.noises: must have shape (nfe, *x.shape) = {want} for nfe={run.steps}, got "
            f"{tuple(latent.noises.shape)} (give the nfe and spacing of the inversion)"
        )
    scale = _noise_scales(run, eta)
    x = as_state(latent.x)
    noises = latent.noises.to(x.dtype)
    for k in range(run.steps):
        x = _mean(run, x, k, scale[k]).add_(noises[k], alpha=scale[k])
    return run.finish(x)


def _noise_scales(run: ExactRun, eta: float) -> list[float]:
    """``s_k`` of every step (ValueError where it is 0: that step's noise cannot be solved for)."""
    nodes = run.nodes
    scales = [
        eta * float(nodes.sigma[k + 1]) * math.sqrt(-math.expm1(-2.0 * float(nodes.h[k]))) for k in range(run.steps)
    ]
    if not all(s > 0.0 for s in scales):
        raise ValueError("spacing: every step needs a positive noise scale (strictly decreasing times, t_min > 0)")
    return scales


def _mean(run: ExactRun, x: Tensor, k: int, scale: float) -> Tensor:
    """``alpha_{k+1} x0_hat + sqrt(sigma_{k+1}^2 - s_k^2) eps_hat`` at ``(x, t_k)``: one network call."""
    x0, eps = run.predict(x, k)
    sigma = float(run.nodes.sigma[k + 1])
    return x0 * float(run.nodes.alpha[k + 1]) + eps * math.sqrt(max(sigma * sigma - scale * scale, 0.0))
