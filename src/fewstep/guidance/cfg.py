"""Classifier-free guidance (Ho & Salimans 2022) with the rescale of Lin et al. 2024 (eq. 15-16).

Both branches run as one batch of twice the size (one network call, two branch evaluations):

    out = out_u + scale (out_c - out_u),
    rescaled: out <- phi (std(out_c) / std(out)) out + (1 - phi) out,   std over each sample's elements,

on the network's own output, which is affine in ``(x0, eps)`` (so plain CFG is the same on either; the rescale is
not, and follows diffusers on the model's output).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..model.network import Network
from ..model.stack import ModelOutput


class Guidance(Protocol):
    """A guidance rule (see :mod:`fewstep.guidance`)."""

    def wrap(self, network: Network) -> ModelOutput: ...


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
        if self.uncond_kwargs is None:
            raise ValueError(
                "uncond_kwargs: classifier-free guidance (guidance_scale != 1) needs the unconditional inputs"
            )
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"guidance_rescale: must be in [0, 1], got {self.rescale}")

    def wrap(self, network: Network) -> ModelOutput:
        kwargs = {k: _cat(self.uncond_kwargs.get(k), v) for k, v in network.kwargs.items()}
        scale, phi = self.scale, self.rescale

        def guided_output(x: Tensor, time: Tensor, t: float) -> Tensor:
            out = network(torch.cat([x, x]), torch.cat([time, time]), t, kwargs, branches=2)
            out_u, out_c = out.chunk(2)
            guided = out_u + scale * (out_c - out_u)
            if phi > 0:
                dims = tuple(range(1, x.ndim))
                rescaled = guided * (out_c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
                guided = phi * rescaled + (1.0 - phi) * guided
            return guided

        return guided_output


def _cat(uncond: Any, cond: Any) -> Any:
    """Batch unconditional and conditional model kwargs (tensors concatenated, other values must agree)."""
    if isinstance(cond, Tensor):
        if not isinstance(uncond, Tensor) or uncond.shape != cond.shape:
            raise ValueError("uncond_kwargs: each tensor must match the shape of its model_kwargs counterpart")
        return torch.cat([uncond, cond])
    if uncond is not None and uncond != cond:
        raise ValueError("uncond_kwargs: non-tensor arguments must equal their model_kwargs counterpart")
    return cond
