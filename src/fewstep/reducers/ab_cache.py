"""AB-Cache: answer some requests by Adams-Bashforth extrapolation of the previous real outputs.

Yu et al. 2025, "AB-Cache: Training-Free Acceleration of Diffusion Models via Adams-Bashforth Cached Feature
Reuse": consecutive model outputs along a sampling trajectory are smooth in time, so the output at the next
request is well predicted by the Adams-Bashforth (Lagrange) extrapolation through the last ``order`` real outputs,

    y(u) ~ sum_{j=1..m} l_j(u) y(u_j),   l_j(u) = prod_{k != j} (u - u_k) / (u_j - u_k),

in ``u = lambda = log(alpha/sigma)`` (or in t), with ``y`` the data prediction ``x0_hat`` (or ``eps_hat``). The
other prediction follows from ``x = alpha x0 + sigma eps`` at the request's own state, so a solver sees a consistent
pair. Which requests are real is fixed before the run (:meth:`ABCache.is_real`): the first ``warmup`` requests, then
one in every ``every``; :meth:`ABCache.max_network` is the plan's bound on network calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class ABCache:
    """An evaluation layer (``fewstep.sample(..., wrappers=[ABCache(every=2)])``).

    Args:
        every: one real request in ``every`` after the warm-up (1: every request real, the plain run).
        order: outputs the extrapolation goes through (1 reuses the last output, 2 is linear, 3 quadratic).
        warmup: the first requests, always real (default ``order``: the history the extrapolation needs).
        variable: ``"lambda"`` (the default) or ``"t"``, the variable the outputs are extrapolated in.
        quantity: ``"x0"`` (the default) or ``"eps"``, the prediction that is extrapolated.

    Its substituted requests are added to the run's ``calls.substituted``.

    After a run, ``counts`` holds its :class:`~fewstep.reducers.ReducerCounts`.
    """

    every: int = 2
    order: int = 2
    warmup: int | None = None
    variable: str = "lambda"
    quantity: str = "x0"
    counts: ReducerCounts = field(default_factory=ReducerCounts, init=False)

    def __post_init__(self) -> None:
        check_int(self.every, "every", 1)
        check_int(self.order, "order", 1)
        if self.warmup is None:
            self.warmup = self.order
        check_int(self.warmup, "warmup", 1)
        check_variable(self.variable)
        check_quantity(self.quantity)

    def is_real(self, i: int) -> bool:
        """Whether request ``i`` (from 0) of a run calls the network."""
        warm = int(self.warmup)  # type: ignore[arg-type]
        return i < warm or (i - warm) % self.every == self.every - 1

    def max_network(self, requests: int) -> int:
        """The network calls of a run of ``requests`` requests (known before the run)."""
        return sum(self.is_real(i) for i in range(requests))

    def wrap(self, inner: Evaluation, needs_eps: bool, calls: CallCount) -> Evaluation:
        counter = Counter(calls)
        self.counts = counter.counts
        history: list[Output] = []
        real = self.is_real
        order, variable, quantity = self.order, self.variable, self.quantity

        def evaluate(x: Tensor, p: Point) -> Prediction:
            if real(counter.counts.requests):
                counter.real()
                answer = inner(x, p)
                keep(history, p, quantity_of(answer, x, p, quantity), order)
                return answer
            counter.substituted()
            return from_quantity(x, p, quantity, extrapolate(history, p, variable), needs_eps)

        return evaluate
