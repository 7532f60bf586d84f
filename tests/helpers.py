"""Small helpers shared by the test modules."""

from __future__ import annotations

import torch
from torch import Tensor

from fewstep import DiscreteVP

F64 = torch.float64


def rel(a: Tensor, b: Tensor) -> float:
    """Relative difference ``|a - b| / |b|``."""
    return float((a - b).norm() / b.norm())


def randn(*shape: int, seed: int = 0) -> Tensor:
    """Standard normal float64 values from a fixed seed."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def schedule_of(scheduler: object) -> DiscreteVP:
    """fewstep's schedule on a diffusers scheduler's own (float32) ``alphas_cumprod`` table."""
    return DiscreteVP(alphas_cumprod=scheduler.alphas_cumprod.to(F64))  # type: ignore[attr-defined]
