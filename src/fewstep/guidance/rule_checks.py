"""Checks of guidance rules' options, shared by the rules: each names the option, what is allowed and what it got,
and runs when the rule is built (before any model call)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any


def finite_number(name: str, value: object) -> float:
    """``value`` as a finite float (TypeError for a non-number, ValueError for NaN/inf)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be a real number (a Python float or int), got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return v


def conditioning(name: str, value: object, needed_for: str) -> Mapping[str, Any]:
    """A branch's conditioning: a mapping of model keyword arguments (None is refused: ``needed_for`` says why)."""
    if value is None:
        raise ValueError(f"{name}: {needed_for} needs the unconditional inputs, e.g. {name}={{'y': null_label}}")
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: must be a mapping of model keyword arguments, got {type(value).__name__}")
    return value


def noise_interval(name: str, value: object) -> tuple[float, float]:
    """``(sigma_lo, sigma_hi)`` with ``0 <= sigma_lo < sigma_hi`` (``sigma_hi`` may be inf)."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError(f"{name}: must be a pair (sigma_lo, sigma_hi) of noise levels, got {value!r}")
    lo, hi = value
    for bound, v in (("sigma_lo", lo), ("sigma_hi", hi)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(float(v)):
            raise TypeError(f"{name}: {bound} must be a real number, got {v!r}")
    lo, hi = float(lo), float(hi)
    if not (0.0 <= lo < hi) or math.isinf(lo):
        raise ValueError(
            f"{name}: need 0 <= sigma_lo < sigma_hi (k-diffusion sigmas, sigma = exp(-lambda)), got ({lo}, {hi}); "
            "e.g. (0.28, 5.42) as in Kynkaanniemi et al. 2024 for EDM2"
        )
    return lo, hi
