"""The run shared by the exact inversion methods (BDIA, EDICT-style coupling, edit-friendly DDPM noise).

Each method runs on the model nodes ``t_0 > t_1 > ... > t_N`` (``N = nfe`` steps, ``N + 1`` times of
:func:`fewstep.spacing.model_times`, the last one ``t_min``: no clean end, so that every node can be evaluated and
every step can be run backwards) and asks the model-call stack of :meth:`fewstep.Denoiser.stack` for
``(x0_hat, eps_hat)`` at a node, one counted network call per request. The DDIM map from node ``k`` to node ``j``
(Song, Meng & Ermon 2021) is

    Phi(x_k, t_k -> t_j) = alpha_j x0_hat(x_k, t_k) + sigma_j eps_hat(x_k, t_k).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from ..model import CallCount, Denoiser
from ..model.stack import ModelStack
from ..nodes import NodeTable
from ..prepare import as_denoiser, check_noise, state_dtype
from ..schedules import NoiseSchedule
from ..spacing import SpacingLike, model_times

#: ``model(x, time, **model_kwargs)`` or a prepared Denoiser
ModelLike = Callable[..., Tensor] | Denoiser


@dataclass(frozen=True)
class ExactRun:
    """One run's ``nodes`` (decreasing times, no clean end), model-call ``stack`` and its ``calls``."""

    nodes: NodeTable
    stack: ModelStack
    calls: CallCount

    @property
    def steps(self) -> int:
        return self.nodes.steps

    def predict(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``(x0_hat, eps_hat)`` at state ``x`` and node ``k``: one network call."""
        x0, eps = self.stack.evaluate(x, self.nodes.node(k))
        assert eps is not None
        return x0, eps

    def ddim(self, x0: Tensor, eps: Tensor, j: int) -> Tensor:
        """``alpha_j x0 + sigma_j eps``: the DDIM map to node ``j`` of a prediction made at another node."""
        return x0 * float(self.nodes.alpha[j]) + eps * float(self.nodes.sigma[j])

    def finish(self, result: Tensor) -> Tensor:
        self.stack.finish(result)
        return result


def check_fraction(value: object, name: str, default: float) -> float:
    """``value`` (the argument ``name``) must be a number in (0, 1] (TypeError/ValueError naming ``default``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: must be a number in (0, 1], got {type(value).__name__}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name}: must be in (0, 1] (0 makes the step not invertible), got {value}; e.g. {default}")
    return float(value)


def check_same(x: Tensor, y: Tensor, names: str) -> None:
    """The two states ``names`` (``"x, y"``) must have one shape, dtype and device."""
    check_noise(y, names.split(", ")[1])
    if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
        raise ValueError(
            f"{names}: must have the same shape, dtype and device, got {tuple(x.shape)} {x.dtype} {x.device} and "
            f"{tuple(y.shape)} {y.dtype} {y.device}"
        )


def prepare_exact(
    model: ModelLike,
    x: Tensor,
    schedule: NoiseSchedule | None,
    nfe: int,
    spacing: SpacingLike,
    prediction: str,
    model_kwargs: Mapping[str, Any] | None,
    calls: CallCount | None,
    name: str = "x",
) -> ExactRun:
    """Check the options (before any model call) and build the run on ``nfe + 1`` nodes for states like ``x``."""
    check_noise(x, name)
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise TypeError(f"nfe: must be an integer number of steps, got {type(nfe).__name__}")
    if nfe < 1:
        raise ValueError(f"nfe: must be at least 1 (one network call per step), got {nfe}; e.g. nfe=20")
    if calls is not None and not isinstance(calls, CallCount):
        raise TypeError(f"calls: must be a fewstep.CallCount, got {type(calls).__name__}")
    denoiser = as_denoiser(model, schedule, prediction, "auto", model_kwargs, 1.0, None, 0.0, None)
    times = model_times(denoiser.schedule, nfe + 1, spacing).numpy().astype(np.float64)
    nodes = NodeTable.build(denoiser, times, False, x.shape[0], x.device, state_dtype(x))
    count = calls if calls is not None else CallCount()
    return ExactRun(nodes, denoiser.stack(count, True), count)


def as_state(x: Tensor) -> Tensor:
    """``x`` in the state dtype (float32 for half precision)."""
    return x.to(state_dtype(x))


__all__ = ["ExactRun", "ModelLike", "as_state", "check_fraction", "check_same", "prepare_exact"]
