"""Timestep spacings: where the model is evaluated between ``t_max`` and ``t_min``.

``model_times(schedule, n, spacing)`` returns ``n`` strictly decreasing times from ``t_max`` to ``t_min``
(both included, k-diffusion's convention for its sigma grids; ``"sgm_uniform"`` stops one step above ``t_min``). For the discrete-model spacings of diffusers
(``"linspace"``, ``"leading"``, ``"trailing"``, as tabulated in "Common Diffusion Noise Schedules and Sample
Steps are Flawed") the times are diffusers' integer timesteps ``n`` mapped to ``t = (n + 1) / N``.

A spacing with options is a :class:`Spacing`: ``Spacing("beta", a=0.5, b=0.7)``, ``Spacing("karras", rho=5)``;
a plain name uses the defaults of :data:`SPACING_OPTIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias, get_args

import numpy as np
import torch
from torch import Tensor

from .options import suggestion
from .schedules import DiscreteVP, NoiseSchedule
from .spacing_formulas import (
    AYS_LEVELS,
    AYS_RANGES,
    beta_fractions,
    kl_optimal_levels,
    linear_quadratic_fractions,
    loglinear_resample,
    polyexponential_levels,
)

SpacingName = Literal[
    "uniform",
    "logsnr",
    "time_quadratic",
    "karras",
    "exponential",
    "beta",
    "linear_quadratic",
    "kl_optimal",
    "polyexponential",
    "sgm_uniform",
    "ays_sd15",
    "ays_sdxl",
    "ays_svd",
    "linspace",
    "leading",
    "trailing",
]
SPACINGS: tuple[str, ...] = get_args(SpacingName)
#: Other names users try for a spacing.
SPACING_ALIASES = {
    "lambda": "logsnr",
    "log_snr": "logsnr",
    "edm": "karras",
    "linear": "uniform",
    "quadratic": "time_quadratic",
    "ays": "ays_sd15",
    "align_your_steps": "ays_sd15",
}
DISCRETE_SPACINGS = ("linspace", "leading", "trailing")
#: The spacings defined on any schedule (every one but diffusers' discrete timesteps).
CONTINUOUS_SPACINGS: tuple[str, ...] = tuple(s for s in SPACINGS if s not in DISCRETE_SPACINGS)
#: The options of each spacing that has some, with their defaults (``linear_steps=None``: half the steps).
SPACING_OPTIONS: dict[str, dict[str, float | int | None]] = {
    "karras": {"rho": 7.0},
    "polyexponential": {"rho": 1.0},
    "beta": {"a": 0.6, "b": 0.6},
    "linear_quadratic": {"threshold_noise": 0.025, "linear_steps": None},
}
#: The options of a spacing that ``model_times(rho=...)`` (and ``fewstep.sample(rho=...)``) sets.
RHO_SPACINGS = ("karras", "polyexponential")


@dataclass(frozen=True, init=False)
class Spacing:
    """A spacing name with its options, e.g. ``Spacing("beta", a=0.5, b=0.7)`` or ``Spacing("karras", rho=5)``.

    The options and their defaults are :data:`SPACING_OPTIONS` (a name without options takes none); they are
    checked here (ValueError naming the option and its allowed values). ``options`` holds the given ones.
    """

    name: str
    options: tuple[tuple[str, float | int | None], ...]

    def __init__(self, name: str, **options: float | int | None) -> None:
        name = check_spacing_name(name)
        allowed = SPACING_OPTIONS.get(name, {})
        for key in options:
            if key not in allowed:
                choices = ", ".join(allowed) if allowed else "none"
                raise ValueError(f"{key}: not an option of the {name!r} spacing; its options: {choices}")
        checked = {key: _check_option(name, key, value) for key, value in options.items()}
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", tuple(sorted(checked.items())))

    @classmethod
    def of(cls, spacing: str | Spacing, options: Mapping[str, float | int | None] | None = None) -> Spacing:
        """``spacing`` (a name or a Spacing) with ``options`` added (ValueError if one is given twice)."""
        if isinstance(spacing, Spacing):
            given = dict(spacing.options)
            for key in options or {}:
                if key in given:
                    raise ValueError(f"{key}: given both in the Spacing and as an option")
            return cls(spacing.name, **given, **dict(options or {}))
        if not isinstance(spacing, str):
            raise TypeError(f"spacing: must be a name or a fewstep.spacing.Spacing, got {type(spacing).__name__}")
        return cls(spacing, **dict(options or {}))

    def option(self, key: str) -> float | int | None:
        """The option's value: the given one, else its default."""
        return dict(self.options).get(key, SPACING_OPTIONS[self.name][key])


