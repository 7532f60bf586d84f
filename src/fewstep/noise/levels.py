"""One Brownian path per sample in the schedule's time: noise that is the same path at every step count.

``fewstep.sample(..., seed=...)`` draws from per-sample generator streams (:mod:`fewstep.noise.streams`), which is
as cheap as ``generator=``. This sampler is for when the noise of runs at different step counts must be increments
of one Brownian motion per sample (path-by-path comparisons, strong-convergence studies):
``noise_sampler=brownian_level_sampler(schedule, noise, seeds)``.

The stochastic samplers ask for noise between two noise levels (``schedule.level``: sigma/alpha, or t for flows;
0 at the clean end, inf at alpha = 0). Sigma/alpha spans many decades (about 0.002 to 157 for DDPM's schedule,
80 for EDM) and is unbounded where alpha = 0, so the path's time is not the level but the schedule time of the
level, ``schedule.t_of_level(level)``: a monotone map onto the finite interval ``[min(0, t_min), t_max]``
(level 0 maps to its left end, level inf to ``t_max``). The noise of a step is the path's normalised increment
``(W(t_s) - W(t_t)) / sqrt(t_s - t_t)``, a standard normal, independent across the disjoint steps of a run,
and the same path whatever the step count. Sample ``b`` uses ``seeds[b]`` only, so its noise does not depend on
the batch it is drawn in.

The tree's tolerance is ``2**-12`` of the interval (12 levels): the path's law is exact at those dyadic times and
between them leaves out at most ``tol/12`` of the variance of ``W`` (less than 0.3% of a step's variance for
steps longer than ``t_max/200``), which keeps a query to a few dozen tree nodes. The tree is computed (float64)
on the state's device when that is a CUDA device, else on the CPU, where a 20-step run of 8 states of 4x32x32
spends about 4 s drawing noise; the random bits are the same everywhere, the last-place rounding of
``log``/``cos`` may differ between the CPU and CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..schedules import NoiseSchedule
from .brownian import BrownianPath, NoiseSampler, brownian_noise_sampler, per_sample_seeds

__all__ = ["TOL_FRACTION", "brownian_level_sampler"]

#: The Brownian tree's leaf length, as a fraction of the schedule's time interval.
TOL_FRACTION = 2.0**-12


def brownian_level_sampler(
    schedule: NoiseSchedule,
    like: Tensor,
    seed: int | Sequence[int] | Tensor,
    dtype: torch.dtype | None = None,
) -> NoiseSampler:
    """A ``noise_sampler(level_s, level_t)`` drawing sample ``b``'s noise from a Brownian path seeded by ``seeds[b]``.

    ``seed``: one integer (the seeds ``seed, seed + 1, ..., seed + B - 1``) or one integer per sample. The per-sample
    shape is ``like.shape[1:]``; results go to ``like``'s device in ``dtype`` (default ``like``'s dtype).
    """
    seeds = per_sample_seeds(seed, like.shape[0])
    t0, t1 = min(0.0, float(schedule.t_min)), float(schedule.t_max)
    path = BrownianPath(
        tuple(like.shape[1:]) or (1,),
        seeds,
        t0,
        t1,
        tol=TOL_FRACTION * (t1 - t0),
        dtype=dtype or like.dtype,
        device=like.device,
        compute_device=like.device if like.device.type == "cuda" else "cpu",  # float64: not on every accelerator
    )

    def path_time(level: float) -> float:
        if level <= 0.0:
            return t0
        if math.isinf(level):
            return t1
        return min(max(float(schedule.t_of_level(level)), t0), t1)

    sampler = brownian_noise_sampler(path, transform=path_time)
    if like.ndim > 1:
        return sampler
    return lambda s, t: sampler(s, t).reshape(len(seeds))
