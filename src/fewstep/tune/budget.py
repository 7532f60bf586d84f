"""The network-call budget of a tuning run and the error it minimises.

Every network call made while tuning is counted in one :class:`~fewstep.model.CallCount` (a batched call on the
calibration batch is one call; a backward pass through the network counts as one). :class:`Objective` runs the
solver with given times on the calibration noise and measures the RMSE against the teacher's answer; it refuses
(:class:`BudgetExhausted`) a run that would take the count past the budget.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model import CallCount, Denoiser


class BudgetExhausted(Exception):
    """The next run would spend more network calls than the tuning budget allows."""


@dataclass
class Budget:
    """``limit`` network calls in all; ``calls`` counts those spent."""

    limit: int
    calls: CallCount = field(default_factory=CallCount)

    @property
    def spent(self) -> int:
        return self.calls.nfe

    @property
    def left(self) -> int:
        return self.limit - self.spent

    def reserve(self, n: int) -> None:
        """Raise :class:`BudgetExhausted` unless ``n`` more calls fit."""
        if self.spent + n > self.limit:
            raise BudgetExhausted(f"{n} more calls would exceed the budget of {self.limit} ({self.spent} spent)")


def square_errors(x: Tensor, y: Tensor) -> Tensor:
    """Each sample's mean square difference over its entries, (B,) float64."""
    return (x.to(torch.float64) - y.to(torch.float64)).reshape(x.shape[0], -1).pow(2).mean(dim=1)


def weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """``sum_i w_i v_i`` with the weights of a stratified batch (they sum to 1), the plain mean without."""
    return values.mean() if weights is None else (weights.to(values) * values).sum()


def rmse_of(squares: Tensor, weights: Tensor | None = None) -> float:
    """The RMSE from each sample's mean square error (:func:`square_errors`): ``sqrt(sum_i w_i squares_i)``,
    ``w_i = 1 / B`` without ``weights``."""
    return float(torch.sqrt(weighted_mean(squares, weights)))


def mean_distance_of(squares: Tensor, weights: Tensor | None = None) -> float:
    """The mean over samples of each sample's RMS difference, ``sum_i w_i sqrt(squares_i)``: less swayed than the
    RMSE by the few samples that land in another mode, which a handful of times cannot fix for every noise."""
    return float(weighted_mean(torch.sqrt(squares), weights))


def rmse(x: Tensor, y: Tensor, weights: Tensor | None = None) -> float:
    """Root mean square difference over every entry, each sample weighted by ``weights`` where given
    (:func:`rmse_of`)."""
    return rmse_of(square_errors(x, y), weights)


#: The losses the optimisers may minimise, each of the per-sample mean square errors and the weights.
LOSSES = {"rmse": rmse_of, "mean_distance": mean_distance_of}


@dataclass
class Objective:
    """``error(times)``: the ``loss`` (a name of :data:`LOSSES`) of ``solver`` at ``times`` on ``noise`` against
    ``target`` (the teacher's answer), each run ``nfe`` calls from ``budget``. ``best`` keeps the lowest loss seen and
    its times, ``best_rmse`` that run's RMSE."""

    denoiser: Denoiser
    solver: str
    options: dict[str, Any]
    nfe: int
    noise: Tensor
    target: Tensor
    budget: Budget
    best: tuple[float, np.ndarray | None] = (math.inf, None)
    runs: int = 0
    loss: str = "rmse"
    best_rmse: float = math.inf
    #: the per-sample weights of a stratified calibration batch (:func:`fewstep.tune.strata.stratify`), or None
    weights: Tensor | None = None
    #: each sample's mean square error in the last run (:func:`square_errors`)
    squares: Tensor | None = None

    def run(self, times: np.ndarray, noise: Tensor | None = None) -> Tensor:
        """The solver's sample from ``noise`` (default: the calibration noise) at ``times``."""
        from ..sampling import sample  # sampling imports this package lazily for solver=TunedSampler

        self.budget.reserve(self.nfe)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a diverging trial is scored, not reported
            return sample(
                self.denoiser, self.noise if noise is None else noise, solver=self.solver, nfe=self.nfe,
                spacing=torch.from_numpy(np.ascontiguousarray(times)), calls=self.budget.calls, progress=False,
                **self.options,
            )  # fmt: skip

    def error(self, times: np.ndarray) -> float:
        """The loss against the teacher (inf for a non-finite sample)."""
        self.squares = square_errors(self.run(times), self.target)
        value = LOSSES[self.loss](self.squares, self.weights)
        value = value if math.isfinite(value) else math.inf
        self.runs += 1
        if value < self.best[0]:
            self.best = (value, np.array(times, dtype=np.float64))
            self.best_rmse = rmse_of(self.squares, self.weights)
        return value
