"""Cyclic sampling (Wang et al. 2024, "Diffusion in Diffusion: Cyclic One-Way Diffusion for Text-Vision-Conditioned
Generation", COW's cycles; the same jump back as RePaint's resampling, Lugmayr et al. 2022): a run over given times
in which a stretch is repeated, the state noised back up by the forward process before each repetition,

    x_i = (alpha_i / alpha_j) x_j + sqrt(sigma_i^2 - (alpha_i sigma_j / alpha_j)^2) z,       z ~ N(0, I).

Each stretch is one :func:`fewstep.sample` run, so any solver and rule run in it (with
:class:`~fewstep.guidance.OneWayDiffusion` this is COW's sampler); its network calls add up in ``calls``. This module
sits above the sampler (``from fewstep.guidance.cyclic import cyclic_sample``); the rules' package does not import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ..model.calls import CallCount
from ..sampling import sample
from ..schedules import NoiseSchedule
from .state_moves import check_generator, drawer


def cyclic_sample(
    model: Any,
    noise: Tensor,
    schedule: NoiseSchedule,
    times: Sequence[float] | Tensor,
    *,
    cycle: tuple[int, int],
    repeats: int,
    generator: torch.Generator | None = None,
    calls: CallCount | None = None,
    **sample_kwargs: Any,
) -> Tensor:
    """:func:`fewstep.sample` over the evaluation ``times`` (decreasing, ending with the step to the data) with the
    stretch ``times[i] -> times[j]`` (``cycle = (i, j)``, ``0 <= i < j < len(times)``) run ``1 + repeats`` times, the
    state noised from ``t_j`` back to ``t_i`` before each repetition (module docstring). ``sample_kwargs`` go to
    every stretch (``solver``, ``guidance``, ``model_kwargs``, ...); ``generator`` draws the re-noising."""
    ts = [float(t) for t in (times.tolist() if isinstance(times, Tensor) else times)]
    i, j = _check_cycle(cycle, len(ts))
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 0:
        raise ValueError(f"repeats: must be an integer >= 0 (0: no cycle), got {repeats!r}")
    check_generator(generator)
    for key in ("spacing", "nfe", "steps", "final"):
        if key in sample_kwargs:
            raise TypeError(f"{key}: cyclic_sample sets it for each stretch from times; leave it out")
    draw = drawer(generator)
    total = calls if calls is not None else CallCount()

    def run(x: Tensor, part: list[float], final: Literal["zero", "t_min"]) -> Tensor:
        return sample(model, x, schedule, spacing=part, final=final, calls=total, **sample_kwargs)

    x = run(noise, ts[: j + 1], "t_min")
    a_i, s_i = float(schedule.alpha(ts[i])), float(schedule.sigma(ts[i]))
    a_j, s_j = float(schedule.alpha(ts[j])), float(schedule.sigma(ts[j]))
    ratio = a_i / a_j
    up = math.sqrt(max(s_i**2 - (ratio * s_j) ** 2, 0.0))
    for _ in range(repeats):
        x = run(x * ratio + draw(x) * up, ts[i : j + 1], "t_min")
    return run(x, ts[j:], "zero")


def _check_cycle(cycle: object, n: int) -> tuple[int, int]:
    if not isinstance(cycle, tuple | list) or len(cycle) != 2 or not all(isinstance(k, int) for k in cycle):
        raise TypeError(f"cycle: must be a pair (i, j) of indices into times, got {cycle!r}")
    i, j = int(cycle[0]), int(cycle[1])
    if not 0 <= i < j < n:
        raise ValueError(f"cycle: need 0 <= i < j < len(times) = {n}, got ({i}, {j}) (e.g. (1, {max(2, n // 2)}))")
    return i, j
