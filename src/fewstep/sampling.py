"""``fewstep.sample``: the one entry point from a model and a noise tensor to samples."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .denoiser import Denoiser, Threshold
from .noise.colored import ColoredNoise
from .noise.levels import seeded_noise_sampler
from .schedules import NoiseSchedule
from .solvers import Grid, Solver, get_solver
from .solvers.grid import Callback
from .spacing import model_times
from .time_shift import TimeShift, check_time_shift, evaluation
from .trajectory import Trajectory

Final = Literal["zero", "t_min"]


def sample(
    model: Callable[..., Tensor] | Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule | None = None,
    solver: str | Solver = "dpmpp_3m",
    nfe: int | None = None,
    spacing: str | Tensor | np.ndarray | list[float] = "logsnr",
    prediction: str = "epsilon",
    generator: torch.Generator | None = None,
    *,
    steps: int | None = None,
    final: Final = "zero",
    time_input: str | Callable[[Tensor], Tensor] = "auto",
    model_kwargs: Mapping[str, Any] | None = None,
    guidance_scale: float = 1.0,
    uncond_kwargs: Mapping[str, Any] | None = None,
    guidance_rescale: float = 0.0,
    threshold: Threshold | None = None,
    rho: float = 7.0,
    callback: Callback | None = None,
    progress: bool | None = None,
    grad: bool = False,
    noise_sampler: Callable[[float, float], Tensor] | None = None,
    shift: float = 1.0,
    seed: int | Sequence[int] | Tensor | None = None,
    trajectory: Trajectory | None = None,
    sde_window: tuple[float, float] | None = None,
    time_shift: TimeShift | Mapping[str, Any] | None = None,
    **solver_options: Any,
) -> Tensor:
    """Solve from ``noise`` (the state at the first time, ``t_max`` unless ``spacing`` gives times) to data.

    Args:
        model: the network, called as ``model(x, time, **model_kwargs)``, or a prepared :class:`Denoiser`.
        noise: the initial state ``x_{t_max}`` (N(0, I) for VP schedules, scaled by sigma_max for VE/EDM).
        schedule: the :class:`NoiseSchedule` the model was trained with (ignored if ``model`` is a Denoiser).
        solver: a name from :func:`fewstep.solvers.available` or a :class:`Solver` instance.
        nfe: the exact number of model evaluations to spend (give this or ``steps``).
        spacing: a spacing name (:mod:`fewstep.spacing`) or the model-evaluation times themselves (then
            ``nfe``/``steps`` may be left out, or are checked against the times).
        prediction: what the model returns: epsilon, sample, v_prediction, score or velocity.
        generator: the ``torch.Generator`` of a stochastic solver's per-step noise (``torch.randn``); the run is
            deterministic given it. Deterministic solvers ignore it.
        steps: the number of solver steps (instead of ``nfe``).
        final: ``"zero"`` ends with a step to sigma = 0 (the clean data); ``"t_min"`` ends at the last time.
        time_input: the model's time convention, see :class:`Denoiser`.
        callback: called after each step with ``{"i", "t", "x", "denoised"}``.
        progress: show a tqdm bar (default: when the run spends 100 or more evaluations).
        grad: record the autograd graph through the run (off by default, as in diffusers pipelines).
        noise_sampler: instead of ``generator``, the per-step noise of a stochastic solver:
            ``noise_sampler(level_s, level_t)`` returns a standard normal tensor shaped like ``noise`` for the step
            between the two noise levels (k-diffusion's convention; levels are ``schedule.level``: sigma/alpha,
            or t for flows), e.g. :func:`fewstep.noise.brownian_noise_sampler` of a Brownian path.
        shift: the SD3/Flux timestep shift of flow schedules, ``t -> shift t / (1 + (shift - 1) t)`` (scaled to
            keep ``t_max``) after the spacing; see :func:`fewstep.spacing.model_times`. ValueError on other schedules.
        seed: per-sample seeds of a stochastic solver's noise (instead of ``generator``/``noise_sampler``): one
            integer (the seeds ``seed, ..., seed + B - 1``) or one integer per sample (a sequence or 1-D tensor). The
            noise is then drawn from a :class:`fewstep.noise.BrownianPath` in the schedule time of the noise levels
            (:func:`fewstep.noise.levels.seeded_noise_sampler`), so a sample's noise depends on its seed only, not on
            the batch it is drawn in. The start noise is still ``noise``.
        trajectory: a :class:`fewstep.trajectory.Trajectory` to record the run in: every state, and for every step
            its Gaussian transition (mean, std, noise) and log-probability (see :func:`fewstep.trajectory.
            sample_with_logprob`).
        sde_window: ``(t_hi, t_lo)`` in schedule time: a stochastic solver adds noise only on the steps starting at
            a time in ``[t_lo, t_hi]`` and takes its deterministic (eta = 0; ``edm_sde``: no churn) step elsewhere.
        time_shift: the Time-Shift Sampler (Li et al. 2024) for any solver: a :class:`fewstep.time_shift.TimeShift`
            (or a dict of its options); the network is called at the time of a window around each requested time
            whose noise variance best matches the state's (see :mod:`fewstep.time_shift`). None: off.
        solver_options: options of the named solver (e.g. ``lower_order_final=False``).

    Returns:
        The sample, with the shape, dtype and device of ``noise``. Float16/bfloat16 noise is integrated in
        float32; the model is called in its own dtype.
    """
    check_noise(noise)
    denoiser = as_denoiser(
        model,
        schedule,
        prediction,
        time_input,
        model_kwargs,
        guidance_scale,
        uncond_kwargs,
        guidance_rescale,
        threshold,
    )
    schedule = denoiser.schedule
    slv = get_solver(solver, **solver_options)
    if final not in ("zero", "t_min"):
        raise ValueError(f"final: choose 'zero' or 't_min', got {final!r}")
    if nfe is not None and steps is not None:
        raise ValueError("nfe, steps: give one of them, not both")
    if isinstance(spacing, str) and nfe is None and steps is None:
        raise ValueError("nfe, steps: give one of them (or pass the times themselves as spacing=)")
    for name, value in (("nfe", nfe), ("steps", steps)):
        if value is not None and (not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    clean_end = final == "zero"
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: must be a torch.Generator, got {type(generator).__name__}")
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError(f"noise_sampler: must be callable as noise_sampler(level_s, level_t), got {noise_sampler!r}")
    if generator is not None and noise_sampler is not None:
        raise ValueError("generator, noise_sampler: give one of them, not both (the noise sampler draws the noise)")
    if seed is not None and (generator is not None or noise_sampler is not None):
        raise ValueError("seed, generator, noise_sampler: give one of them, not several (each sets the noise)")
    if trajectory is not None and not isinstance(trajectory, Trajectory):
        raise TypeError(f"trajectory: must be a fewstep.trajectory.Trajectory, got {type(trajectory).__name__}")
    if trajectory is not None and isinstance(noise_sampler, ColoredNoise):
        raise ValueError("trajectory, noise_sampler: recorded log-probabilities assume white noise, not ColoredNoise")
    window = _sde_window(sde_window)
    time_shifter = check_time_shift(time_shift)

    if isinstance(spacing, str):
        first_infinite = float(schedule.alpha(schedule.t_max)) == 0.0
        n_steps = steps if steps is not None else slv.steps_for_nfe(int(nfe), first_infinite, clean_end)  # type: ignore[arg-type]
        times = model_times(schedule, n_steps if clean_end else n_steps + 1, spacing, rho=rho, shift=shift)
    else:
        times = model_times(schedule, 1, spacing, shift=shift)
        n_steps = len(times) if clean_end else len(times) - 1
        if n_steps < 1:
            raise ValueError("spacing: with final='t_min' give at least two times")
        if steps is not None and steps != n_steps:
            raise ValueError(f"steps: {steps} does not match the {len(times)} times given in spacing")
    node_t = np.concatenate([times.numpy(), [math.nan]]) if clean_end else times.numpy()

    dtype = torch.float32 if noise.dtype in (torch.float16, torch.bfloat16) else noise.dtype
    if not dtype.is_floating_point:
        raise TypeError(f"noise: must be a floating-point tensor, got {noise.dtype}")
    grid = Grid(
        denoiser,
        node_t,
        clean_end,
        batch=noise.shape[0],
        device=noise.device,
        dtype=dtype,
        callback=callback,
        generator=generator,
        nfe_budget=int(nfe) if nfe is not None and isinstance(spacing, str) else None,
        noise_sampler=noise_sampler,
        trajectory=trajectory,
        sde_window=window,
    )
    if seed is not None:
        grid.noise_sampler = seeded_noise_sampler(schedule, noise, seed, dtype)
    expected = slv.nfe(grid)
    if nfe is not None and expected != nfe:
        raise ValueError(f"nfe: {slv.name!r} spends {expected} evaluations on these {n_steps} steps, not {nfe}")
    grid.progress = progress if progress is not None else expected >= 100
    start = denoiser.nfe
    with torch.set_grad_enabled(grad):
        start_x = noise.to(dtype)
        if trajectory is not None:
            trajectory.start(start_x)
        x = slv.run(start_x, grid, evaluation(time_shifter, grid, slv.needs_eps))
    denoiser.raise_if_nonfinite()
    used = denoiser.nfe - start
    if used != expected:  # an internal invariant: the plan and the run must agree
        raise RuntimeError(f"solver {slv.name!r} used {used} evaluations, planned {expected}")
    out = x.to(noise.dtype)
    if trajectory is not None:
        trajectory.sample = out
    return out


def check_noise(noise: object) -> None:
    """``noise`` must be a floating-point tensor with a batch dimension first (TypeError/ValueError)."""
    if not isinstance(noise, Tensor):
        raise TypeError(f"noise: must be a torch.Tensor, got {type(noise).__name__}")
    if noise.ndim < 1 or noise.shape[0] < 1:
        raise ValueError(f"noise: need a batch dimension first, got shape {tuple(noise.shape)}")
    if not noise.dtype.is_floating_point:
        raise TypeError(f"noise: must be a floating-point tensor, got {noise.dtype}")


def as_denoiser(
    model: Callable[..., Tensor] | Denoiser,
    schedule: NoiseSchedule | None,
    prediction: str,
    time_input: str | Callable[[Tensor], Tensor],
    model_kwargs: Mapping[str, Any] | None,
    guidance_scale: float,
    uncond_kwargs: Mapping[str, Any] | None,
    guidance_rescale: float,
    threshold: Threshold | None,
) -> Denoiser:
    """``model`` itself if it is a :class:`Denoiser`, else the Denoiser wrapping it with these options."""
    if isinstance(model, Denoiser):
        return model
    if schedule is None:
        raise TypeError("schedule: required (the NoiseSchedule the model was trained with)")
    return Denoiser(
        model,
        schedule,
        prediction,
        time_input=time_input,
        model_kwargs=dict(model_kwargs or {}),
        guidance_scale=guidance_scale,
        uncond_kwargs=uncond_kwargs,
        guidance_rescale=guidance_rescale,
        threshold=threshold,
    )


def _sde_window(window: object) -> tuple[float, float] | None:
    """``(t_hi, t_lo)`` as floats, ``t_hi >= t_lo`` (ValueError otherwise)."""
    if window is None:
        return None
    try:
        hi, lo = (float(v) for v in window)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(f"sde_window: must be a pair (t_hi, t_lo) of schedule times, got {window!r}") from None
    if math.isnan(hi) or math.isnan(lo) or hi < lo:
        raise ValueError(f"sde_window: need t_hi >= t_lo, got {window!r}")
    return hi, lo
