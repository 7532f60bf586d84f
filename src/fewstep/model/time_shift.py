"""The Time-Shift Sampler (Li et al. 2024, "Alleviating Exposure Bias in Diffusion Models through Sampling with
Shifted Time Steps"), as an option of every solver: ``fewstep.sample(..., time_shift=TimeShift(...))``.

Exposure bias: along a sampled trajectory the state ``x_t`` is not distributed as the training marginal at ``t``;
its noise level better matches a nearby time ``t_s``. At each evaluation the solver asks for (time ``t``, at
``t >= cutoff``), the per-sample variance of the state's elements is compared with the variance the schedule gives
a training input at each candidate time ``c`` of a window around ``t`` (paper, Sec. 4),

    v(c) = alpha(c)^2 data_var + sigma(c)^2,        t_s = argmin_c |Var(x_t) - v(c)|,

with the candidates ``c`` at ``points`` log-SNRs evenly spaced in ``[lambda_t - window, lambda_t + window]``
(clamped to the schedule's time range). The network is called at ``t_s`` (per sample) and its output read at
``t_s``: the noise estimate ``eps_hat`` comes from the conversion of the network's prediction at ``t_s``, and the
data estimate from the solver's own node, ``x0_hat = (x_t - sigma_t eps_hat) / alpha_t`` (the paper's
Algorithm 2: DDIM keeps the coefficients of ``t`` and feeds it ``eps(x_t, t_s)``). The solver is unchanged: it
still steps with its own grid coefficients.

Cost: one reduction over the state and an ``argmin`` over the candidates per evaluation, all on the device; the
selected model time and conversion coefficients are gathered from tables built once per evaluation time (on the
CPU, moved to the device in one copy), so the step loop has no host-device synchronisation. The candidates'
schedule values are computed before the loop for the grid nodes, and at its first use for an intermediate
time of a singlestep solver.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from ..options import real_option
from ..predictions import conversion
from .point import Point
from .stack import Evaluation, ModelOutput, Prediction, convert

if TYPE_CHECKING:
    from .denoiser import Denoiser


@dataclass(frozen=True)
class TimeShift:
    """Options of the Time-Shift Sampler (module docstring).

    Args:
        window: half-width of the search window in log-SNR ``lambda = log(alpha/sigma)`` (0 turns it off).
        points: the number of candidate times in the window (odd numbers include ``t`` itself).
        cutoff: shift only the evaluations at schedule times ``t >= cutoff`` (the paper's cut-off: the noisier
            part of the run); the default shifts every evaluation.
        data_var: the variance of the elements of a clean sample (as the data is scaled for the model); 0 gives
            the official code's test against ``sigma(c)^2`` alone.
    """

    window: float = 0.1
    points: int = 9
    cutoff: float = -math.inf
    data_var: float = 0.0

    def __post_init__(self) -> None:
        real_option("time_shift.window", self.window)
        if isinstance(self.points, bool) or not isinstance(self.points, numbers.Integral) or self.points < 1:
            raise ValueError(f"time_shift.points: must be an integer >= 1, got {self.points!r}")
        cutoff = self.cutoff
        if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real) or math.isnan(cutoff):
            raise ValueError(f"time_shift.cutoff: must be a schedule time (a real number), got {cutoff!r}")
        real_option("time_shift.data_var", self.data_var)


def check_time_shift(value: object) -> TimeShift | None:
    """``time_shift=`` as a :class:`TimeShift`: None, an instance, or a dict of its options."""
    if value is None or isinstance(value, TimeShift):
        return value
    if isinstance(value, Mapping):
        allowed = ("window", "points", "cutoff", "data_var")
        unknown = sorted(k for k in value if k not in allowed)
        if unknown:
            raise TypeError(f"time_shift: unknown option(s) {unknown}; allowed: {list(allowed)}")
        return TimeShift(**value)
    raise TypeError(f"time_shift: must be None, a fewstep.TimeShift or a dict, got {type(value).__name__}")


class _Table(NamedTuple):
    """The candidates of one evaluation time, on the device: target variances, model times, and the noise
    estimate's conversion ``eps = eps_x x + eps_out out`` at each candidate."""

    var: Tensor
    time: Tensor
    eps_x: Tensor
    eps_out: Tensor


