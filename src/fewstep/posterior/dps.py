"""Diffusion Posterior Sampling (Chung et al. 2023, "Diffusion Posterior Sampling for General Noisy Inverse
Problems", ICLR): the likelihood of the measurement taken at the predicted clean sample,

    grad_x log p(y | x_t)  ~  grad_x log p(y | x0_hat(x_t)) = -grad_x |y - A(x0_hat(x_t))|^2 / (2 s^2),

differentiated through the network (one backward pass per evaluation, counted in ``CallCount.backward``) and added
to the score: the rule is :class:`fewstep.guidance.LossGuidance` with the measurement's negative log-likelihood as
its loss, so the guided prediction is ``x0_hat - scale (sigma_t^2/alpha) grad_x L``. ``scale=1`` is the plug-in
likelihood itself. ``normalized=True`` takes DPS's step-size convention ``zeta_i = zeta / |y - A(x0_hat)|`` on the
squared residual instead: the loss is ``|y - A(x0_hat)|`` (whose gradient is ``grad |r|^2 / (2 |r|)``) at
``scale = 2 zeta`` (DPS's zeta: ``scale = 2 * zeta``), which also serves noiseless measurements. DPS applies its
step to the state after each ancestral step; here it moves the score, so every solver takes it. As for
``LossGuidance``, a pure-noise start (``alpha = 0``, a flow at ``t_max = 1``) is refused: give a ``t_max`` below 1 or
a scale callable that is 0 at sigma = inf.

The plug-in ``p(y | x0_hat)`` ignores the spread of ``x0 | x_t``: DPS is biased even for Gaussian data (it
over-weights the measurement at high noise); PiGDM (:mod:`fewstep.posterior.pigdm`) adds that spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..guidance.gradient import LossGuidance
from ..guidance.loss_steps import Scale, check_scale
from ..model.network import Network
from ..model.stack import Evaluation
from .checks import checked, require_measurement
from .measurement import Measurement


@dataclass(frozen=True)
class DPS:
    """DPS on ``measurement`` at ``scale`` (a number or a callable of sigma); ``normalized``: the paper's step size
    ``zeta / |y - A x0_hat|`` (module docstring). A guidance rule: ``sample(..., guidance=DPS(measurement))``."""

    measurement: Measurement
    scale: Scale = 1.0
    normalized: bool = False

    def __post_init__(self) -> None:
        require_measurement(self.measurement)
        check_scale("scale", self.scale)
        if not isinstance(self.normalized, bool):
            raise TypeError(f"normalized: must be True or False, got {self.normalized!r}")
        if not self.normalized and self.measurement.noiseless:
            raise ValueError(
                "measurement: DPS's likelihood |y - A x0|^2 / (2 s^2) needs noise_std > 0; give the measurement's "
                "noise level, or use normalized=True (the step zeta / |y - A x0_hat|) for a noiseless one"
            )

    def loss(self, x0: Tensor) -> Tensor:
        """The per-sample loss on the clean-sample prediction (module docstring)."""
        r = self.measurement.residual(x0).flatten(1)
        if self.normalized:
            return (r.square().sum(1) + torch.finfo(r.dtype).tiny).sqrt()
        return r.square().sum(1) / (2.0 * self.measurement.noise_std**2)

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        rule = LossGuidance(self.loss, scale=self.scale, through_network=True)
        return checked(self.measurement, rule.wrap_prediction(network, needs_eps))
