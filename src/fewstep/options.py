"""Checks of scalar options: each names the option, the allowed values and what it got."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping, Sequence


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


def suggestion(value: object, choices: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    """`` (did you mean 'x'?)`` for a misspelled name: a case or separator variant, a known alias, or the closest
    choice; empty when nothing is close."""
    if not isinstance(value, str):
        return ""
    key = value.strip().lower().replace("-", "_").replace(" ", "_")
    folded = {c.lower(): c for c in choices}
    guess = folded.get(key) or (aliases or {}).get(key)
    if guess is None:
        close = difflib.get_close_matches(key, list(folded), n=1, cutoff=0.6)
        guess = folded[close[0]] if close else None
    return f" (did you mean {guess!r}?)" if guess is not None else ""
