"""The formulas of the spacings that come from other samplers' schedulers, as functions of the step count.

Each function returns float64 numpy values from the noisy end to the clean end; :func:`fewstep.spacing.model_times`
maps them onto a schedule. ``u_i = i / (n - 1)``, ``i = 0 .. n - 1``, runs from 0 (noisy end) to 1 (clean end).

- :func:`beta_fractions`: Lee et al. 2024, "Beta Sampling is All You Need" (arXiv:2407.12173).
- :func:`linear_quadratic_fractions`: Genmo's Mochi sampler (as ComfyUI's ``linear_quadratic`` scheduler).
- :func:`kl_optimal_levels`: Sabour, Fidler & Kreis 2024, "Align Your Steps" (arXiv:2404.14507), the
  KL-optimal schedule of its analysis (as ComfyUI's ``kl_optimal``).
- :func:`polyexponential_levels`: k-diffusion's polyexponential noise levels.
- :data:`AYS_LEVELS`, :data:`AYS_RANGES` and :func:`loglinear_resample`: the Align-Your-Steps tables, the level
  range of the model each was found for, and their log-linear interpolation to other step counts.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "AYS_LEVELS",
    "AYS_RANGES",
    "beta_fractions",
    "kl_optimal_levels",
    "linear_quadratic_fractions",
    "loglinear_resample",
    "polyexponential_levels",
]

#: The published Align-Your-Steps noise levels (k-diffusion sigma = sigma/alpha, 10 steps, 11 levels from the
#: model's sigma_max to its sigma_min), from NVIDIA's AYS project page ("How to use Align Your Steps",
#: research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html) for Sabour, Fidler & Kreis 2024, "Align Your
#: Steps: Optimizing Sampling Schedules in Diffusion Models" (arXiv:2404.14507).
AYS_LEVELS: dict[str, tuple[float, ...]] = {
    # Stable Diffusion 1.5
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    # Stable Diffusion XL
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    # Stable Video Diffusion
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}


def _scaled_linear_level_range(
    beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000
) -> tuple[float, float]:
    """``(sigma_min, sigma_max)``, ``sigma = sqrt((1 - alphabar) / alphabar)`` at the first and last training step
    of Stable Diffusion's betas (linear in sqrt(beta))."""
    alphabar = np.cumprod(1.0 - np.linspace(beta_start**0.5, beta_end**0.5, steps) ** 2)
    sigma = np.sqrt((1.0 - alphabar) / alphabar)
    return float(sigma[0]), float(sigma[-1])


#: The level range ``(l_min, l_max)`` of the model each table was found for (the published tables round its ends):
#: Stable Diffusion's scaled-linear betas for SD 1.5 and SDXL, EDM's [0.002, 700] for SVD.
AYS_RANGES: dict[str, tuple[float, float]] = {
    "sd15": _scaled_linear_level_range(),
    "sdxl": _scaled_linear_level_range(),
    "svd": (0.002, 700.0),
}


def _ramp(n: int) -> np.ndarray:
    """``u_i = i / (n - 1)`` for ``i = 0 .. n - 1`` (``[0]`` for ``n = 1``)."""
    return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)


def beta_fractions(n: int, a: float, b: float) -> np.ndarray:
    """``f_i = F^{-1}_{Beta(a, b)}(1 - u_i)``: the Beta(a, b) quantiles, from 1 (noisy end) to 0 (clean end).

    ``F^{-1}`` is the inverse regularised incomplete beta function ``I^{-1}(a, b)``; ``a = b = 0.6`` (the
    paper's and diffusers' default) puts more steps at both ends of the range.
    """
    from scipy.special import betaincinv  # scipy is imported only where a Beta spacing is asked for

    return np.asarray(betaincinv(a, b, 1.0 - _ramp(n)), dtype=np.float64)


def linear_quadratic_fractions(n: int, threshold_noise: float, linear_steps: int | None) -> np.ndarray:
    """Mochi's linear-then-quadratic fractions ``1 - f_i`` (1 at the noisy end, 0 at the clean end).

    With ``S = n - 1`` steps, ``L = linear_steps`` (default ``S // 2``) and ``tau = threshold_noise``:
    ``f_i = tau i / L`` for ``i <= L`` (L equal steps down to ``1 - tau``), then the quadratic with
    ``f(L) = tau``, ``f'(L) = tau / L`` and ``f(S) = 1``:
    ``f_i = tau + (tau / L)(i - L) + c (i - L)^2``, ``c = (L - tau S) / (L (S - L)^2)``.
    """
    steps = n - 1
    if steps < 2:
        return np.linspace(1.0, 0.0, n)
    lin = steps // 2 if linear_steps is None else linear_steps
    if not 1 <= lin <= steps - 1:
        raise ValueError(
            f"linear_steps: must lie in [1, {steps - 1}] for {n} times ({steps} steps), got {linear_steps!r}"
        )
    i = np.arange(n, dtype=np.float64)
    curvature = (lin - threshold_noise * steps) / (lin * (steps - lin) ** 2)
    quadratic = threshold_noise + threshold_noise / lin * (i - lin) + curvature * (i - lin) ** 2
    f = np.where(i <= lin, threshold_noise * i / lin, quadratic)
    f[-1] = 1.0
    return 1.0 - f


def kl_optimal_levels(n: int, level_min: float, level_max: float) -> np.ndarray:
    """``level_i = tan((1 - u_i) atan(level_max) + u_i atan(level_min))``: uniform steps in ``atan(level)``.

    ``level_max`` may be infinite (``atan = pi/2``, pure noise).
    """
    u = _ramp(n)
    return np.tan((1.0 - u) * math.atan(level_max) + u * math.atan(level_min))


def polyexponential_levels(n: int, log_min: float, log_max: float, rho: float) -> np.ndarray:
    """``log level_i = log level_min + (1 - u_i)^rho (log level_max - log level_min)`` (rho = 1: exponential)."""
    return np.exp(log_min + (1.0 - _ramp(n)) ** rho * (log_max - log_min))


def loglinear_resample(levels: tuple[float, ...], n: int) -> np.ndarray:
    """``n`` levels along a decreasing table: ``log level`` interpolated linearly in the table's fractional index
    (entry ``k`` of ``K`` at ``k / (K - 1)``, the new ones at ``u_i``); the table itself for ``n = K``."""
    table = np.log(np.asarray(levels, dtype=np.float64))
    return np.exp(np.interp(_ramp(n), np.linspace(0.0, 1.0, len(table)), table))
