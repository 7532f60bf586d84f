"""Step skipping by a measured criterion: skip the network while its output barely changes.

Ye et al. 2024, "Training-free Adaptive Diffusion with Bounded Difference Approximation Strategy" (AdaptiveDiffusion)
and "Generate Images Like Painters" skip the network where consecutive outputs differ little, reusing (or
extrapolating) the last ones. Here, after each real call ``k`` (from the second on) the layer measures

    delta_k = max_b ||y_k - y_{k-1}||_b / ||y_k||_b,

the largest relative change over the batch of the kept prediction ``y`` (``x0_hat`` or ``eps_hat``) between the last
two real calls; while ``delta_k < threshold`` the next requests are answered by extrapolation through the last
``order`` real outputs (as :class:`~fewstep.reducers.ABCache`), at most ``max_skips`` in a row, then the network is
called again. The first ``warmup`` requests are always real.

The decision depends on the outputs, so it reads one number from the device per real call (a host-device
synchronisation); the plan bounds the run from both sides before it (:meth:`SkipCache.min_network`,
:meth:`SkipCache.max_network`), and ``counts`` reports what it spent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..model import CallCount
from ..model.point import Point
from ..model.stack import Evaluation, Prediction
from .counts import (
    Counter,
    Output,
    ReducerCounts,
    check_int,
    check_quantity,
    check_variable,
    extrapolate,
    from_quantity,
    keep,
    quantity_of,
)

#: ``criterion(x, point, answer, kept outputs) -> bool``: after a real call, whether the next requests may be skipped.
Criterion = Callable[[Tensor, Point, Prediction, list[Output]], bool]


def relative_change(new: Tensor, old: Tensor) -> float:
    """``max_b ||new_b - old_b|| / ||new_b||`` over the batch (one host read)."""
    diff = (new - old).flatten(1).norm(dim=1)
    scale = new.flatten(1).norm(dim=1).clamp_min(torch.finfo(new.dtype).tiny)
    return float((diff / scale).max())


@dataclass
class SkipCache:
    """An evaluation layer (``fewstep.sample(..., wrappers=[SkipCache(threshold=0.05)])``).

    Args:
        threshold: skip while the relative change of the output between the last two real calls is below it.
        max_skips: the most requests answered in a row without the network.
        order: outputs the substitute is extrapolated through (1 reuses the last output; default 2).
        warmup: the first requests, always real (default ``max(order, 2)``).
        variable, quantity: as :class:`~fewstep.reducers.ABCache`.
    """

    threshold: float = 0.05
    max_skips: int = 1
    order: int = 2
    warmup: int | None = None
    variable: str = "lambda"
    quantity: str = "x0"
    counts: ReducerCounts = field(default_factory=ReducerCounts, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise TypeError(f"threshold: must be a number, got {type(self.threshold).__name__}")
        if not self.threshold >= 0:  # inf skips whenever the cap allows
            raise ValueError(f"threshold: must be >= 0 (e.g. 0.05), got {self.threshold}")
        check_int(self.max_skips, "max_skips", 0)
        check_int(self.order, "order", 1)
        if self.warmup is None:
            self.warmup = max(self.order, 2)
        check_int(self.warmup, "warmup", 2)
        check_variable(self.variable)
        check_quantity(self.quantity)

    def max_network(self, requests: int) -> int:
        """The most network calls of a run of ``requests`` requests: all of them (nothing measured skips)."""
        return requests

    def min_network(self, requests: int) -> int:
        """The fewest: the warm-up, then ``max_skips`` substituted requests before each real one."""
        warm = min(int(self.warmup), requests)  # type: ignore[arg-type]
        return warm + (requests - warm) // (self.max_skips + 1)

    def criterion(self, needs_eps: bool) -> Criterion:
        """A fresh test for one run, called after each real call with ``(x, point, answer, kept outputs)``: whether
        the next requests may be substituted (here: the relative change of the kept output is below ``threshold``)."""
        threshold = self.threshold

        def smooth(x: Tensor, p: Point, answer: Prediction, history: list[Output]) -> bool:
            return len(history) >= 2 and relative_change(history[-1].value, history[-2].value) < threshold

        return smooth

    def wrap(self, inner: Evaluation, needs_eps: bool, calls: CallCount) -> Evaluation:
        counter = Counter(calls)
        self.counts = counter.counts
        history: list[Output] = []
        size = max(self.order, 2)
        max_skips, warm = self.max_skips, int(self.warmup)  # type: ignore[arg-type]
        variable, quantity, order = self.variable, self.quantity, self.order
        state = {"skips": 0, "smooth": False}
        smooth = self.criterion(needs_eps)

        def evaluate(x: Tensor, p: Point) -> Prediction:
            if counter.counts.requests >= warm and state["smooth"] and state["skips"] < max_skips:
                state["skips"] += 1
                counter.substituted()
                return from_quantity(x, p, quantity, extrapolate(history[-order:], p, variable), needs_eps)
            counter.real()
            answer = inner(x, p)
            keep(history, p, quantity_of(answer, x, p, quantity), size)
            state["skips"] = 0
            state["smooth"] = smooth(x, p, answer, history)
            return answer

        return evaluate
