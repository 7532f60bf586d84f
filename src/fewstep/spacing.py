"""Timestep spacings: where the model is evaluated between ``t_max`` and ``t_min``.

``model_times(schedule, n, spacing)`` returns ``n`` strictly decreasing times from ``t_max`` to ``t_min``
(both included, k-diffusion's convention for its sigma grids). For the discrete-model spacings of diffusers
(``"linspace"``, ``"leading"``, ``"trailing"``, as tabulated in "Common Diffusion Noise Schedules and Sample
Steps are Flawed") the times are diffusers' integer timesteps ``n`` mapped to ``t = (n + 1) / N``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .options import suggestion
from .schedules import DiscreteVP, NoiseSchedule

SpacingName = Literal["uniform", "logsnr", "time_quadratic", "karras", "exponential", "linspace", "leading", "trailing"]
SPACINGS: tuple[str, ...] = (
    "uniform",
    "logsnr",
    "time_quadratic",
    "karras",
    "exponential",
    "linspace",
    "leading",
    "trailing",
)
#: Other names users try for a spacing.
SPACING_ALIASES = {
    "lambda": "logsnr",
    "log_snr": "logsnr",
    "edm": "karras",
    "linear": "uniform",
    "quadratic": "time_quadratic",
}
DISCRETE_SPACINGS = ("linspace", "leading", "trailing")


def _finite_span(lo: float, hi: float) -> tuple[float, float]:
    """Replace an infinite upper end (alpha(t_max) = 0) by the mirror image of the lower end."""
    return (lo, hi) if math.isfinite(hi) else (lo, -lo if lo < 0 else 2 * lo + 1.0)


def model_times(
    schedule: NoiseSchedule,
    n: int,
    spacing: str | Tensor | np.ndarray | list[float] = "logsnr",
    *,
    rho: float = 7.0,
    steps_offset: int = 0,
    shift: float = 1.0,
) -> Tensor:
    """``n`` float64 times ``t_max = t_0 > ... > t_{n-1} = t_min`` spaced by ``spacing``.

    - ``"uniform"``: uniform in t.
    - ``"logsnr"``: uniform in lambda = log(alpha/sigma) (DPM-Solver's recommendation).
    - ``"time_quadratic"``: uniform in sqrt(t) (DPM-Solver's ``time_quadratic``).
    - ``"karras"``: ``level_i = (l_max^(1/rho) + i/(n-1) (l_min^(1/rho) - l_max^(1/rho)))^rho`` (EDM, eq. 5),
      with the level of :meth:`NoiseSchedule.level` (sigma/alpha, or t for flows).
    - ``"exponential"``: uniform in log level.
    - ``"linspace"``/``"leading"``/``"trailing"``: diffusers' discrete timesteps (``DiscreteVP`` only).

    A tensor/array/list of times is validated and returned as float64. Where alpha(t_max) = 0 (level or
    -lambda infinite), the first time stays ``t_max`` and the others are spaced as if the span were mirrored.

    ``shift`` (flows only, ``ode_variable == "t"``): the timestep shift of SD3/Flux, applied after the spacing
    (and to given times): ``t -> t_max g(t/t_max)`` with ``g(u) = shift u / (1 + (shift - 1) u)``, which keeps
    ``t_max`` and the order of the times; ``shift > 1`` moves the times towards the noise. diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=s)`` with uniform spacing is ``Flow(t_min=g(1/1000))`` here.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"steps: must be a positive integer, got {n!r}")
    shift = _check_shift(schedule, shift)
    if not isinstance(spacing, str):
        return _shifted(schedule, check_times(schedule, spacing), shift)
    if spacing not in SPACINGS:
        raise ValueError(
            f"spacing: unknown name {spacing!r}{suggestion(spacing, SPACINGS, SPACING_ALIASES)}; choose one of "
            f"{', '.join(SPACINGS)} or pass a tensor"
        )
    t_max, t_min = schedule.t_max, schedule.t_min
    if n == 1:
        times = torch.tensor([t_max], dtype=torch.float64)
    elif spacing == "uniform":
        times = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    elif spacing == "time_quadratic":
        times = torch.linspace(t_max**0.5, t_min**0.5, n, dtype=torch.float64) ** 2
    elif spacing == "logsnr":
        lam_min = float(schedule.lambda_(t_max))
        lam_max = float(schedule.lambda_(t_min))
        neg_lo, neg_hi = _finite_span(-lam_max, -lam_min)
        times = schedule.t_of_lambda(-torch.linspace(neg_hi, neg_lo, n, dtype=torch.float64))
    elif spacing in ("karras", "exponential"):
        log_lo, log_hi = _finite_span(math.log(float(schedule.level(t_min))), math.log(float(schedule.level(t_max))))
        if spacing == "karras":
            if not (isinstance(rho, int | float) and rho > 0):
                raise ValueError(f"rho: must be a positive number, got {rho!r}")
            lo_r, hi_r = math.exp(log_lo / rho), math.exp(log_hi / rho)
            levels = torch.linspace(hi_r, lo_r, n, dtype=torch.float64) ** rho
        else:
            levels = torch.exp(torch.linspace(log_hi, log_lo, n, dtype=torch.float64))
        times = schedule.t_of_level(levels)
    else:
        times = _discrete_times(schedule, n, spacing, steps_offset)
    if spacing not in DISCRETE_SPACINGS and n > 1:  # diffusers' tables are kept ("leading" starts below t_max)
        times[0] = t_max
        times[-1] = t_min
    return _shifted(schedule, check_times(schedule, times), shift)


