"""Small helpers shared by the test modules."""

from __future__ import annotations

import torch
from torch import Tensor

from fewstep import DiscreteVP

F64 = torch.float64
N_TRAIN = 1000
BETAS = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}
DIFFUSERS_RTOL = 1e-4  # diffusers' coefficients are float32
KDIFF_RTOL = 1e-8  # float64 on both sides


def rel(a: Tensor, b: Tensor) -> float:
    """Relative difference ``|a - b| / |b|``."""
    return float((a - b).norm() / b.norm())


def randn(*shape: int, seed: int = 0) -> Tensor:
    """Standard normal float64 values from a fixed seed."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def schedule_of(scheduler: object) -> DiscreteVP:
    """fewstep's schedule on a diffusers scheduler's own (float32) ``alphas_cumprod`` table."""
    return DiscreteVP(alphas_cumprod=scheduler.alphas_cumprod.to(F64))  # type: ignore[attr-defined]


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> Tensor:
    """k-diffusion's Karras grid (with the appended 0) computed in float64.

    ``get_sigmas_karras`` builds its ramp with ``torch.linspace`` in the default dtype; in float32 the ends come
    out as 79.99998 and 0.0019999996, slightly outside EDM's [0.002, 80], where fewstep clamps the times to the
    schedule's range (a 2e-7 relative shift of the last noise level, ~1e-8 in the samples).
    """
    from k_diffusion import sampling

    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        return sampling.get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0)
    finally:
        torch.set_default_dtype(old)
