"""Branches of one evaluation: several conditionings of the same network, run as one batched call.

A guidance rule evaluates the network under several conditionings at the same state and time (conditional and
unconditional, a perturbed branch, several prompts). :class:`Branches` batches them: the state is repeated, each
conditioning tensor is concatenated along the batch once per run, and the network is called once, counted as one
network call and ``len(branches)`` branch evaluations (:class:`~fewstep.model.calls.CallCount`). Conditionings that
cannot be batched (non-tensor arguments that differ between branches) are called one branch per call instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Prediction, convert


class Branches:
    """The network under the conditionings ``kwargs`` (one mapping per branch; ``None`` is the run's own
    conditioning), batched into one call where they can be."""

    def __init__(self, network: Network, kwargs: Sequence[Mapping[str, Any] | None], name: str = "uncond_kwargs"):
        self.network, self.n = network, len(kwargs)
        full = [dict(network.kwargs) if k is None else _complete(network.kwargs, k, name) for k in kwargs]
        self.per_branch = full
        self.batched = _batch(full, name)

    def outputs(self, x: Tensor, time: Tensor, t: float, which: Sequence[int] | None = None) -> list[Tensor]:
        """The network's output for each branch (or for the branches ``which``) at ``x``."""
        idx = list(range(self.n)) if which is None else list(which)
        if len(idx) == 1:
            return [self.network(x, time, t, self.per_branch[idx[0]])]
        if self.batched is not None:
            kw = self.batched if len(idx) == self.n else _batch([self.per_branch[i] for i in idx], "")
            if kw is not None:
                k = len(idx)
                out = self.network(torch.cat([x] * k), torch.cat([time] * k), t, kw, branches=k)
                return list(out.chunk(k))
        return [self.network(x, time, t, self.per_branch[i]) for i in idx]

    def predictions(self, x: Tensor, p: Point, eps: bool, which: Sequence[int] | None = None) -> list[Prediction]:
        """``(x0_hat, eps_hat)`` of each branch (or of the branches ``which``) at ``(x, p)``."""
        return [convert(x, out, p, eps) for out in self.outputs(x, p.model_time, p.t, which)]


def _complete(cond: Mapping[str, Any], other: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A branch's conditioning: the run's ``cond`` with the keys of ``other`` replaced (tensors must keep their
    shapes, so that the branches batch)."""
    unknown = set(other) - set(cond)
    if unknown:
        raise ValueError(
            f"{name}: keys {sorted(unknown)} are not in model_kwargs ({sorted(cond)}); a branch replaces the "
            "conditioning the model is called with, so give model_kwargs the same keys"
        )
    out = dict(cond)
    for k, v in other.items():
        c = cond[k]
        if isinstance(c, Tensor) and (not isinstance(v, Tensor) or v.shape != c.shape):
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"{name}[{k!r}]: must be a tensor of shape {tuple(c.shape)} like model_kwargs, got {got}")
        out[k] = v
    return out


def _batch(kwargs: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any] | None:
    """The branches' conditionings concatenated along the batch (None where a non-tensor value differs)."""
    if not kwargs:
        return {}
    out: dict[str, Any] = {}
    for k, first in kwargs[0].items():
        values = [kw[k] for kw in kwargs]
        if isinstance(first, Tensor):
            out[k] = torch.cat(values)
        elif all(v is first or v == first for v in values):
            out[k] = first
        else:
            return None
    return out
