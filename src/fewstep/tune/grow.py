"""A tuned per-step sampler grown to more evaluations: the starts of ``fewstep.tune(..., start=tuned)``.

A per-step sampler (``solver="per_step"``) tuned at ``n`` evaluations, with model-evaluation times
``t_0 > t_1 > ... > t_{n-1}`` and a last step to sigma = 0, becomes a candidate of ``n + k`` evaluations by splitting
``k`` of its steps: the step from ``t_i`` to ``t_{i+1}`` split ``m`` times gets ``m`` more times, equally spaced in
``lambda = log(alpha / sigma)``,

    lambda_{i, j} = lambda(t_i) + j / (m + 1) * (lambda(t_{i+1}) - lambda(t_i)),    j = 1 .. m,

and each new step keeps step ``i``'s choice (its order, prediction, corrector and scale). The last step, which ends at
lambda = +inf, is not split. Every way of placing the ``k`` splits among the ``n - 1`` finite steps (a multiset:
``C(n + k - 2, k)`` candidates) is a start; ``fewstep.tune`` scores them on the calibration batch and searches from
the best.

Why: under strong guidance the few-step error is decided by the first steps, where a trajectory near the boundary
between two modes is sent to one or the other (docs/tuning.md), and the steps a smaller tuned sampler placed there
are a better start for the larger one than any fixed spacing; the split that pays is the one whose step was too long.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import numpy as np
import torch

from ..schedules import NoiseSchedule
from .tuned import TunedSampler

#: The solver a grown sampler must have been tuned with: its per-step choices are what the splits copy.
GROWN_SOLVER = "per_step"


def check_start(start: object, nfe: int, schedule: NoiseSchedule) -> TunedSampler:
    """``start`` when it can be grown to ``nfe`` evaluations on ``schedule`` (TypeError / ValueError otherwise)."""
    if not isinstance(start, TunedSampler):
        raise TypeError(f"start: need a fewstep.TunedSampler (from fewstep.tune), got {type(start).__name__}")
    if start.solver != GROWN_SOLVER:
        raise ValueError(
            f"start: grows a per-step sampler (solver {GROWN_SOLVER!r}, from method='auto' or 'search' with "
            f"solver=None), got solver {start.solver!r}"
        )
    if start.nfe >= nfe:
        raise ValueError(f"start: a sampler of fewer evaluations than nfe={nfe} is grown, got one of {start.nfe}")
    if start.nfe < 2:
        raise ValueError("start: need a sampler of at least 2 evaluations (a step to split besides the last)")
    try:
        start.check(schedule=schedule)
    except ValueError as err:
        raise ValueError(f"start: {err}") from err
    return start


def grown_starts(start: TunedSampler, nfe: int, schedule: NoiseSchedule) -> list[tuple[str, np.ndarray, list[Any]]]:
    """Every split of ``start``'s finite steps to ``nfe`` evaluations (module docstring), as (label, times,
    choices): the label names the split steps, e.g. ``"grown: steps 2, 3 split"``."""
    times = np.asarray(start.times, dtype=np.float64)
    choices = list(start.solver_options["choices"])
    lam = schedule.lambda_(torch.from_numpy(times)).numpy()
    out = []
    for split in itertools.combinations_with_replacement(range(len(times) - 1), nfe - len(times)):
        count = Counter(split)
        new_times, new_choices = [], []
        for i, t in enumerate(times):
            new_times.append(float(t))
            new_choices.append(choices[i])
            m = count.get(i, 0)
            for j in range(1, m + 1):
                inner = lam[i] + j / (m + 1) * (lam[i + 1] - lam[i])
                new_times.append(float(schedule.t_of_lambda(torch.tensor(inner, dtype=torch.float64))))
                new_choices.append(choices[i])
        label = "grown: step" + ("s " if len(split) > 1 else " ") + ", ".join(map(str, split)) + " split"
        out.append((label, np.asarray(new_times), new_choices))
    return out
