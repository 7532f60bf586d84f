"""Checks of scalar options: each names the option, the allowed values and what it got."""

from __future__ import annotations

import math
import numbers


def real_option(name: str, value: object, low: float = 0.0, high: float = math.inf, allow_inf: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (TypeError for a non-number, ValueError out of range)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf) or not low <= v <= high:
        bound = f"<= {high}" if math.isfinite(high) else "finite" if not allow_inf else ""
        raise ValueError(f"{name}: must be >= {low}{' and ' + bound if bound else ''}, got {value!r}")
    return v


def bool_option(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: must be a bool, got {value!r}")
    return value
