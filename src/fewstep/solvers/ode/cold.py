"""Cold diffusion sampling (Bansal et al. 2023, "Cold Diffusion: Inverting Arbitrary Image Transforms Without
Noise", Alg. 1 and 2) for a user-given deterministic degradation ``D(x0, s)`` and its learned restoration
``R(x, s) ~ x0``.

The severities ``s_0 > s_1 > ... > s_K = 0`` (``D(x0, 0) = x0``) are walked down from ``x = x_{s_0}``:

- ``"improved"`` (Alg. 2, the paper's sampler): ``x_{s'} = x_s - D(R(x_s, s), s) + D(R(x_s, s), s')``;
- ``"naive"`` (Alg. 1): ``x_{s'} = D(R(x_s, s), s')``.

For a degradation linear in the severity, ``D(x0, s) = x0 + s e`` with ``e`` independent of ``x0``, the improved
step is exact whatever the restoration returns (``x_{s'} = x_s - (s - s') e``), and more generally it makes an
error of the restoration enter only through the change of ``D`` over the step (the paper's first-order argument):
this is why it tolerates imperfect restorers that the naive sampler does not. The degradation is deterministic,
so the sampler is not a probability-flow solver (no schedule, no order); it calls the restoration once per step
and the degradation twice, and keeps one state.

This is not a registered solver: it works on any deterministic degradation (blur, masking, pixelation,
interpolation towards a fixed image), not on a :class:`~fewstep.schedules.NoiseSchedule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from torch import Tensor

ALGORITHMS = ("improved", "naive")


class Degradation(Protocol):
    """``D(x0, s)``: the degraded image at severity ``s`` (``D(x0, 0) = x0``)."""

    def __call__(self, x0: Tensor, s: float) -> Tensor: ...


class Restoration(Protocol):
    """``R(x, s)``: the estimate of the clean image from a degraded one at severity ``s``."""

    def __call__(self, x: Tensor, s: float) -> Tensor: ...


def cold_sample(
    restore: Restoration,
    degrade: Degradation,
    x: Tensor,
    severities: Sequence[float],
    *,
    algorithm: str = "improved",
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Restore ``x`` (degraded at ``severities[0]``) down the decreasing ``severities`` (module docstring). The
    last severity is usually 0 (the clean image; then the result is ``x_0``). ``callback`` gets ``{"i", "s",
    "s_next", "x", "denoised"}`` after each step."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: choose 'improved' (Alg. 2) or 'naive' (Alg. 1), got {algorithm!r}")
    if not callable(restore) or not callable(degrade):
        raise TypeError("restore, degrade: need callables R(x, s) and D(x0, s)")
    if not isinstance(x, Tensor):
        raise TypeError(f"x: need a tensor (the degraded image), got {type(x).__name__}")
    levels = [float(s) for s in severities]
    if len(levels) < 2 or not all(math.isfinite(s) for s in levels):
        raise ValueError(f"severities: need at least two finite values, got {severities!r}")
    if any(b >= a for a, b in zip(levels[:-1], levels[1:], strict=True)):
        raise ValueError(f"severities: need strictly decreasing values (the last usually 0), got {severities!r}")
    for i, (s, s_next) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
        x0 = restore(x, s)
        if algorithm == "improved":
            x = x - degrade(x0, s) + degrade(x0, s_next)
        else:
            x = degrade(x0, s_next)
        if callback is not None:
            callback({"i": i, "s": s, "s_next": s_next, "x": x, "denoised": x0})
    return x


__all__ = ["ALGORITHMS", "Degradation", "Restoration", "cold_sample"]
