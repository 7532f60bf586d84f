"""``linear_smc``: particles for a linear inverse problem ``y = A x0 + n``, as :func:`inpaint_smc` in the singular
basis of ``A`` (MCGdiff: Cardoso, Janati, Le Corff & Moulines 2024, "Monte Carlo Guided Denoising Diffusion Models
for Bayesian Linear Inverse Problems", Sec. 3).

With the singular value decomposition ``A = U diag(s) V^T`` (``V`` the full ``D x D`` orthogonal factor, ``r`` the
rank), the coordinates ``z = V^T x`` turn the measurement into ``r`` separate ones,

    (U^T y)_j / s_j = z0_j + n_j / s_j,       j < r,      n ~ N(0, noise_std^2 I),

a mask on the first ``r`` coordinates of ``z`` with noise standard deviation ``noise_std / s_j`` on coordinate j
(the remaining ``m - r`` components of ``U^T y`` hold noise only and are dropped). ``V`` is orthogonal, so in ``z``
the forward process is the same (``z_t = alpha_t z0 + sigma_t eps`` with white ``eps``), the twist's stand-in prior
``N(0, S^2 I)`` is the same, and the network is ``V^T f(V z, t)``: every prediction type is linear in the state.
The run is :func:`inpaint_smc`'s on that mask (exact product proposal, no backward pass, ``nfe`` network calls on the
``B*K`` batch), and the samples are rotated back, ``x = V z``. Noiseless: ``A x = U_r U_r^T y`` for every particle
(``= y`` when ``y`` lies in the range of ``A``), to rounding.

The decomposition is dense: ``A`` as a matrix on the flattened sample, ``D`` up to a few thousand (each network call
adds two ``D x D`` products on the batch).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ...model import CallCount, Denoiser
from ...schedules import NoiseSchedule
from ...spacing import SpacingLike
from ..measurement import Linear, Measurement
from .engine import SMCResult
from .inpaint import Observation, run_twisted

__all__ = ["linear_smc"]


class _Rotated:
    """The network in the coordinates ``z = V^T x``: ``V^T f(V z, t)`` on flattened samples of ``shape``."""

    def __init__(self, network: Callable[..., Tensor], vh: Tensor, shape: tuple[int, ...]):
        self.network, self.vh, self.shape = network, vh, shape

    def __call__(self, z: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        vh = self.vh.to(device=z.device, dtype=z.dtype)
        out = self.network((z @ vh).reshape(z.shape[0], *self.shape), t, **kwargs)
        return out.reshape(z.shape[0], -1) @ vh.to(out.dtype).T


def singular_basis(a: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """``U`` (m x m), ``s`` (min(m, D),), ``V^T`` (D x D) of ``a`` in float64, and its numerical rank (singular
    values above ``max(m, D) eps s_max``, NumPy's ``matrix_rank`` rule)."""
    u, s, vh = torch.linalg.svd(a.to(torch.float64), full_matrices=True)
    tol = float(s.max()) * max(a.shape) * torch.finfo(torch.float64).eps if s.numel() else 0.0
    return u, s, vh, int((s > tol).sum())


def linear_smc(
    model: Callable[..., Tensor] | Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule | None = None,
    measurement: Measurement | None = None,
    nfe: int | None = None,
    spacing: SpacingLike | None = None,
    prediction: str = "auto",
    generator: torch.Generator | None = None,
    *,
    particles: int | None = None,
    steps: int | None = None,
    proposal: str = "dpmpp_2m_sde",
    data_std: float | None = 1.0,
    resample: str = "systematic",
    ess_threshold: float = 0.0,
    resample_schedule: str = "constant",
    model_kwargs: Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
) -> SMCResult:
    """K particles per prompt for ``y = A x0 + n`` with a :class:`~fewstep.posterior.Linear` measurement, noiseless
    or noisy (module docstring); every other argument as :func:`~fewstep.posterior.smc.inpaint_smc`.

    Returns the weighted particles (:class:`~fewstep.posterior.smc.SMCResult`) in the original coordinates.
    """
    if not isinstance(measurement, Linear):
        got = "nothing" if measurement is None else type(measurement).__name__
        raise TypeError(f"measurement: linear_smc takes a Linear measurement (a matrix A), got {got}")
    if not isinstance(noise, Tensor) or noise.ndim < 3:
        raise ValueError(
            f"noise: need the particles' start states (B, K, *sample_shape), got {getattr(noise, 'shape', noise)}"
        )
    shape = tuple(noise.shape[2:])
    size = math.prod(shape)
    a = measurement.A
    if a.shape[1] != size:
        raise ValueError(f"A: has {a.shape[1]} columns, but a sample of shape {shape} has {size} entries")
    b = noise.shape[0]
    y = measurement.y
    if y.ndim != 2 or y.shape[0] not in (1, b) or y.shape[1] != a.shape[0]:
        raise ValueError(f"y: need shape (1 or {b} prompts, {a.shape[0]}) for A of shape {tuple(a.shape)}")
    if isinstance(model, Denoiser) and model.threshold is not None:
        raise ValueError("threshold: linear_smc runs the network in rotated coordinates, where thresholding differs")
    u, s, vh, rank = singular_basis(a)
    if rank == 0:
        raise ValueError("A: every singular value is 0; the measurement says nothing about x")
    observed = torch.zeros(size, dtype=torch.float64)
    observed[:rank] = 1.0
    y_z = torch.zeros(y.shape[0], size, dtype=torch.float64)
    y_z[:, :rank] = (y.to(torch.float64) @ u[:, :rank]) / s[:rank]
    s2 = torch.ones(size, dtype=torch.float64)  # unobserved entries: any finite value
    s2[:rank] = (measurement.noise_std / s[:rank]) ** 2
    noisy = measurement.noise_std > 0.0
    rotated: Callable[..., Tensor] | Denoiser
    if isinstance(model, Denoiser):
        rotated = dataclasses.replace(model, model=_Rotated(model.model, vh, shape))
    else:
        rotated = _Rotated(model, vh, shape)
    z = noise.reshape(*noise.shape[:2], size).to(torch.float64) @ vh.T

    def bind(prompts: int, count: int, like: Tensor) -> Observation:
        rows = y_z.to(like) if y_z.shape[0] == 1 else y_z.to(like).repeat_interleave(count, dim=0)
        return Observation(observed.to(like), rows, s2.to(like), noisy, data_std)

    result = run_twisted(
        rotated, z.to(noise.dtype), schedule, bind, nfe=nfe, spacing=spacing, prediction=prediction,
        generator=generator, particles=particles, steps=steps, proposal=proposal, data_std=data_std, resample=resample,
        ess_threshold=ess_threshold, resample_schedule=resample_schedule, model_kwargs=model_kwargs, calls=calls,
    )  # fmt: skip
    x = (result.samples.to(torch.float64) @ vh).reshape(noise.shape).to(noise.dtype)
    return dataclasses.replace(result, samples=x)
