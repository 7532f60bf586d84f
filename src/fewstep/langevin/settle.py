"""A warm-up that ends when the diagonal mass has settled, instead of after a fixed count.

Stan's windows (:func:`~fewstep.langevin.adaptation.mass_windows`) of a minimum warm-up run as usual; from the end
of its last slow window on, each window's diagonal inverse mass ``m_new`` is compared with the previous window's
``m_old`` by the scale-free statistic

    c = sqrt( mean_i  log(m_new_i / m_old_i)^2 )          (the RMS over the coordinates)

The mass counts as settled when the last two comparisons are both within ``tolerance`` (three consecutive windows
agree: two windows of a slowly decaying start transient can agree by chance, three rarely do); until then another
slow window, twice as long as the last (Stan's doubling), is appended before the terminal step-size buffer, as long
as the warm-up stays within ``max_warmup`` iterations. For a stationary Gaussian
target and ``n`` independent draws the log of a variance estimate has standard deviation ``sqrt(2 / (n - 1))``
(the sample variance is ``sigma^2 chi^2_{n-1} / (n - 1)``), so two settled windows of ``n_new`` and ``n_old``
draws give ``c`` about ``sqrt(2 / (n_new - 1) + 2 / (n_old - 1))`` (:func:`mass_change_noise`); autocorrelated
draws multiply it by the square root of the integrated autocorrelation time, which is why ``tolerance`` (not this
floor alone) decides: it should exceed the noise of the slowest coordinates' estimates, and a change larger than it
is a mass still drifting (a start transient being shed, or slow directions not yet explored).

The minimum warm-up's windows all run (today's fixed schedule is the minimum); a decision needs three estimates, so
a minimum with fewer windows extends at least to the third.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .adaptation import mass_windows

__all__ = ["MassChange", "SettlingSchedule", "mass_change", "mass_change_noise"]

#: the default ``warmup_tolerance`` of the kinetic samplers' settled warm-up (RMS of ``log(m_new / m_old)``)
DEFAULT_TOLERANCE = 0.4

#: the default cap of a settled warm-up, as a fraction of the kept draws
DEFAULT_MAX_WARMUP_FRACTION = 0.25


def mass_change(new: Tensor, old: Tensor) -> float:
    """``sqrt(mean log(new / old)^2)`` over every entry (``[d]`` or ``[chains, d]``): the RMS relative change of a
    diagonal inverse mass, scale-free (one host read per slow window)."""
    return float(torch.log(new / old).square().mean().sqrt())


def mass_change_noise(n_new: int, n_old: int) -> float:
    """The RMS ``log`` change between two variance estimates of a settled Gaussian target from ``n_new`` and
    ``n_old`` independent draws: ``sqrt(2 / (n_new - 1) + 2 / (n_old - 1))`` (module docstring)."""
    if n_new < 2 or n_old < 2:
        raise ValueError(f"mass_change_noise needs at least 2 draws per window, got {n_new} and {n_old}")
    return math.sqrt(2.0 / (n_new - 1) + 2.0 / (n_old - 1))


@dataclass(frozen=True)
class MassChange:
    """The comparison at the end of slow window ``window``: its statistic ``change`` against the previous window's
    estimate (``inf`` without one) and whether the warm-up went on with another window (``extended``)."""

    window: range
    change: float
    extended: bool


@dataclass
class SettlingSchedule:
    """The slow windows of a settled warm-up: those of a ``minimum`` warm-up (Stan's), then doubling windows while
    the last two :func:`mass_change` are not both within ``tolerance``, within ``max_warmup`` iterations (module
    docstring).

    :attr:`windows` and :attr:`length` (the warm-up's current length, terminal buffer included) grow as
    :meth:`end_window` extends the schedule; :attr:`history` records each comparison."""

    minimum: int
    tolerance: float
    max_warmup: int
    windows: list[range] = field(init=False)
    length: int = field(init=False)
    history: list[MassChange] = field(init=False, default_factory=list)
    _previous: Tensor | None = field(init=False, default=None)
    _last_change: float = field(init=False, default=math.inf)

    def __post_init__(self) -> None:
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, int | float) or not self.tolerance > 0:
            raise ValueError(
                f"warmup_tolerance must be a positive float (the RMS of log(m_new / m_old) at which the mass counts "
                f"as settled), got {self.tolerance!r}; {DEFAULT_TOLERANCE} is the default"
            )
        if isinstance(self.max_warmup, bool) or not isinstance(self.max_warmup, int) or self.max_warmup < self.minimum:
            raise ValueError(
                f"max_warmup must be an int >= warmup = {self.minimum} (the settled warm-up's cap), "
                f"got {self.max_warmup!r}"
            )
        self.windows = mass_windows(self.minimum)
        if not self.windows:
            raise ValueError(
                f"a settled warm-up (warmup_tolerance) compares slow mass windows: give warmup >= 20 (the minimum "
                f"warm-up), got {self.minimum}"
            )
        self.length = self.minimum
        self.term_buffer = self.minimum - self.windows[-1].stop

    def end_window(self, window: range, estimate: Tensor) -> bool:
        """Record the inverse mass ``estimate`` of slow ``window`` (just ended); return whether the warm-up goes on
        with a new window (then appended to :attr:`windows`, :attr:`length` grown)."""
        change = math.inf if self._previous is None else mass_change(estimate, self._previous)
        settled = max(change, self._last_change) <= self.tolerance
        self._previous, self._last_change = estimate, change
        extended = False
        if window == self.windows[-1] and not settled:
            start, size = window.stop, 2 * len(window)
            size = min(size, self.max_warmup - self.term_buffer - start)
            if size >= len(window):  # room for a window at least as long as the last, within the cap
                self.windows.append(range(start, start + size))
                self.length = start + size + self.term_buffer
                extended = True
        self.history.append(MassChange(window=window, change=change, extended=extended))
        return extended