#: What ``spacing=`` accepts: a name, a :class:`Spacing`, or the times themselves.
SpacingLike: TypeAlias = str | Spacing | Tensor | np.ndarray | list[float]


def is_named(spacing: object) -> bool:
    """Whether ``spacing`` is a rule (a name or a :class:`Spacing`) rather than given times."""
    return isinstance(spacing, str | Spacing)


def check_spacing_name(name: object) -> str:
    """``name`` if it is a spacing of :data:`SPACINGS` (ValueError with the choices otherwise)."""
    if not isinstance(name, str) or name not in SPACINGS:
        hint = suggestion(name, SPACINGS, SPACING_ALIASES) if isinstance(name, str) else ""
        raise ValueError(f"spacing: unknown name {name!r}{hint}; choose one of {', '.join(SPACINGS)} or pass a tensor")
    return name


def _check_option(name: str, key: str, value: object) -> float | int | None:
    """One option's value, checked (ValueError naming the option and its allowed values)."""
    if key == "linear_steps":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"linear_steps: must be a positive integer or None (half the steps), got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: must be a finite number, got {value!r}")
    if key == "threshold_noise" and not 0.0 < value < 1.0:
        raise ValueError(f"threshold_noise: must lie in (0, 1), got {value!r}")
    if key in ("rho", "a", "b") and not value > 0:
        raise ValueError(f"{key}: must be a positive number, got {value!r}")
    return float(value)


def _resolve(spacing: str | Spacing, rho: float | None) -> Spacing:
    """The spacing as a :class:`Spacing`, ``rho`` (when given) set on karras / polyexponential."""
    spec = Spacing.of(spacing)
    if rho is None or spec.name not in RHO_SPACINGS:
        return spec
    given = dict(spec.options).get("rho")
    if given is not None and given != rho:
        raise ValueError(f"rho: given twice, {rho!r} and {given!r} in the Spacing; give it once")
    return Spacing(spec.name, rho=rho)


def _finite_span(lo: float, hi: float) -> tuple[float, float]:
    """Replace an infinite upper end (alpha(t_max) = 0) by the mirror image of the lower end."""
    return (lo, hi) if math.isfinite(hi) else (lo, -lo if lo < 0 else 2 * lo + 1.0)


