"""Coloured noise for stochastic samplers: white noise shaped by a level-dependent power law in 2-D frequency.

After "Colored Noise Diffusion Sampling" (CNS): a diffusion model resolves low frequencies early and high
frequencies late, so the fresh noise of a stochastic step can be spent where the sample is still unresolved
instead of uniformly over all frequencies. :class:`ColoredNoise` is a ``noise_sampler(level_s, level_t)`` (the
interface of :class:`fewstep.noise.source.NoiseSource`, usable with every stochastic solver) whose draw for the
step from noise level ``s`` to ``t`` is, over the last two axes ``(H, W)`` of the state,

    z = irfft2( A_beta(f) rfft2(w) ),    A_beta(f) = |f|_+^{-beta/2} / sqrt(mean_f |f|_+^{-beta})

with ``w`` standard white noise, ``beta = beta(s)`` and ``f = (f_y, f_x)`` the discrete frequencies in cycles
per pixel, ``|f|_+ = max(|f|, 1/max(H, W))`` (the DC term gets the amplitude of the lowest non-zero frequency).
Its power spectrum is ``|A_beta(f)|^2 ∝ |f|^{-beta}`` (beta > 0: red, more low-frequency energy; beta < 0:
blue; beta = 0: white, returned unchanged). ``A_beta`` is real and even, so ``z`` is a real stationary
(circular) Gaussian field with per-pixel variance ``mean_f A_beta(f)^2 = 1``: the step's variance is the one
the solver planned, only its distribution over frequencies changes. Each call is independent of the others
when the white noises are (``torch.randn`` with ``generator``, or a ``base`` noise sampler such as a seeded
Brownian path, whose increments over the disjoint steps of a run are independent).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from .brownian import NoiseSampler

__all__ = ["Beta", "ColoredNoise", "colored_noise_sampler"]

#: ``beta``: a constant exponent, or a function of the step's starting noise level (sigma/alpha, or t for flows).
Beta = float | Callable[[float], float]


def _exponent(value: object, level: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"beta: must be a real number or return one, got {value!r} at level {level}")
    if not math.isfinite(float(value)):
        raise ValueError(f"beta: must be finite, got {value!r} at level {level}")
    return float(value)


class ColoredNoise:
    """A noise sampler of unit-variance noise with power spectrum ``∝ |f|^{-beta(level)}`` over the last two axes.

    Args:
        like: a tensor shaped like the sampler's state ``(B, ..., H, W)`` (its shape, device and dtype are used).
        beta: the spectral exponent: a real number, or ``beta(level) -> float`` of the step's starting noise
            level ``s`` (the schedule's level: sigma/alpha, or t for flows).
        generator: the ``torch.Generator`` of the white noise (default: torch's global generator).
        base: instead of ``generator``, a noise sampler giving the white noise, e.g.
            :class:`fewstep.noise.SeededNoise` for per-sample seeds.
        image_shape: ``(H, W)`` of a flat state ``(B, C * H * W)`` (e.g. ``(8, 8)`` for the digits target);
            default: the state's last two axes.
    """

    def __init__(
        self,
        like: Tensor,
        beta: Beta,
        *,
        generator: torch.Generator | None = None,
        base: NoiseSampler | None = None,
        image_shape: tuple[int, int] | None = None,
    ):
        if generator is not None and base is not None:
            raise ValueError("generator, base: give one of them, not both (the base sampler draws the white noise)")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: must be a torch.Generator, got {type(generator).__name__}")
        if base is not None and not callable(base):
            raise TypeError(f"base: must be a noise sampler base(level_s, level_t), got {base!r}")
        if not callable(beta):
            _exponent(beta, math.nan)
        self.shape, self.device, self.dtype = tuple(like.shape), like.device, like.dtype
        if image_shape is None:
            if like.ndim < 3:
                raise ValueError(
                    f"like: needs image-shaped states (B, ..., H, W), got shape {self.shape}; pass image_shape="
                )
            self.field_shape: tuple[int, ...] = self.shape
        else:
            h, w = (int(n) for n in image_shape)
            per_sample = math.prod(self.shape[1:])
            if h < 1 or w < 1 or per_sample % (h * w):
                raise ValueError(f"image_shape: {image_shape} does not divide the per-sample shape {self.shape[1:]}")
            self.field_shape = (self.shape[0], per_sample // (h * w), h, w)
        self.beta, self.generator, self.base = beta, generator, base
        h, w = self.field_shape[-2:]
        fy = torch.fft.fftfreq(h, dtype=torch.float64, device=self.device)
        fx = torch.fft.rfftfreq(w, dtype=torch.float64, device=self.device)
        # |f|_+ = max(|f|, 1/max(H, W)): the DC term gets the lowest non-zero frequency's amplitude
        self._radius = torch.hypot(fy[:, None], fx[None, :]).clamp_min(1.0 / max(h, w))
        # rfft2 keeps the columns 0..W//2; the others are their mirror images, weighted 2 in the mean over f
        self._weight = torch.full_like(fx, 2.0)
        self._weight[0] = 1.0
        if w % 2 == 0:
            self._weight[-1] = 1.0
        self._filters: dict[float, Tensor] = {}

    def exponent(self, level: float) -> float:
        """``beta`` at the noise level ``level``."""
        return _exponent(self.beta(level) if callable(self.beta) else self.beta, level)

    def amplitude(self, beta: float) -> Tensor:
        """``A_beta`` on the ``rfft2`` frequencies (float64, shape ``(H, W // 2 + 1)``), ``mean_f A_beta^2 = 1``."""
        cached = self._filters.get(beta)
        if cached is None:
            power = self._radius.pow(-beta)  # |f|^{-beta}
            h, w = self.field_shape[-2:]
            mean = float((power * self._weight).sum()) / (h * w)  # mean over the full H x W frequency grid
            cached = self._filters[beta] = (power / mean).sqrt()
        return cached

    def white(self, s: float, t: float) -> Tensor:
        """The white standard normal noise that is shaped."""
        if self.base is not None:
            z = self.base(s, t)
            if not isinstance(z, Tensor) or tuple(z.shape) != self.shape:
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(f"base: must return a tensor of shape {self.shape}, got {got}")
            return z.to(device=self.device, dtype=self.dtype)
        g = self.generator
        device = g.device if g is not None else self.device
        return torch.randn(self.shape, generator=g, device=device, dtype=self.dtype).to(self.device)

    def __call__(self, s: float | Tensor, t: float | Tensor) -> Tensor:
        level_s, level_t = float(s), float(t)
        z = self.white(level_s, level_t)
        beta = self.exponent(level_s)
        if beta == 0.0:
            return z
        h, w = self.field_shape[-2:]
        spectrum = torch.fft.rfft2(z.reshape(self.field_shape).to(torch.float64))
        shaped = torch.fft.irfft2(spectrum * self.amplitude(beta), s=(h, w))  # z = irfft2(A_beta rfft2(w))
        return shaped.reshape(self.shape).to(self.dtype)

    def __repr__(self) -> str:
        return f"ColoredNoise(shape={self.shape}, beta={self.beta!r}, field={self.field_shape[-2:]})"


def colored_noise_sampler(
    like: Tensor,
    beta: Beta,
    *,
    generator: torch.Generator | None = None,
    base: NoiseSampler | None = None,
    image_shape: tuple[int, int] | None = None,
) -> ColoredNoise:
    """:class:`ColoredNoise` (same arguments): pass it as ``fewstep.sample(..., noise_sampler=...)``."""
    return ColoredNoise(like, beta, generator=generator, base=base, image_shape=image_shape)
