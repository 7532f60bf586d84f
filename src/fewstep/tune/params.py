"""The smooth parameterisation of a run's model-evaluation times that :mod:`~fewstep.tune.dmn` and
:mod:`~fewstep.tune.ld3` optimise (as in LD3, Tong et al. 2025: increments in logSNR through a softmax).

With ``u = -lambda(t)`` (``lambda = log(alpha / sigma)``) over the schedule's span ``[u_lo, u_hi]`` (an infinite
``u_hi`` at alpha(t_max) = 0 mirrored as :func:`fewstep.spacing.model_times` does), ``n`` times are

    t_0 = t_max,    u_k = u_hi - (u_hi - u_lo) sum_{i<k} softmax(z)_i    (k = 1 .. n-1),

with ``z`` of length ``n``: ``n - 1`` increments and a last slack entry, the part of the span left below the last
time (so the last time may stay above ``t_min``). Every ``z`` gives strictly decreasing times in the range.

:meth:`LogSNRIncrements.free_times` is the same map in torch, differentiable in ``z``: ``t = t(lambda)`` is taken
from the schedule's exact inverse and its derivative from ``dt/dlambda = 1 / lambda'(t)``, ``lambda' = alpha'/alpha
- sigma'/sigma`` (so schedules whose inverse is a table lookup differentiate too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..schedules import NoiseSchedule

#: Smallest share of the span an increment or the slack starts at when converting given times to logits.
FLOOR = 1e-4


@dataclass(frozen=True)
class LogSNRIncrements:
    """Times <-> logits for ``n`` times on ``schedule`` (module docstring)."""

    schedule: NoiseSchedule
    n: int

    def span(self) -> tuple[float, float]:
        """``(u_lo, u_hi)``: -lambda at t_min, and at t_max (mirrored when infinite)."""
        lo = -float(self.schedule.lambda_(self.schedule.t_min))
        hi = -float(self.schedule.lambda_(self.schedule.t_max))
        if not math.isfinite(hi):
            hi = -lo if lo < 0 else 2 * lo + 1.0
        return lo, hi

    def times(self, z: np.ndarray) -> np.ndarray:
        """The ``n`` times of logits ``z`` (float64, strictly decreasing, the first ``t_max``)."""
        z = np.asarray(z, dtype=np.float64)
        if z.shape != (self.n,):
            raise ValueError(f"z: need {self.n} logits, got shape {z.shape}")
        share = np.exp(z - z.max())
        share /= share.sum()  # softmax(z)
        lo, hi = self.span()
        u = hi - (hi - lo) * np.cumsum(share)[: self.n - 1]  # u_k, k = 1 .. n-1
        t = self.schedule.t_of_lambda(torch.from_numpy(-u)).numpy()
        times = np.concatenate([[self.schedule.t_max], np.clip(t, self.schedule.t_min, self.schedule.t_max)])
        for k in range(1, self.n):  # rounding in t_of_lambda must not make two times equal
            if times[k] >= times[k - 1]:
                times[k] = np.nextafter(times[k - 1], -np.inf)
        return times

    def free_times(self, z: Tensor) -> Tensor:
        """The times ``t_1 .. t_{n-1}`` of logits ``z`` (a float64 tensor), differentiable in ``z`` (module
        docstring); equal to :meth:`times` ``[1:]`` but for its tie-breaking of rounded times."""
        if z.shape != (self.n,):
            raise ValueError(f"z: need {self.n} logits, got shape {tuple(z.shape)}")
        lo, hi = self.span()
        u = hi - (hi - lo) * torch.cumsum(torch.softmax(z.to(torch.float64), 0), 0)[: self.n - 1]
        sched = self.schedule
        t0 = sched.t_of_lambda(-u.detach()).clamp(sched.t_min, sched.t_max)
        slope = sched.dalpha(t0) / sched.alpha(t0) - sched.dsigma(t0) / sched.sigma(t0)  # d lambda / dt
        return t0 + (-u - (-u).detach()) / slope

    def logits(self, times: np.ndarray) -> np.ndarray:
        """Logits whose :meth:`times` are (close to) ``times``: each increment and the slack at least
        :data:`FLOOR` of the span."""
        t = np.asarray(times, dtype=np.float64)
        if t.shape != (self.n,):
            raise ValueError(f"times: need {self.n} times, got shape {t.shape}")
        lo, hi = self.span()
        u = np.concatenate([[hi], -self.schedule.lambda_(torch.from_numpy(t[1:].copy())).numpy(), [lo]])
        share = np.maximum(-np.diff(u) / (hi - lo), FLOOR)
        return np.log(share / share.sum())