def model_times(
    schedule: NoiseSchedule,
    n: int,
    spacing: SpacingLike = "logsnr",
    *,
    rho: float | None = None,
    steps_offset: int = 0,
    shift: float = 1.0,
) -> Tensor:
    """``n`` float64 times ``t_max = t_0 > ... > t_{n-1} = t_min`` spaced by ``spacing``.

    With ``u_i = i / (n - 1)``, the level of :meth:`NoiseSchedule.level` (sigma/alpha, or t for flows) and
    ``l_max``, ``l_min`` its values at ``t_max``, ``t_min``:

    - ``"uniform"``: uniform in t.
    - ``"logsnr"``: uniform in lambda = log(alpha/sigma) (DPM-Solver's recommendation).
    - ``"time_quadratic"``: uniform in sqrt(t) (DPM-Solver's ``time_quadratic``).
    - ``"karras"`` (option ``rho``, default 7):
      ``level_i = (l_max^(1/rho) + u_i (l_min^(1/rho) - l_max^(1/rho)))^rho`` (EDM, eq. 5).
    - ``"exponential"``: uniform in log level.
    - ``"beta"`` (options ``a``, ``b``, default 0.6 each): ``t_i = t_min + (t_max - t_min) F^{-1}(1 - u_i)``
      with ``F^{-1}`` the Beta(a, b) quantile function (Lee et al. 2024, "Beta Sampling is All You Need"; on
      :class:`~fewstep.EDM`, where t = sigma, this is diffusers' ``use_beta_sigmas``).
    - ``"linear_quadratic"`` (options ``threshold_noise`` = 0.025, ``linear_steps`` = half the steps): Mochi's
      schedule in t, ``t_i = t_min + (t_max - t_min)(1 - f_i)``, ``f`` linear up to ``threshold_noise`` over
      ``linear_steps`` steps, then quadratic to 1 (:func:`~fewstep.spacing_formulas.linear_quadratic_fractions`).
    - ``"kl_optimal"``: ``level_i = tan((1 - u_i) atan(l_max) + u_i atan(l_min))`` (the KL-optimal schedule of
      Sabour et al. 2024, "Align Your Steps"; ComfyUI's ``kl_optimal``).
    - ``"polyexponential"`` (option ``rho``, default 1):
      ``log level_i = log l_min + (1 - u_i)^rho (log l_max - log l_min)`` (k-diffusion's polyexponential).
    - ``"sgm_uniform"``: ``n`` of ``n + 1`` uniform steps in t from ``t_max``, the last one left out:
      ``t_i = t_max - i (t_max - t_min) / n`` (sgm / SDXL's uniform timesteps, ComfyUI's ``sgm_uniform``). It
      ends at ``t_min + (t_max - t_min) / n``, not ``t_min``.
    - ``"ays_sd15"``, ``"ays_sdxl"``, ``"ays_svd"``: the Align-Your-Steps levels published for Stable Diffusion
      1.5, SDXL and Stable Video Diffusion (:data:`~fewstep.spacing_formulas.AYS_LEVELS`, 11 levels), log-linearly
      interpolated to ``n`` levels (``log level`` linear in the table's fractional index), then mapped onto the
      schedule's span by the affine map of log level that sends the level range of the table's model
      (:data:`~fewstep.spacing_formulas.AYS_RANGES`) to ``[l_min, l_max]``: the table itself on its model's own
      schedule (``DiscreteVP.scaled_linear()`` for SD 1.5 / SDXL, ``EDM(0.002, 700)`` for SVD).
    - ``"linspace"``/``"leading"``/``"trailing"``: diffusers' discrete timesteps (``DiscreteVP`` only).

    ``spacing`` may be a name or a :class:`Spacing` with options; ``rho`` (None: the spacing's default) sets the
    option of karras and polyexponential and is ignored by the others. A tensor/array/list of times is validated
    and returned as float64. Where alpha(t_max) = 0 (level or -lambda infinite), the first time stays ``t_max``
    and the others are spaced as if the span were mirrored (kl_optimal uses ``atan(inf) = pi/2``).

    ``shift`` (flows only, ``ode_variable == "t"``): the timestep shift of SD3/Flux, applied after the spacing
    (and to given times): ``t -> t_max g(t/t_max)`` with ``g(u) = shift u / (1 + (shift - 1) u)``, which keeps
    ``t_max`` and the order of the times; ``shift > 1`` moves the times towards the noise. diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=s)`` with uniform spacing is ``Flow(t_min=g(1/1000))`` here.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"steps: must be a positive integer, got {n!r}")
    shift = _check_shift(schedule, shift)
    if not is_named(spacing):
        return _shifted(schedule, check_times(schedule, spacing), shift)  # type: ignore[arg-type]
    spec = _resolve(spacing, rho)  # type: ignore[arg-type]
    name = spec.name
    t_max, t_min = schedule.t_max, schedule.t_min
    if n == 1:
        times = torch.tensor([t_max], dtype=torch.float64)
    elif name == "uniform":
        times = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    elif name == "time_quadratic":
        times = torch.linspace(t_max**0.5, t_min**0.5, n, dtype=torch.float64) ** 2
    elif name == "logsnr":
        lam_min = float(schedule.lambda_(t_max))
        lam_max = float(schedule.lambda_(t_min))
        neg_lo, neg_hi = _finite_span(-lam_max, -lam_min)
        times = schedule.t_of_lambda(-torch.linspace(neg_hi, neg_lo, n, dtype=torch.float64))
    elif name in ("beta", "linear_quadratic", "sgm_uniform"):
        times = t_min + (t_max - t_min) * torch.from_numpy(_time_fractions(spec, n))
    elif name in DISCRETE_SPACINGS:
        times = _discrete_times(schedule, n, name, steps_offset)
    else:
        times = schedule.t_of_level(_levels(schedule, spec, n))
    if name not in DISCRETE_SPACINGS and n > 1:  # diffusers' tables are kept ("leading" starts below t_max)
        times[0] = t_max
        if name != "sgm_uniform":
            times[-1] = t_min
    return _shifted(schedule, check_times(schedule, times), shift)


def _time_fractions(spec: Spacing, n: int) -> np.ndarray:
    """``(t_i - t_min) / (t_max - t_min)`` of the spacings defined in t, from 1 down (to 0, or 1/n)."""
    if spec.name == "beta":
        return beta_fractions(n, float(spec.option("a")), float(spec.option("b")))  # type: ignore[arg-type]
    if spec.name == "sgm_uniform":
        return np.linspace(1.0, 0.0, n + 1)[:-1]
    threshold = float(spec.option("threshold_noise"))  # type: ignore[arg-type]
    fractions = linear_quadratic_fractions(n, threshold, spec.option("linear_steps"))  # type: ignore[arg-type]
    if not np.all(np.diff(fractions) < 0):
        raise ValueError(
            f"threshold_noise: {threshold} with linear_steps={spec.option('linear_steps')} makes the "
            f"linear_quadratic times non-decreasing for {n} times; use a smaller threshold_noise"
        )
    return fractions


def _levels(schedule: NoiseSchedule, spec: Spacing, n: int) -> Tensor:
    """The noise levels (sigma/alpha, or t for flows) of the spacings defined in the level, from the noisy end."""
    level_min, level_max = float(schedule.level(schedule.t_min)), float(schedule.level(schedule.t_max))
    if spec.name == "kl_optimal":
        return torch.from_numpy(kl_optimal_levels(n, level_min, level_max))
    log_lo, log_hi = _finite_span(math.log(level_min), math.log(level_max))
    if spec.name == "karras":
        rho = float(spec.option("rho"))  # type: ignore[arg-type]
        lo_r, hi_r = math.exp(log_lo / rho), math.exp(log_hi / rho)
        return torch.linspace(hi_r, lo_r, n, dtype=torch.float64) ** rho  # EDM eq. 5
    if spec.name == "exponential":
        return torch.exp(torch.linspace(log_hi, log_lo, n, dtype=torch.float64))
    if spec.name == "polyexponential":
        rho = float(spec.option("rho"))  # type: ignore[arg-type]
        return torch.from_numpy(polyexponential_levels(n, log_lo, log_hi, rho))
    model = spec.name.removeprefix("ays_")
    log_table = np.log(loglinear_resample(AYS_LEVELS[model], n))
    bottom, top = (math.log(level) for level in AYS_RANGES[model])
    # the affine map of log level sending the model's range [bottom, top] onto the schedule's [log_lo, log_hi]
    return torch.from_numpy(np.exp(log_lo + (log_table - bottom) * (log_hi - log_lo) / (top - bottom)))


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
    if not np.isfinite(t).all():
        raise ValueError("timesteps: contain a non-finite value")
    if not (t[1:] < t[:-1]).all():
        raise ValueError(f"timesteps: must be strictly decreasing (no duplicates), got {t.tolist()}")
    tol = 1e-9 * max(1.0, abs(schedule.t_max))
    if t[0] > schedule.t_max + tol or t[-1] < schedule.t_min - tol:
        raise ValueError(
            f"timesteps: must lie in the schedule's range [{schedule.t_min}, {schedule.t_max}], "
            f"got [{float(t[-1])}, {float(t[0])}]"
        )
    return torch.from_numpy(np.clip(t, schedule.t_min, schedule.t_max))
