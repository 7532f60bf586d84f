"""Larger exact targets: Gaussian mixtures in 64 and 3,072 (3 x 32 x 32) dimensions, made from a seed.

Both are :class:`GaussianMixture` instances, so their denoiser is exact and :func:`reference_solution`
solves their probability-flow ODE to near machine precision. They are generated deterministically
(NumPy's PCG64 from ``seed``), with unequal weights and per-component stds, and with modes far apart
compared with their widths, so that each mode is distinct and a sample can be told to its mode
(:func:`fewstep.bench.metrics.mode_coverage`).

``mixture_nd``: means ``mu_k ~ N(0, scale^2 I_D)`` (pairwise distances about ``scale sqrt(2 D)``), stds
``s_k`` log-uniform in ``[0.1, 0.3]`` (a component's radius is about ``s_k sqrt(D)``), weights
``w_k`` proportional to ``exp(z_k)``, ``z_k ~ N(0, 0.5^2)``.

``mixture_image``: the means are smooth random colour images in ``[-1, 1]``: per image a luminance field
and two chroma fields of Gaussian noise filtered with the power spectrum ``1 / (1 + (f / f0)^2)^3``
(f in cycles per image, f0 = 1.5 for luminance and 1 for chroma: soft blobs, mostly low frequencies),
mixed into RGB, offset by a random brightness and squashed by ``tanh``; stds log-uniform in
``[0.05, 0.15]``; ``image_shape = (3, 32, 32)``.
"""

from __future__ import annotations

import numpy as np

from .mixture import GaussianMixture

__all__ = ["mixture_nd", "mixture_image"]


def _check_int(value: int, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
    return int(value)


def _weights_and_stds(rng: np.random.Generator, k: int, std_range: tuple[float, float]) -> tuple[np.ndarray, ...]:
    lo, hi = std_range
    stds = np.exp(rng.uniform(np.log(lo), np.log(hi), size=k))
    weights = np.exp(0.5 * rng.standard_normal(k))
    return stds, weights / weights.sum()


def mixture_nd(dim: int = 64, components: int = 200, seed: int = 0, scale: float = 1.0) -> GaussianMixture:
    """A ``components``-mode mixture in ``dim`` dimensions with random means (module docstring).

    With the defaults (D = 64, K = 200) the means are 7.3 to about 11 (median) apart and a mode's radius
    ``s_k sqrt(D)`` is 0.8-2.4: the modes do not overlap; the weights span a factor of about 12. The data variance per coordinate is about ``scale^2``, so
    unit-variance schedules (VP) suit it as they are.
    """
    dim, components = _check_int(dim, "dim", 1), _check_int(components, "components", 1)
    seed = _check_int(seed, "seed", 0)
    if not (isinstance(scale, int | float) and scale > 0):
        raise ValueError(f"scale: must be a positive number, got {scale!r}")
    rng = np.random.default_rng(seed)
    means = float(scale) * rng.standard_normal((components, dim))
    stds, weights = _weights_and_stds(rng, components, (0.1, 0.3))
    return GaussianMixture(means, stds, weights)


def _smooth_fields(rng: np.random.Generator, n: int, size: tuple[int, int], f0: float) -> np.ndarray:
    """``n`` Gaussian random fields of ``size`` with spectrum ``1 / (1 + (f / f0)^2)^3``, unit pixel std."""
    h, w = size
    fy, fx = np.fft.fftfreq(h)[:, None] * h, np.fft.rfftfreq(w)[None, :] * w  # cycles per image
    amplitude = (1.0 + (fy**2 + fx**2) / f0**2) ** -1.5  # square root of the power spectrum
    noise = rng.standard_normal((n, h, w))
    fields = np.fft.irfft2(np.fft.rfft2(noise) * amplitude, s=(h, w))
    return fields / fields.std(axis=(1, 2), keepdims=True)


def mixture_image(components: int = 256, seed: int = 0, shape: tuple[int, int, int] = (3, 32, 32)) -> GaussianMixture:
    """A mixture of ``components`` smooth random colour images of ``shape`` (module docstring).

    With the defaults (3 x 32 x 32 = 3,072 dimensions, K = 256) the means are 21 to about 48 (median)
    apart and a mode's radius ``s_k sqrt(D)`` is 2.8-8.3; the weights span a factor of about 15. ``image_shape`` is set, so the denoiser and the reference solution
    take (B, 3, 32, 32) inputs as well as (B, 3072).
    """
    components, seed = _check_int(components, "components", 1), _check_int(seed, "seed", 0)
    if len(shape) != 3 or any(isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1 for n in shape):
        raise ValueError(f"shape: need (channels, height, width) positive integers, got {shape!r}")
    c, h, w = (int(n) for n in shape)
    rng = np.random.default_rng(seed)
    luma = _smooth_fields(rng, components, (h, w), f0=1.5)
    chroma = _smooth_fields(rng, 2 * components, (h, w), f0=1.0).reshape(components, 2, h, w)
    # channel mixing: every channel sees the luminance; chroma enters with channel-dependent signs
    phase = 2.0 * np.pi * np.arange(c) / c
    mix = np.stack([np.cos(phase), np.sin(phase)], axis=1) if c > 1 else np.zeros((1, 2))
    images = luma[:, None] + 0.4 * np.einsum("cj,kjhw->kchw", mix, chroma)
    brightness = 0.3 * rng.standard_normal((components, 1, 1, 1))
    means = np.tanh(0.7 * images + brightness)
    stds, weights = _weights_and_stds(rng, components, (0.05, 0.15))
    return GaussianMixture(means.reshape(components, c * h * w), stds, weights, image_shape=(c, h, w))
