"""Pseudoinverse-Guided Diffusion Models (Song, Vahdat, Mardani & Kautz 2023, "Pseudoinverse-Guided Diffusion
Models for Inverse Problems", ICLR): ``x0 | x_t`` taken as ``N(x0_hat, r_t^2 I)``, so that for a linear
measurement ``y = A x0 + n``, ``n ~ N(0, s^2 I)``,

    p(y | x_t) ~ N(y; A x0_hat, r_t^2 A A^T + s^2 I),
    grad_x log p(y | x_t) ~ (d x0_hat / d x)^T A^T (r_t^2 A A^T + s^2 I)^{-1} (y - A x0_hat),

a vector-Jacobian product through the network (one backward pass per evaluation, counted in ``CallCount.backward``).
``r_t^2 = S^2 sigma^2 / (S^2 + sigma^2)`` with ``sigma = sigma_t / alpha_t`` and ``S = data_std`` (the paper's
``sigma^2 / (1 + sigma^2)`` for data of unit variance): the variance of ``x0 | x_t`` for Gaussian data of scale
``S``. The guidance moves the score, i.e. ``x0_hat <- x0_hat + scale (sigma_t^2/alpha) grad_x log p(y | x_t)``.

Exactness: for Gaussian data ``N(m, S^2 I)`` both approximations hold exactly (``x0 | x_t`` is ``N(x0_hat, r_t^2 I)``
and ``d x0_hat/dx = alpha r_t^2 / sigma_t^2``), so the guided score is the score of ``p_t(x | y)`` and the guided
sample is the posterior's (up to the solver's error), and the move is the Kalman update
``x0_hat + r_t^2 A^T (r_t^2 A A^T + s^2 I)^{-1} (y - A x0_hat)``. ``through_network=False`` uses that Gaussian
Jacobian instead of the network's (no backward pass: a step on the prediction, exact for Gaussian data of scale
``S``); at ``alpha = 0`` (pure noise) it is always used (``sigma_t^2/alpha`` is infinite, the Jacobian 0).

The inverse is exact for a :class:`Mask` and a :class:`Linear` matrix and by conjugate gradients for an
:class:`Operator` (:mod:`fewstep.posterior.linalg`); non-linear measurements are refused. Noiseless measurements are
allowed (``r_t^2 > 0`` at every noise level above 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..guidance.loss_steps import Scale, Where, check_scale, posterior_variance, require_autograd, scale_at, shifted
from ..guidance.rule_checks import finite_number
from ..guidance.scale_schedule import noise_level
from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction, convert
from .checks import checked, require_measurement
from .linalg import gaussian_step, require_linear
from .measurement import Measurement


@dataclass(frozen=True)
class PiGDM:
    """PiGDM on a linear ``measurement`` at ``scale`` (a number or a callable of sigma), with the data scale
    ``data_std`` of ``r_t``; ``through_network``: the network's Jacobian (exact step) or the Gaussian one (module
    docstring). A guidance rule: ``sample(..., guidance=PiGDM(measurement))``."""

    measurement: Measurement
    scale: Scale = 1.0
    data_std: float = 1.0
    through_network: bool = True

    def __post_init__(self) -> None:
        require_linear("measurement", require_measurement(self.measurement))
        check_scale("scale", self.scale)
        if finite_number("data_std", self.data_std) <= 0:
            raise ValueError(f"data_std: must be > 0 (the data's scale, 1 for normalised data), got {self.data_std}")
        if not isinstance(self.through_network, bool):
            raise TypeError(f"through_network: must be True or False, got {self.through_network!r}")

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        if self.through_network:
            require_autograd(type(self).__name__)
        count = 0

        def evaluate(x: torch.Tensor, p: Point) -> Prediction:
            nonlocal count
            count += 1
            s = scale_at("scale", self.scale, p, Where(count, p.t)) if p.sigma > 0.0 else 0.0
            if s == 0.0:
                return convert(x, network(x, p.model_time, p.t), p, needs_eps)
            c = posterior_variance(noise_level(p), float(self.data_std))
            if self.through_network and p.alpha > 0.0:
                with torch.enable_grad():
                    leaf = x.detach().clone().requires_grad_(True)
                    x0, eps = convert(leaf, network(leaf, p.model_time, p.t), p, needs_eps)
                    v = gaussian_step(self.measurement, x0.detach(), c)
                    (jv,) = torch.autograd.grad(x0, leaf, v)
                network.calls.backward += 1
                delta = jv * (s * p.sigma**2 / p.alpha)
                return shifted(x0.detach(), None if eps is None else eps.detach(), delta, p)
            x0, eps = convert(x, network(x, p.model_time, p.t), p, needs_eps)
            return shifted(x0, eps, gaussian_step(self.measurement, x0, c) * (s * c), p)

        return checked(self.measurement, evaluate)
