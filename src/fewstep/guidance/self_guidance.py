"""Self-guidance of an unconditional model on observed entries (Kollovieh et al. 2023, "Predict, Refine,
Synthesize: Self-Guiding Diffusion Models for Probabilistic Time Series Forecasting", TSDiff, Sec. 3.2): the
unconditional model is conditioned at inference on the observed part ``y`` of a sample (a time series' past, known
pixels) by the score of ``p(y | x_t)``, taken at the one-step clean estimate ``x0_hat(x_t)``:

    grad_x log p_t(x) + s grad_x log p(y | x0_hat(x)),

with two likelihoods for ``y``: mean-square self-guidance, ``p(y | x0) = N(y; m x0, I)`` on the observed entries
``m``, i.e. the loss ``|m (y - x0)|^2 / 2``; and quantile self-guidance, the asymmetric Laplace likelihood of the
``kappa``-quantile, i.e. the pinball loss ``sum_m max(kappa r, (kappa - 1) r)`` with ``r = y - x0`` (the loss whose
minimiser is the ``kappa``-quantile). :class:`SelfGuidance` is :class:`~fewstep.guidance.LossGuidance` with that
loss, at ``scale = s``: ``eps <- eps + s sigma_t grad_x L(x0_hat(x))`` through the network (one backward pass per
evaluation; ``through_network=False`` replaces the network's Jacobian by that of Gaussian data of scale
``data_std``, with no backward pass).

For a Gaussian observation with noise ``r`` the mean-square likelihood is DPS's plug-in likelihood at ``s = 1 /
r^2`` (:class:`fewstep.posterior.DPS`); for Gaussian data ``N(m, S^2 I)`` the scale ``r^2 / (C + r^2)`` of
:mod:`~fewstep.guidance.gradient` (with ``1 / r^2`` from the loss's normalisation: ``s = 1 / (C + r^2)``) makes the
guided prediction the exact posterior's (through the network, or without it at ``data_std = S``).
``python benchmarks/guidance_methods.py`` measures it against the exact conditional law of a Gaussian mixture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction
from .gradient import LossGuidance
from .loss_steps import Scale, check_scale, require_autograd
from .rule_checks import finite_number
from .state_moves import require_mask

if TYPE_CHECKING:  # the posterior package builds on the rules: no import back at run time
    from ..posterior.measurement import Mask


@dataclass(frozen=True)
class ObservationLoss:
    """The per-sample loss of ``x0`` against the observed entries of ``measurement``: ``|m (y - x0)|^2 / 2``, or the
    pinball loss of the ``quantile`` (module docstring)."""

    measurement: Mask
    quantile: float | None = None

    def __call__(self, x0: Tensor) -> Tensor:
        r = self.measurement.residual(x0).flatten(1)  # m (y - x0)
        if self.quantile is None:
            return r.square().sum(1) / 2
        k = float(self.quantile)
        return (r * k).maximum(r * (k - 1.0)).sum(1)


@dataclass(frozen=True)
class SelfGuidance:
    """TSDiff's self-guidance (module docstring) on the observed entries of ``measurement`` (a
    :class:`fewstep.posterior.Mask`; its ``noise_std`` is not used: the likelihood's spread is ``1 / scale``) at
    ``scale`` (a number or a callable of sigma), mean-square (``quantile=None``) or quantile (``quantile`` in
    (0, 1)); ``through_network`` and ``data_std`` as for :class:`~fewstep.guidance.LossGuidance`."""

    measurement: Mask
    scale: Scale = 1.0
    quantile: float | None = None
    through_network: bool = True
    data_std: float = 1.0

    def __post_init__(self) -> None:
        require_mask("measurement", self.measurement, "the observed entries")
        check_scale("scale", self.scale)
        if self.quantile is not None:
            q = finite_number("quantile", self.quantile)
            if not 0.0 < q < 1.0:
                raise ValueError(f"quantile: must be in (0, 1) (0.5: the median), or None for mean-square, got {q}")

    @property
    def loss(self) -> Callable[[Tensor], Tensor]:
        return ObservationLoss(self.measurement, self.quantile)

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        require_autograd(type(self).__name__)
        rule = LossGuidance(self.loss, self.scale, self.through_network, data_std=self.data_std)
        inner = rule.wrap_prediction(network, needs_eps)
        checked: list[bool] = []

        def evaluate(x: Tensor, p: Point) -> Prediction:
            if not checked:
                self.measurement.check(x)
                checked.append(True)
            return inner(x, p)

        return evaluate
