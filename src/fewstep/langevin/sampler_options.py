"""Options of the samplers beyond the common ones: each sampler keeps its own in a dataclass, parsed here from the
``**options`` of the registry's call (an unknown name is a TypeError naming the allowed ones)."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, TypeVar

from ..options import suggestion

T = TypeVar("T")


def parse_options(cls: type[T], options: dict[str, Any], sampler: str) -> T:
    """``cls(**options)`` for a dataclass ``cls``, with a TypeError naming an option ``sampler`` does not take."""
    known = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    for name in options:
        if name not in known:
            raise TypeError(
                f"{sampler!r} got an unknown option {name!r}{suggestion(name, known)}; its options are: "
                f"{', '.join(known)}"
            )
    return cls(**options)


def positive_int(name: str, value: object, sampler: str, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum`` (ValueError naming ``sampler``'s option otherwise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} of {sampler!r} must be an int >= {minimum}, got {value!r}")
    return int(value)


def positive_float(name: str, value: object, sampler: str, *, maximum: float = float("inf")) -> float:
    """``value`` as a float in ``(0, maximum]`` (ValueError naming ``sampler``'s option otherwise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= maximum:
        bound = f" and <= {maximum}" if maximum != float("inf") else ""
        raise ValueError(f"{name} of {sampler!r} must be a float > 0{bound}, got {value!r}")
    return float(value)
