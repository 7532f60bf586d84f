"""Measurements ``y = A(x) + n``, ``n ~ N(0, noise_std^2 I)``: what a posterior sampler conditions on.

A measurement holds the observation ``y`` (one row per sample, shape ``(B, *obs_shape)``), its noise level
``noise_std`` (0: noiseless) and the operator ``A``:

- :class:`Linear`: a matrix ``A`` of shape ``(m, D)`` acting on the flattened sample (``D`` its elements);
- :class:`Mask`: inpainting, ``A x = x[mask]`` with the mask of one sample's shape (the observation keeps the
  sample's shape, zero where unobserved, so that masks need no gather);
- :class:`Operator`: any linear map given as ``forward`` and ``adjoint`` callables (blur, downsampling, ...);
- :class:`Nonlinear`: any differentiable ``forward``; its adjoint is the vector-Jacobian product.

Every measurement gives ``forward(x)``, ``adjoint(r)`` (for a linear one, ``A^T r``; for a non-linear one, the
vector-Jacobian product at the last ``x`` given), ``residual(x) = y - A(x)`` and the Gaussian
``log_likelihood(x) = -|y - A(x)|^2 / (2 noise_std^2)`` per sample (up to a constant; noiseless measurements have
none and raise). Shapes are checked when a measurement is made and again against the state at a run's start.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Linear", "Mask", "Measurement", "Nonlinear", "Operator"]


def _check_noise(noise_std: float) -> float:
    if isinstance(noise_std, bool) or not isinstance(noise_std, int | float):
        raise TypeError(f"noise_std: must be a number, got {type(noise_std).__name__}")
    if not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std: must be finite and >= 0 (0 for a noiseless measurement), got {noise_std}")
    return float(noise_std)


@dataclass(frozen=True)
class Measurement:
    """The common part: observation ``y`` and ``noise_std``; subclasses give ``forward`` and ``adjoint``."""

    y: Tensor
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.y, Tensor):
            raise TypeError(f"y: must be a tensor of observations, one row per sample, got {type(self.y).__name__}")
        object.__setattr__(self, "noise_std", _check_noise(self.noise_std))

    @property
    def noiseless(self) -> bool:
        return self.noise_std == 0.0

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, r: Tensor) -> Tensor:
        raise NotImplementedError

    def residual(self, x: Tensor) -> Tensor:
        """``y - A(x)``."""
        return self.y.to(x) - self.forward(x)

    def log_likelihood(self, x: Tensor) -> Tensor:
        """``-|y - A(x)|^2 / (2 noise_std^2)`` per sample (shape ``(B,)``), up to the normalising constant."""
        if self.noiseless:
            raise ValueError("noise_std: a noiseless measurement (noise_std=0) has no Gaussian likelihood")
        r = self.residual(x)
        return -r.flatten(1).square().sum(1) / (2 * self.noise_std**2)

    def check(self, x: Tensor) -> None:
        """A ValueError naming ``y`` when the observation does not fit the state ``x`` (B samples)."""
        out = self.forward(x[:1])
        if self.y.shape[1:] != out.shape[1:] or self.y.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"y: the observation has shape {tuple(self.y.shape)}, but A(x) of a state of shape {tuple(x.shape)} "
                f"has shape ({x.shape[0]}, {', '.join(map(str, out.shape[1:]))})"
            )


@dataclass(frozen=True)
class Linear(Measurement):
    """``A x`` for a matrix ``A`` of shape ``(m, D)`` on the flattened sample; ``y`` of shape ``(B, m)``."""

    A: Tensor = field(default_factory=lambda: torch.empty(0, 0))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.A, Tensor) or self.A.ndim != 2:
            raise ValueError(f"A: must be a matrix (m, D), got {getattr(self.A, 'shape', type(self.A).__name__)}")

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.A.to(x).T

    def adjoint(self, r: Tensor) -> Tensor:
        return r @ self.A.to(r)


@dataclass(frozen=True)
class Mask(Measurement):
    """Inpainting: ``A x = mask * x`` with ``mask`` (0/1) of one sample's shape; ``y`` has the sample's shape (its
    unobserved entries are ignored). ``A`` is a projection, so ``adjoint = forward``."""

    mask: Tensor = field(default_factory=lambda: torch.empty(0))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.mask, Tensor) or not bool(((self.mask == 0) | (self.mask == 1)).all()):
            raise ValueError("mask: must be a tensor of 0s and 1s of one sample's shape")

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x)

    def adjoint(self, r: Tensor) -> Tensor:
        return r * self.mask.to(r)

    def residual(self, x: Tensor) -> Tensor:
        m = self.mask.to(x)
        return m * (self.y.to(x) - x)


@dataclass(frozen=True)
class Operator(Measurement):
    """A linear map given as ``forward(x)`` and its ``adjoint(r)`` (e.g. a blur and its transpose)."""

    forward_fn: Callable[[Tensor], Tensor] | None = None
    adjoint_fn: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.forward_fn) or not callable(self.adjoint_fn):
            raise TypeError("forward_fn, adjoint_fn: an Operator needs both the linear map and its adjoint")

    def forward(self, x: Tensor) -> Tensor:
        assert self.forward_fn is not None
        return self.forward_fn(x)

    def adjoint(self, r: Tensor) -> Tensor:
        assert self.adjoint_fn is not None
        return self.adjoint_fn(r)


@dataclass(frozen=True)
class Nonlinear(Measurement):
    """Any differentiable ``forward_fn``; ``adjoint(r, x)`` is the vector-Jacobian product ``J(x)^T r``."""

    forward_fn: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.forward_fn):
            raise TypeError("forward_fn: a Nonlinear measurement needs its differentiable forward map")

    def forward(self, x: Tensor) -> Tensor:
        assert self.forward_fn is not None
        return self.forward_fn(x)

    def adjoint(self, r: Tensor, x: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if x is None:
            raise ValueError("x: a non-linear measurement's adjoint is the vector-Jacobian product at a point x")
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (vjp,) = torch.autograd.grad(self.forward(xg), xg, r)
        return vjp
