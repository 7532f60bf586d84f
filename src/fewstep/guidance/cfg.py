"""Classifier-free guidance (Ho & Salimans 2022) with the rescale of Lin et al. 2024 (eq. 15-16).

Both branches run as one batch of twice the size (one network call, two branch evaluations):

    out = out_u + scale (out_c - out_u),
    rescaled: out <- phi (std(out_c) / std(out)) out + (1 - phi) out,   std over each sample's elements,

on the network's own output, which is affine in ``(x0, eps)`` (so plain CFG is the same on either; the rescale is
not, and follows diffusers on the model's output). :func:`guided` is that formula, :func:`paired_outputs` the
batched call; :class:`~fewstep.guidance.scheduled_cfg.ScheduledCFG` reuses both at a scale that depends on the
noise level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..model.network import Network
from ..model.stack import ModelOutput
from .rule_checks import conditioning, finite_number

#: ``pair(x, time, t) -> (out_u, out_c)``: both branches' outputs from one batched network call.
PairedOutputs = Callable[[Tensor, Tensor, float], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """``scale`` (1 is the conditional model alone), the unconditional inputs ``uncond_kwargs`` (the same keys as the
    model's conditioning; tensors batched with theirs) and the rescale factor ``rescale`` in [0, 1]."""

    scale: float
    uncond_kwargs: Mapping[str, Any]
    rescale: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float):
            raise TypeError(f"guidance_scale: must be a number, got {type(self.scale).__name__}")
        finite_number("guidance_scale", self.scale)
        conditioning("uncond_kwargs", self.uncond_kwargs, "classifier-free guidance (guidance_scale != 1)")
        check_rescale(self.rescale)

    def wrap(self, network: Network) -> ModelOutput:
        pair = paired_outputs(network, self.uncond_kwargs)
        scale, phi = self.scale, self.rescale

        def guided_output(x: Tensor, time: Tensor, t: float) -> Tensor:
            return guided(*pair(x, time, t), scale, phi)

        return guided_output


def check_rescale(rescale: object) -> float:
    """The rescale factor phi of Lin et al. 2024, in [0, 1]."""
    phi = finite_number("guidance_rescale", rescale)
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"guidance_rescale: must be in [0, 1], got {rescale} (0: no rescale; Lin et al. use 0.7)")
    return phi


def paired_outputs(network: Network, uncond_kwargs: Mapping[str, Any]) -> PairedOutputs:
    """The unconditional and conditional outputs of ``network`` as one batched call (counted as one call and two
    branch evaluations); the kwargs are batched once, here."""
    kwargs = {k: _cat(uncond_kwargs.get(k), v) for k, v in network.kwargs.items()}

    def pair(x: Tensor, time: Tensor, t: float) -> tuple[Tensor, Tensor]:
        out_u, out_c = network(torch.cat([x, x]), torch.cat([time, time]), t, kwargs, branches=2).chunk(2)
        return out_u, out_c

    return pair


def guided(out_u: Tensor, out_c: Tensor, scale: float, phi: float = 0.0) -> Tensor:
    """``out_u + scale (out_c - out_u)``, rescaled towards ``out_c``'s per-sample std by ``phi`` (module docstring)."""
    out = out_u + scale * (out_c - out_u)
    if phi > 0:
        dims = tuple(range(1, out.ndim))
        rescaled = out * (out_c.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True))
        out = phi * rescaled + (1.0 - phi) * out
    return out


def _cat(uncond: Any, cond: Any) -> Any:
    """Batch unconditional and conditional model kwargs (tensors concatenated, other values must agree)."""
    if isinstance(cond, Tensor):
        if not isinstance(uncond, Tensor) or uncond.shape != cond.shape:
            raise ValueError("uncond_kwargs: each tensor must match the shape of its model_kwargs counterpart")
        return torch.cat([uncond, cond])
    if uncond is not None and uncond != cond:
        raise ValueError("uncond_kwargs: non-tensor arguments must equal their model_kwargs counterpart")
    return cond
