"""The model-call stack of a run: the layers between a solver's request ``(x, point)`` and the network.

From the inside out:

1. :class:`~fewstep.model.network.Network`: ``model(x, time, **kwargs)``, one counted call (:class:`CallCount`),
   dtype casts, shape and finiteness checks.
2. A guidance rule (:mod:`fewstep.guidance`), on the network's raw output: ``output(x, time, t)``.
3. The conversion of the output to ``(x0_hat, eps_hat)`` at the point (:class:`Converted`), or the Time-Shift
   Sampler's per-sample lookup (:mod:`fewstep.model.time_shift`), which calls the output at a shifted time.
4. Layers on ``(x0_hat, eps_hat)``: thresholding (:mod:`fewstep.model.threshold`), then any
   :class:`EvaluationWrapper` given to the run (a cache that skips calls, a data-consistency step, ...).

The solver sees only the outermost :data:`Evaluation`; no solver knows which layers there are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from ..finite import all_finite
from .calls import CallCount
from .network import Network, NonFiniteModelOutput
from .point import Point

#: ``(x0_hat, eps_hat)``; ``eps_hat`` is None where the solver does not need it (data-prediction solvers).
Prediction = tuple[Tensor, Tensor | None]
#: ``evaluate(x, point) -> (x0_hat, eps_hat)``: what a solver's request is answered with.
Evaluation = Callable[[Tensor, Point], Prediction]
#: ``output(x, time, t)``: the (guided) network output at state ``x``, model time ``time``, schedule time ``t``.
ModelOutput = Callable[[Tensor, Tensor, float], Tensor]


class EvaluationWrapper(Protocol):
    """A layer on ``(x0_hat, eps_hat)``: ``wrap(inner, needs_eps, calls)`` returns the evaluation that replaces
    ``inner`` for one run. ``calls`` is the run's :class:`CallCount`: a layer that answers a request without the
    network below it (a cache, an extrapolation, another model) adds one to ``calls.substituted``; the run adds the
    network calls and requests itself."""

    def wrap(self, inner: Evaluation, needs_eps: bool, calls: CallCount) -> Evaluation: ...


class Converted:
    """``(x0_hat, eps_hat)`` from the output at the point's own model time, by the point's affine map
    ``x0 = x0_x x + x0_out out``, ``eps = eps_x x + eps_out out`` (:mod:`fewstep.predictions`)."""

    def __init__(self, output: ModelOutput, needs_eps: bool):
        self.output, self.needs_eps = output, needs_eps

    def __call__(self, x: Tensor, p: Point) -> Prediction:
        return convert(x, self.output(x, p.model_time, p.t), p, self.needs_eps)


def convert(x: Tensor, out: Tensor, p: Point, eps: bool) -> Prediction:
    """``(x0_hat, eps_hat)`` from a network output ``out`` at ``x`` and point ``p`` (``eps_hat`` None unless asked)."""
    a = p.affine
    return affine(x, a.x0_x, out, a.x0_out), (affine(x, a.eps_x, out, a.eps_out) if eps else None)


def affine(x: Tensor, cx: float, out: Tensor, co: float) -> Tensor:
    """``cx x + co out``: ``out`` itself for the identity (the solvers never write into it), else a new tensor in
    one or two operations."""
    if cx == 0.0:
        return out if co == 1.0 else out * co
    return (x * cx).add_(out, alpha=co)


@dataclass
class ModelStack:
    """A run's stack: its ``outer`` layer and the ``network`` at its bottom (for the counts and deferred checks).
    :meth:`evaluate` answers a solver's request and counts it."""

    network: Network
    outer: Evaluation

    def evaluate(self, x: Tensor, p: Point) -> Prediction:
        """One requested evaluation at ``(x, p)``: ``(x0_hat, eps_hat)``."""
        self.network.calls.requests += 1
        return self.outer(x, p)

    def finish(self, result: Tensor | None = None) -> None:
        """After the run: raise for a non-finite output whose check was deferred (accelerators), and, when outputs
        were not checked one by one (``check_finite="end"``), for a non-finite ``result``."""
        self.network.raise_if_nonfinite()
        if result is not None and not self.network.check_each and not all_finite(result):
            raise NonFiniteModelOutput(
                f"sample: the run's result holds NaN/inf after {self.network.calls.network} network calls (a model "
                "output or a solver step was not finite); check_finite='each' checks every model output and names "
                "the first non-finite evaluation and its time"
            )