def _check_shift(schedule: NoiseSchedule, shift: float) -> float:
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift: must be a positive finite number, got {shift!r}")
    if shift != 1 and schedule.ode_variable != "t":
        raise ValueError(
            f"shift: the timestep shift is for flow schedules (Flow, Interpolant), not {type(schedule).__name__}; "
            "leave shift=1"
        )
    return float(shift)


def _shifted(schedule: NoiseSchedule, times: Tensor, shift: float) -> Tensor:
    """The SD3/Flux timestep shift ``t -> t_max g(t/t_max)``, ``g(u) = shift u / (1 + (shift - 1) u)``."""
    if shift == 1.0:
        return times
    t_max = float(schedule.t_max)
    u = times / t_max
    out = t_max * (shift * u / (1.0 + (shift - 1.0) * u))
    out[times == t_max] = t_max
    if float(out[-1]) < schedule.t_min:
        raise ValueError(
            f"shift: {shift} moves the last time {float(times[-1])} to {float(out[-1])}, below the schedule's "
            f"t_min = {schedule.t_min}; use shift >= 1 or a smaller t_min"
        )
    if out.numel() > 1 and not torch.all(torch.diff(out) < 0):
        raise ValueError(f"shift: {shift} merges neighbouring times in float64; use fewer steps or a milder shift")
    return out


def _discrete_times(schedule: NoiseSchedule, n: int, spacing: str, steps_offset: int) -> Tensor:
    if not isinstance(schedule, DiscreteVP):
        raise ValueError(f"spacing: {spacing!r} is for DiscreteVP schedules only; use a continuous spacing")
    total = schedule.num_train_timesteps
    if n > total:
        raise ValueError(f"steps: {n} exceeds the schedule's {total} training timesteps")
    if spacing == "linspace":
        idx = np.linspace(0, total - 1, n).round()[::-1]
    elif spacing == "leading":
        ratio = total // n
        idx = (np.arange(0, n, dtype=np.float64) * ratio).round()[::-1] + steps_offset
    else:  # trailing: diffusers' np.arange(total, 0, -total / n), whose length is n + 1 for some n (61, 103, ...);
        # its values are total + i * delta with numpy's delta = (total - total / n) - total, kept for equality
        delta = (total - total / n) - total
        idx = np.round(total + np.arange(n) * delta) - 1
    idx = np.clip(idx, 0, total - 1).astype(np.float64)
    return schedule.t_of_index(torch.from_numpy(idx.copy()))


def check_times(schedule: NoiseSchedule, times: Tensor | np.ndarray | list[float]) -> Tensor:
    """Validate user-given times: 1-D, finite, strictly decreasing, inside ``[t_min, t_max]``."""
    if isinstance(times, Tensor):
        times = times.detach().cpu().to(torch.float64).numpy()
    t = np.array(times, dtype=np.float64)  # a copy, checked in numpy (cheaper than torch for a few dozen times)
    if t.ndim != 1 or t.size < 1:
        raise ValueError(f"timesteps: need a non-empty 1-D sequence of times, got shape {tuple(t.shape)}")
    if not np.all(np.isfinite(t)):
        raise ValueError("timesteps: contain a non-finite value")
    if t.size > 1 and not np.all(np.diff(t) < 0):
        raise ValueError(f"timesteps: must be strictly decreasing (no duplicates), got {t.tolist()}")
    tol = 1e-9 * max(1.0, abs(schedule.t_max))
    if t[0] > schedule.t_max + tol or t[-1] < schedule.t_min - tol:
        raise ValueError(
            f"timesteps: must lie in the schedule's range [{schedule.t_min}, {schedule.t_max}], "
            f"got [{float(t[-1])}, {float(t[0])}]"
        )
    return torch.from_numpy(np.clip(t, schedule.t_min, schedule.t_max))