class ShiftedEvaluation:
    """The conversion layer of the model-call stack with time shifting (module docstring): the output is called at
    the per-sample shifted model time, and ``(x0_hat, eps_hat)`` read as described there."""

    def __init__(
        self,
        shift: TimeShift,
        denoiser: Denoiser,
        output: ModelOutput,
        needs_eps: bool,
        points: Iterable[Point | None],
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.shift, self.denoiser, self.output, self.needs_eps = shift, denoiser, output, needs_eps
        self.device, self.dtype = device, dtype
        self._tables: dict[float, _Table | None] = {}
        for p in points:
            if p is not None:
                self.table(p)

    def table(self, p: Point) -> _Table | None:
        """The candidates of point p (None where it is not shifted)."""
        if p.t in self._tables:
            return self._tables[p.t]
        sh, sched = self.shift, self.denoiser.schedule
        table = None
        if sh.window > 0 and p.t >= sh.cutoff and p.alpha > 0 and p.sigma > 0:
            n = int(sh.points)
            lam = torch.tensor([p.lam + sh.window * (2 * j / (n - 1) - 1) if n > 1 else p.lam for j in range(n)])
            tt = sched.t_of_lambda(lam.double()).clamp(sched.t_min, sched.t_max)
            if n % 2:
                tt[n // 2] = p.t  # the window's centre is t itself, exactly
            alpha, sigma = sched.alpha(tt), sched.sigma(tt)
            dalpha, dsigma = sched.dalpha(tt), sched.dsigma(tt)
            rows = [
                conversion(self.denoiser.prediction, *map(float, v))
                for v in zip(alpha, sigma, dalpha, dsigma, strict=True)
            ]
            time_dtype = self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32
            host = torch.stack(
                [
                    alpha**2 * sh.data_var + sigma**2,  # v(c) = alpha(c)^2 data_var + sigma(c)^2
                    torch.tensor([r.eps_x for r in rows], dtype=torch.float64),
                    torch.tensor([r.eps_out for r in rows], dtype=torch.float64),
                ]
            )
            var, eps_x, eps_out = host.to(device=self.device, dtype=self.dtype)
            time = torch.as_tensor(self.denoiser.time_of(tt), dtype=torch.float64).to(self.device, time_dtype)
            table = _Table(var, time, eps_x, eps_out)
        self._tables[p.t] = table
        return table

    def __call__(self, x: Tensor, p: Point) -> Prediction:
        table = self.table(p)
        if table is None:
            return convert(x, self.output(x, p.model_time, p.t), p, self.needs_eps)
        var = x.reshape(x.shape[0], -1).var(dim=1, unbiased=False)  # the per-sample variance of x_t
        pick = (var[:, None] - table.var).abs().argmin(dim=1)  # t_s = argmin_c |Var(x_t) - v(c)|
        shape = (-1,) + (1,) * (x.ndim - 1)
        # eps_hat = eps_x(t_s) x + eps_out(t_s) out(x, t_s);  x0_hat = (x - sigma_t eps_hat) / alpha_t
        out = self.output(x, table.time[pick], p.t)
        e = torch.addcmul(x * table.eps_x[pick].view(shape), out, table.eps_out[pick].view(shape))
        x0 = (x - p.sigma * e) / p.alpha
        return x0, (e if self.needs_eps else None)


def shifted_layer(
    shift: TimeShift | None,
    denoiser: Denoiser,
    points: Iterable[Point | None],
    device: torch.device,
    dtype: torch.dtype,
) -> Callable[[ModelOutput, bool], Evaluation] | None:
    """The conversion layer for a checked ``time_shift=`` (:func:`check_time_shift`) as ``Denoiser.stack``'s
    ``base``; None when it is off (the plain conversion)."""
    if shift is None:
        return None
    return lambda output, needs_eps: ShiftedEvaluation(shift, denoiser, output, needs_eps, points, device, dtype)
