"""The check that a model's output is differentiable: an adjoint needs the network's vector-Jacobian product."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..model.network import output_tensor


def model_name(model: object) -> str:
    """A model's name for messages: its class, or a function's qualified name."""
    name = getattr(model, "__qualname__", None)
    return str(name) if isinstance(name, str) else type(model).__name__


class NotDifferentiable(TypeError):
    """The model's output does not depend differentiably on an input that requires grad."""


def check_differentiable(out: object, needs_grad: bool, mode: str, name: str) -> None:
    """Raise :class:`NotDifferentiable` when an input of the call ``needs_grad`` (grad mode on) and the output
    ``out`` does not require grad."""
    if not (torch.is_grad_enabled() and needs_grad):
        return
    tensor = out if isinstance(out, Tensor) else output_tensor(out)
    if not tensor.requires_grad:
        raise NotDifferentiable(
            f"grad={mode!r}: the model {name} returned an output that does not require grad while its input "
            "state, a conditioning tensor or a parameter does (it runs under torch.no_grad or inference_mode, "
            "detaches its output, or is not a torch computation); an adjoint needs the network's vector-Jacobian "
            "product"
        )


class CheckedModel:
    """``model(x, time, **kwargs)`` whose output is checked by :func:`check_differentiable`; with ``checkpoint``
    the call runs under :func:`torch.utils.checkpoint.checkpoint` (non-reentrant): its activations are not kept
    and are recomputed in the backward pass, which returns the vector-Jacobian product for the state, every
    conditioning tensor and every leaf the model uses (its parameters, tensors it closes over)."""

    def __init__(self, model: Callable[..., Any], mode: str, checkpoint: bool):
        self.model, self.mode, self.recompute = model, mode, checkpoint
        self.name = model_name(model)
        params = model.parameters() if isinstance(model, torch.nn.Module) else ()
        self.params_need_grad = any(p.requires_grad for p in params)

    def __call__(self, x: Tensor, time: Tensor, **kwargs: Any) -> Any:
        if self.recompute and torch.is_grad_enabled():
            out = checkpoint(self.model, x, time, use_reentrant=False, **kwargs)
        else:
            out = self.model(x, time, **kwargs)
        needs = x.requires_grad or self.params_need_grad
        needs = needs or any(isinstance(v, Tensor) and v.requires_grad for v in kwargs.values())
        check_differentiable(out, needs, self.mode, self.name)
        return out
