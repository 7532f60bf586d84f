"""``ReducerCounts``: what a call-reducing layer did in its last run, and the shared bookkeeping of the layers.

Every layer of :mod:`fewstep.reducers` answers each request it sees either by the model below it (a *network*
request) or by something cheaper (a *substituted* one: an extrapolation, a reused output, another model), so
``network + substituted == requests`` after every run. A layer adds its substituted requests to the run's
:class:`~fewstep.model.CallCount` (``calls.substituted``, handed to it by ``wrap``) as they happen; the run adds its
network calls and requests when it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..model import CallCount
from ..model.point import Point
from ..solvers.frame import lagrange_basis

VARIABLES = ("lambda", "t")


@dataclass
class ReducerCounts:
    """Requests a layer saw in its last run, split into those passed to the model below and those it answered."""

    requests: int = 0
    network: int = 0
    substituted: int = 0


class Counter:
    """The counts of one run of a layer, mirrored into the run's :class:`~fewstep.model.CallCount`."""

    def __init__(self, calls: CallCount):
        self.counts, self.calls = ReducerCounts(), calls

    def real(self) -> None:
        self.counts.requests += 1
        self.counts.network += 1

    def substituted(self) -> None:
        self.counts.requests += 1
        self.counts.substituted += 1
        self.calls.substituted += 1


def check_int(value: object, name: str, low: int) -> int:
    """An integer option ``>= low`` (ValueError naming it otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
    return int(value)


def check_variable(variable: str) -> str:
    if variable not in VARIABLES:
        raise ValueError(f"variable: choose 'lambda' or 't', got {variable!r} (lambda = log(alpha/sigma) is usual)")
    return variable


@dataclass
class Output:
    """A real output kept for extrapolation: its time, lambda and value."""

    t: float
    lam: float
    value: Tensor


def extrapolate(history: Sequence[Output], p: Point, variable: str) -> Tensor:
    """The Lagrange polynomial through the kept outputs, in ``variable`` (lambda, or t where a lambda is infinite),
    evaluated at the point ``p``: ``sum_j l_j(u_p) y_j``, the Adams-Bashforth extrapolation of past outputs (with one
    output, that output itself). The kept outputs are at distinct times (:func:`keep`)."""
    if len(history) == 1:
        return history[0].value
    use_lam = variable == "lambda" and all(np.isfinite(h.lam) for h in history) and np.isfinite(p.lam)
    nodes = [h.lam if use_lam else h.t for h in history]
    weights = lagrange_basis(nodes, np.array(p.lam if use_lam else p.t)).tolist()
    out = history[0].value * weights[0]
    for w, h in zip(weights[1:], history[1:], strict=True):
        out.add_(h.value, alpha=w)
    return out


def keep(history: list[Output], p: Point, value: Tensor, size: int) -> None:
    """Append the output at ``p`` (replacing any kept one at the same time: a corrector's second request at a node,
    or a solver that comes back to a time it evaluated before, as Heun++ does), keeping the last ``size``."""
    history[:] = [h for h in history if h.t != p.t]
    history.append(Output(p.t, p.lam, value))
    del history[:-size]


QUANTITIES = ("x0", "eps")


def check_quantity(quantity: str) -> str:
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity: choose 'x0' or 'eps', got {quantity!r} (x0, the data prediction, is usual)")
    return quantity


def from_quantity(x: Tensor, p: Point, quantity: str, value: Tensor, needs_eps: bool) -> tuple[Tensor, Tensor | None]:
    """``(x0_hat, eps_hat)`` at ``(x, p)`` from an estimate of one of them, by ``x = alpha x0 + sigma eps``."""
    if quantity == "x0":
        return value, ((x - p.alpha * value) / p.sigma if needs_eps else None)
    return (x - p.sigma * value) / p.alpha, value


def quantity_of(prediction: tuple[Tensor, Tensor | None], x: Tensor, p: Point, quantity: str) -> Tensor:
    """The kept quantity of an answer (eps from x0 where the layer below did not compute it)."""
    x0, eps = prediction
    if quantity == "x0":
        return x0
    return eps if eps is not None else (x - p.alpha * x0) / p.sigma
