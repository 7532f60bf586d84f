"""CODE-style editing of a corrupted sample, and SDEdit to compare it with.

CODE (van Delft, Martorella & Alahi 2024, "CODE: Confident Ordinary Differential Editing") encodes the input ``x``
by the probability-flow ODE up to an edit time ``t`` (:func:`fewstep.inversion.invert` on ``nfe + 1`` times
uniform in log-SNR between ``t_min`` and ``t``), raises the likelihood of the latent there by Langevin steps on the
marginal ``p_t``, and decodes it by the same ODE solver. With ``z_enc`` the encoding and ``sigma = sigma(t)``:

    z <- z + eps sigma^2 grad log p_t(z) + sqrt(2 eps) sigma xi = z - eps sigma eps_hat(z, t) + sqrt(2 eps) sigma xi,
    z <- z_enc + clip(z - z_enc, -c sigma, c sigma),

``langevin_steps`` times (``eps`` the ``step_size``; ``noise=False``, the default, drops the ``xi`` term: plain
likelihood ascent, which moves the latent to a mode of ``p_t`` rather than sampling it). The second line is this module's confidence clipping: every coordinate of the latent stays within
``c = confidence`` standard deviations of the noise at ``t`` from the encoding, so ``confidence = 0`` returns the
ODE round trip of ``x`` and a large one lets the latent climb to the nearest mode of ``p_t``; the distance of the
edit to ``x`` grows with it. (The paper's confidence-interval clipping bounds the latent's values by a quantile of
the Gaussian in the same units; here the interval is centred on the encoding.)

SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations")
noises ``x`` to ``t``, ``z = alpha(t) x + sigma(t) xi``, and denoises it by the same ODE solver: its distance to
``x`` is controlled by ``t`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..model import CallCount, Denoiser
from ..prepare import as_denoiser, check_noise, state_dtype
from ..sampling import sample
from ..schedules import NoiseSchedule
from .invert import invert


def edit_times(schedule: NoiseSchedule, t: float, nfe: int) -> Tensor:
    """``nfe + 1`` times from ``t`` down to ``schedule.t_min``, uniform in log-SNR (ValueError for ``t`` outside
    ``(t_min, t_max]``)."""
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise TypeError(f"t: must be a number (the schedule time to edit at), got {type(t).__name__}")
    if not schedule.t_min < float(t) <= schedule.t_max:
        raise ValueError(
            f"t: must lie in (t_min, t_max] = ({schedule.t_min}, {schedule.t_max}] of the schedule, got {t}; e.g. "
            f"t={0.5 * (schedule.t_min + schedule.t_max):.3g}"
        )
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe: must be a positive integer (steps of the encoding and of the decoding), got {nfe!r}")
    ends = schedule.lambda_(torch.tensor([float(t), schedule.t_min], dtype=torch.float64))
    return schedule.t_of_lambda(torch.linspace(float(ends[0]), float(ends[1]), nfe + 1, dtype=torch.float64))


def _prepared(
    model: Callable[..., Tensor] | Denoiser,
    x: Tensor,
    schedule: NoiseSchedule | None,
    prediction: str,
    model_kwargs: Mapping[str, Any] | None,
) -> Denoiser:
    check_noise(x, "x")
    return as_denoiser(model, schedule, prediction, "auto", model_kwargs, 1.0, None, 0.0, None)


def code_edit(
    model: Callable[..., Tensor] | Denoiser,
    x: Tensor,
    schedule: NoiseSchedule | None = None,
    t: float = 0.3,
    nfe: int = 20,
    solver: str = "dpmpp_2m",
    prediction: str = "auto",
    *,
    confidence: float = 1.0,
    langevin_steps: int = 40,
    step_size: float = 0.2,
    noise: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    calls: CallCount | None = None,
) -> Tensor:
    """Encode ``x`` by the ODE to ``t``, take ``langevin_steps`` clipped Langevin steps there, decode (module
    docstring); ``2 nfe + langevin_steps`` network calls for a one-evaluation-per-step ``solver``."""
    denoiser = _prepared(model, x, schedule, prediction, model_kwargs)
    times = edit_times(denoiser.schedule, t, nfe)
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not float(confidence) >= 0:
        raise ValueError(f"confidence: must be a number >= 0 (noise standard deviations; inf: no clipping), got "
                         f"{confidence!r}; e.g. confidence=1.0")  # fmt: skip
    if isinstance(langevin_steps, bool) or not isinstance(langevin_steps, int) or langevin_steps < 0:
        raise ValueError(f"langevin_steps: must be an integer >= 0, got {langevin_steps!r}; e.g. 20")
    if isinstance(step_size, bool) or not isinstance(step_size, int | float) or not 0 < float(step_size) <= 1:
        raise ValueError(f"step_size: must be in (0, 1] (a fraction of sigma(t)^2), got {step_size!r}; e.g. 0.1")
    count = calls if calls is not None else CallCount()
    z_enc = invert(denoiser, x, solver=solver, spacing=times.flip(0), calls=count)
    dtype = state_dtype(z_enc)
    z = z_enc.to(dtype)
    point = denoiser.point(float(times[0]), x.shape[0], x.device, dtype)
    sigma = point.sigma
    bound = float(confidence) * sigma
    stack = denoiser.stack(count, True)
    drift, spread = float(step_size) * sigma, math.sqrt(2.0 * float(step_size)) * sigma
    for _ in range(langevin_steps):
        eps = stack.evaluate(z, point)[1]
        assert eps is not None  # the stack was built with needs_eps
        z = z - eps * drift
        if noise:
            z = z + torch.randn(z.shape, generator=generator, dtype=dtype, device="cpu").to(z.device) * spread
        if math.isfinite(bound):
            z = z_enc + (z - z_enc).clamp(-bound, bound)
    stack.finish(z)
    return _decode(denoiser, z, solver, times, count).to(x.dtype)


def sdedit(
    model: Callable[..., Tensor] | Denoiser,
    x: Tensor,
    schedule: NoiseSchedule | None = None,
    t: float = 0.3,
    nfe: int = 20,
    solver: str = "dpmpp_2m",
    prediction: str = "auto",
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    calls: CallCount | None = None,
) -> Tensor:
    """SDEdit: ``alpha(t) x + sigma(t) xi`` denoised by the ODE from ``t`` to ``t_min`` (module docstring)."""
    denoiser = _prepared(model, x, schedule, prediction, model_kwargs)
    times = edit_times(denoiser.schedule, t, nfe)
    sched = denoiser.schedule
    tt = times[:1]
    alpha, sigma = float(sched.alpha(tt)[0]), float(sched.sigma(tt)[0])
    dtype = state_dtype(x)
    xi = torch.randn(x.shape, generator=generator, dtype=dtype, device="cpu").to(x.device)
    z = x.to(dtype) * alpha + xi * sigma
    count = calls if calls is not None else CallCount()
    return _decode(denoiser, z, solver, times, count).to(x.dtype)


def _decode(denoiser: Denoiser, z: Tensor, solver: str, times: Tensor, calls: CallCount) -> Tensor:
    return sample(denoiser, z, solver=solver, spacing=times, final="t_min", calls=calls)


__all__ = ["code_edit", "edit_times", "sdedit"]
