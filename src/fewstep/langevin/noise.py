"""The Gaussian noise of Langevin steps: standard normal pairs per sub-interval of a step, drawn from a
``torch.Generator`` or read off a :class:`~fewstep.noise.BrownianPath` (so that runs at refined step sizes share
one Brownian path, which is how strong orders are measured), and the exact Ornstein-Uhlenbeck integrals built
from them.

Over an interval ``[a, b]`` of length ``tau`` a Brownian motion gives two independent standard normals,

    xi_w = (W_b - W_a) / sqrt(tau),        xi_h = int_a^b (s - m) dW_s / sqrt(tau^3 / 12)  (m the midpoint)
         = -sqrt(12 / tau) H_{a,b},

``H`` the space-time Lévy area (Foster, Lyons & Oberhauser 2020). From them :func:`ou_integrals` builds the pair

    dW = W_b - W_a,        E = int_a^b exp(-gamma (b - s)) dW_s

with its exact joint law (a 2x2 Cholesky factor); from a path the pair is also pathwise accurate (the part of ``E``
not explained by ``dW`` is, to leading order, the Lévy-area term).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fewstep.noise.brownian import BrownianPath

__all__ = ["OUCoefficients", "OUIntegrals", "StepNoise", "ou_integrals", "path_times"]


class StepNoise:
    """Standard normals for the steps of a chain run of states ``[chains, d]``.

    Step ``k`` covers the path times ``[t0 + k h, t0 + (k + 1) h]``; :meth:`pair` gives ``(xi_w, xi_h)`` over the
    fraction ``[a, b]`` of step ``k`` (``0 <= a < b <= 1``). Steps of unequal lengths (a decaying step, annealing
    levels) give ``times`` instead of ``step_size``: the path times ``t0 + times[k]`` and ``t0 + times[k + 1]``
    bound step ``k``. With ``path=None`` the normals come from ``generator`` (the times are then irrelevant).
    """

    def __init__(
        self,
        like: Tensor,
        *,
        generator: torch.Generator | None,
        path: BrownianPath | None = None,
        step_size: float | None = None,
        times: Sequence[float] | None = None,
    ) -> None:
        self.shape = like.shape
        self.dtype = like.dtype
        self.device = like.device
        self.generator = generator
        # a generator draws on its own device (a CPU generator for chains on a GPU works, at a transfer per draw)
        self._draw_device = generator.device if generator is not None else like.device
        self.path = path
        if path is not None:
            if not isinstance(path, BrownianPath):
                raise TypeError(f"brownian must be a fewstep.noise.BrownianPath, got {type(path).__name__}")
            want = (tuple(self.shape[:1]), tuple(self.shape[1:]))
            if (path.batch_size,) != want[0] or tuple(path.shape) != want[1]:
                raise ValueError(
                    f"brownian must have batch_size = chains = {self.shape[0]} and shape = (d,) = {want[1]}, "
                    f"got batch_size={path.batch_size}, shape={tuple(path.shape)}"
                )
            if step_size is None and times is None:
                raise ValueError("a Brownian path needs a fixed step_size (the path's time per step)")
        self.step_size = step_size
        self.times = None if times is None else [float(t) for t in times]

    def normal(self) -> Tensor:
        """One standard normal ``[chains, d]`` from the generator (drawn on the generator's device)."""
        out = torch.randn(self.shape, generator=self.generator, dtype=self.dtype, device=self._draw_device)
        return out.to(self.device, non_blocking=True)

    def uniform(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """Uniforms on ``[0, 1)`` from the generator (accept/reject tests, random midpoints)."""
        out = torch.rand(shape, generator=self.generator, dtype=self.dtype, device=self._draw_device)
        return out.to(self.device, non_blocking=True)

    def _times(self, k: int, a: float, b: float) -> tuple[float, float]:
        assert self.path is not None
        t0 = self.path.t0
        if self.times is not None:
            start, end = self.times[k], self.times[k + 1]
            return t0 + start + a * (end - start), t0 + start + b * (end - start)
        assert self.step_size is not None
        return t0 + (k + a) * self.step_size, t0 + (k + b) * self.step_size

    def increment(self, k: int, a: float = 0.0, b: float = 1.0) -> Tensor:
        """``xi_w`` over the fraction ``[a, b]`` of step ``k`` (a standard normal ``[chains, d]``)."""
        if self.path is None:
            return self.normal()
        s, t = self._times(k, a, b)
        dw = self.path.increment(s, t)
        return (dw / math.sqrt(t - s)).to(dtype=self.dtype, device=self.device)

    def pair(self, k: int, a: float = 0.0, b: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(xi_w, xi_h)`` over the fraction ``[a, b]`` of step ``k``: independent standard normals
        ``[chains, d]``."""
        if self.path is None:
            return self.normal(), self.normal()
        s, t = self._times(k, a, b)
        dw, area = self.path.increment(s, t, levy_area=True)
        tau = t - s
        xi_w = (dw / math.sqrt(tau)).to(dtype=self.dtype, device=self.device)
        xi_h = (-math.sqrt(12.0 / tau) * area).to(dtype=self.dtype, device=self.device)
        return xi_w, xi_h


@dataclass(frozen=True)
class OUIntegrals:
    """``dW = W_b - W_a`` and ``E = int_a^b exp(-gamma (b - s)) dW_s`` over an interval (tensors ``[chains, d]``)."""

    dw: Tensor
    e: Tensor


@dataclass(frozen=True)
class OUCoefficients:
    """The constants of :func:`ou_integrals` for one interval length ``tau`` and friction ``gamma``, computed once
    for a run of equal steps: ``dW = sqrt(tau) xi_w``, ``E = slope dW + spread xi_h``."""

    sqrt_tau: Tensor
    slope: Tensor
    spread: Tensor

    @classmethod
    def of(cls, tau: float | Tensor, gamma: float, like: Tensor) -> OUCoefficients:
        """``Var dW = tau``, ``Var E = (1 - e^{-2 gamma tau}) / (2 gamma)``, ``Cov(dW, E) = (1 - e^{-gamma tau}) /
        gamma``: ``slope = Cov / tau``, ``spread = sqrt(Var E - Cov^2 / tau)``. ``tau`` may be a tensor
        broadcasting against the normals (a random midpoint per chain)."""
        tau_t = torch.as_tensor(tau, dtype=like.dtype, device=like.device)
        gt = gamma * tau_t
        cov = -torch.expm1(-gt) / gamma
        var_e = -torch.expm1(-2.0 * gt) / (2.0 * gamma)
        # Var E - Cov^2 / tau, written to avoid cancellation for small gamma tau: tau * r(gamma tau) with
        # r(z) = (1 - e^{-2z}) / (2z) - ((1 - e^{-z}) / z)^2 = (z^2 / 12)(1 - z + 17 z^2 / 30) + O(z^5).
        resid = torch.where(
            gt > 1e-2,
            var_e - cov * cov / tau_t,
            tau_t * (gt * gt / 12.0) * (1.0 - gt + (17.0 / 30.0) * gt * gt),
        ).clamp_min(0.0)
        return cls(sqrt_tau=tau_t.sqrt(), slope=cov / tau_t, spread=resid.sqrt())

    def integrals(self, xi_w: Tensor, xi_h: Tensor) -> OUIntegrals:
        dw = self.sqrt_tau * xi_w
        return OUIntegrals(dw=dw, e=self.slope * dw + self.spread * xi_h)


def ou_integrals(xi_w: Tensor, xi_h: Tensor, tau: float | Tensor, gamma: float) -> OUIntegrals:
    """The exact joint law of ``(dW, E)`` over an interval of length ``tau`` from two independent standard
    normals (:class:`OUCoefficients`)."""
    return OUCoefficients.of(tau, gamma, xi_w).integrals(xi_w, xi_h)


def path_times(steps: Iterable[float]) -> list[float]:
    """The times bounding steps of lengths ``steps`` from 0: ``[0, h_0, h_0 + h_1, ...]`` (:class:`StepNoise`'s
    ``times``)."""
    return [0.0, *itertools.accumulate(float(h) for h in steps)]
