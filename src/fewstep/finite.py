"""``all_finite``: the NaN/inf check of the model outputs, the start noise, noise draws and a run's result."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def all_finite(x: Tensor) -> bool:
    """Whether every element of ``x`` is finite: the sum is non-finite whenever an element is, and costs a fraction of
    ``isfinite().all()`` on the CPU; a huge finite tensor can overflow it, so the elementwise check confirms."""
    x = x.detach()
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())
