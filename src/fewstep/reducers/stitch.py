"""T-Stitch: a small model for the early (noisy) requests, the large one for the late.

Pan et al. 2024, "T-Stitch: Accelerating Sampling in Pre-Trained Diffusion Models with Trajectory Stitching": at
high noise the denoisers of a small and a large model trained on the same data nearly agree (both are close to the
data's Gaussian approximation), so the first part of the trajectory can be run with the cheaper model. Requests at
times ``t >= t_switch`` go to ``small`` (a :class:`~fewstep.Denoiser` for the same schedule, with its own
prediction type and time input), the others to the run's own model. Which model answers which request is fixed by
the times, so the plan is known before the run; ``counts.substituted`` are the small model's requests, and
``small_calls`` counts its network calls (a :class:`~fewstep.model.CallCount`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

from ..model import CallCount, Denoiser
from ..model.point import Point
from ..model.stack import Evaluation, Prediction
from .counts import Counter, ReducerCounts


@dataclass
class TStitch:
    """An evaluation layer (``fewstep.sample(large, ..., wrappers=[TStitch(small, t_switch=0.5)])``).

    Args:
        small: the cheap model as a :class:`~fewstep.Denoiser` on the run's schedule.
        t_switch: requests at schedule times ``t >= t_switch`` go to ``small``.

    The small model's requests are added to the run's ``calls.substituted``.
    """

    small: Denoiser
    t_switch: float
    counts: ReducerCounts = field(default_factory=ReducerCounts, init=False)
    small_calls: CallCount = field(default_factory=CallCount, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.small, Denoiser):
            raise TypeError(
                f"small: must be a fewstep.Denoiser (e.g. Denoiser(model, schedule)), got {type(self.small).__name__}"
            )
        if isinstance(self.t_switch, bool) or not isinstance(self.t_switch, int | float):
            raise TypeError(f"t_switch: must be a schedule time (a number), got {type(self.t_switch).__name__}")
        if not math.isfinite(self.t_switch):
            raise ValueError(f"t_switch: must be finite, got {self.t_switch}")

    def small_requests(self, times: list[float]) -> int:
        """How many of the requests at ``times`` the small model answers (known before the run)."""
        return sum(t >= self.t_switch for t in times)

    def wrap(self, inner: Evaluation, needs_eps: bool, calls: CallCount) -> Evaluation:
        counter = Counter(calls)
        self.counts = counter.counts
        self.small_calls = CallCount()
        small = self.small.stack(self.small_calls, needs_eps, label="t_stitch small").outer
        points: dict[float, Point] = {}
        t_switch, denoiser = self.t_switch, self.small

        def evaluate(x: Tensor, p: Point) -> Prediction:
            if p.t < t_switch:
                counter.real()
                return inner(x, p)
            counter.substituted()
            q = points.get(p.t)
            if q is None:  # the small model's own time input and conversion at this time, once per time
                q = points[p.t] = denoiser.point(p.t, x.shape[0], x.device, x.dtype)
            self.small_calls.requests += 1
            return small(x, q)

        return evaluate
