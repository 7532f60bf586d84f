"""Steering a rectified flow in its vector field: Patel et al. 2024, "Steering Rectified Flow Models in the Vector
Field for Controlled Image Generation" (FlowChef).

For the rectified flow ``x_t = (1 - t) x0 + t eps`` with velocity ``v``, the clean-sample prediction is
``x0_hat = x - t v``. FlowChef skips the network's Jacobian ("gradient skipping": along straight paths
``d x0_hat / d x ~ I``) and descends the loss on the prediction, ``steps`` times per evaluation:

    x0_hat <- x0_hat - s grad L(x0_hat)                       (no backward pass through the network)

FlowChef moves the state by the same amount before an Euler step with the old velocity. A rule answers evaluations
at the solver's state and cannot move it: here the moved ``x0_hat`` is handed back with ``eps_hat`` kept consistent
with the state, which steers the velocity, ``v <- v - Delta / t`` for the move ``Delta`` of ``x0_hat``. An Euler step
of size ``dt`` then moves the state by ``(|dt| / t) Delta``; FlowChef's step of size ``s_FC`` corresponds to
``scale = s_FC t / |dt|`` (a callable of the noise level ``sigma = t / (1 - t)`` gives it). Every solver sees the
same steered field.

The update is FlowChef's for the rectified-flow schedule only (:class:`~fewstep.Flow`, alpha = 1 - t, sigma = t), and
the rule raises elsewhere before calling the network; on a diffusion schedule the same descent on ``x0_hat`` is
:class:`~fewstep.guidance.LossGuidance` with ``scale=0, backward_steps=steps, backward_lr=s`` (Bansal et al.'s
backward guidance).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction, convert
from .loss_steps import LossFn, Scale, Where, check_count, check_loss, check_scale, descend, require_autograd, scale_at
from .loss_steps import shifted as shifted_prediction

FLOW_TOLERANCE = 1e-9


@dataclass(frozen=True)
class FlowSteering:
    """FlowChef on a rectified flow: ``steps`` gradient steps of size ``scale`` (a number or a callable of sigma) on
    ``loss(x0_hat, **loss_kwargs) -> (B,)`` at every evaluation (module docstring)."""

    loss: LossFn
    scale: Scale = 1.0
    steps: int = 1
    loss_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_loss("loss", self.loss, self.loss_kwargs)
        check_scale("scale", self.scale)
        check_count("steps", self.steps, low=1)

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        require_autograd("FlowSteering")

        numbers = itertools.count(1)

        def evaluate(x: Tensor, p: Point) -> Prediction:
            where = Where(next(numbers), p.t)
            check_flow(p, where)
            s = scale_at("scale", self.scale, p, where)
            x0, eps = convert(x, network(x, p.model_time, p.t), p, needs_eps)
            moved = descend("loss", self.loss, x0, self.loss_kwargs, self.steps, s, where)
            return shifted_prediction(x0, eps, moved - x0, p)

        return evaluate


def check_flow(p: Point, where: Where) -> None:
    """Raise unless the point is on the rectified flow ``alpha = 1 - t``, ``sigma = t``."""
    on_flow = (
        abs(p.alpha + p.sigma - 1.0) < FLOW_TOLERANCE
        and abs(p.dalpha + 1.0) < FLOW_TOLERANCE
        and abs(p.dsigma - 1.0) < FLOW_TOLERANCE
    )
    if not on_flow:
        raise ValueError(
            f"FlowSteering: needs the rectified-flow schedule fewstep.Flow (alpha = 1 - t, sigma = t), got alpha = "
            f"{p.alpha:.6g}, sigma = {p.sigma:.6g} at {where}; on other schedules the same descent on x0_hat is "
            "LossGuidance(loss, scale=0, backward_steps=steps, backward_lr=scale)"
        )
