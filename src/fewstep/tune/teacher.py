"""The teacher: a high-NFE solve of the model from the calibration noise, whose answers the optimisers match.

DPM-Solver-3 (singlestep, third order; Lu et al. 2022) on a fine grid of ``grid`` times uniform in logSNR
(:mod:`fewstep.tune.params`' coordinate, t_max .. t_min) and a last step to sigma = 0: ``3 grid`` network calls
(one batched call per evaluation), each counted in the tuning budget. Besides the final sample it keeps the state
at every grid time, the trajectory GITS measures its jump costs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model import Denoiser
from .budget import Budget
from .params import LogSNRIncrements

TEACHER_SOLVER = "dpm_solver_3"


@dataclass(frozen=True)
class Teacher:
    """``final``: the teacher's samples; ``grid`` (G,) times and ``states`` (G, *noise.shape) the trajectory at
    them (``states[0]`` is the noise); ``calls`` the network calls it spent; ``weights``: the samples' weights in
    every error measured against it where the noise is a stratified batch (:func:`fewstep.tune.strata.stratify`;
    they sum to 1), None for equal weights."""

    final: Tensor
    grid: np.ndarray
    states: Tensor
    calls: int
    weights: Tensor | None = None

    def describe(self) -> dict[str, Any]:
        """What the teacher was, for :class:`~fewstep.tune.TunedSampler`."""
        return {
            "description": f"{TEACHER_SOLVER}, {len(self.grid)} logSNR-uniform times and a step to sigma = 0",
            "calls": self.calls,
        }


def logsnr_grid(denoiser: Denoiser, size: int) -> np.ndarray:
    """``size`` times uniform in -lambda from t_max to t_min (the span of :class:`LogSNRIncrements`)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"grid: must be an integer >= 2, got {size!r}")
    z = np.concatenate([np.zeros(size - 1), [-60.0]])  # equal increments, a slack of e^-60 of the span
    return LogSNRIncrements(denoiser.schedule, size).times(z)


def solve_teacher(denoiser: Denoiser, noise: Tensor, budget: Budget, grid: int = 100) -> Teacher:
    """The teacher's solve from ``noise`` (module docstring), its calls taken from ``budget``."""
    from ..sampling import sample

    times = logsnr_grid(denoiser, grid)
    states: list[Tensor] = [noise.detach().clone()]

    def record(info: dict[str, Any]) -> None:
        if info["t_next"] is not None:
            states.append(info["x"].detach().clone())

    before = budget.spent
    slv_nfe = 3 * grid  # singlestep third order: 3 per step; the first (from alpha = 0) and last steps cost 1 each
    budget.reserve(slv_nfe)
    with torch.no_grad():
        final = sample(
            denoiser, noise, solver=TEACHER_SOLVER, spacing=torch.from_numpy(times), callback=record,
            calls=budget.calls, progress=False,
        )  # fmt: skip
    return Teacher(final, times, torch.stack(states), budget.spent - before)
