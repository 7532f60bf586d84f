"""Hard calibration samples: the noise whose few-step samples end far from the teacher's.

Where the data has several modes, a few-step sampler's RMSE is decided by the few trajectories that it sends to another
mode than the exact solve does (under CFG 7.5 on the 64-D mixture of docs/guidance.md at NFE 10, fewer than 2% of them
hold over 95% of the squared error). A calibration batch drawn at random holds few such trajectories, so the times
fitted to them do not carry over to fresh noise. :func:`hard_samples` finds them in a large pool of noise, for a
stratified calibration batch that holds more of them: with ``d_i`` the RMS distance between probe ``p``'s sample and the
teacher's from noise ``i``,

    hard_i = max_p d_i(p) > factor * median_i d_i(p).

The teacher is :func:`fewstep.tune.teacher.solve_teacher`'s (about ``3 grid`` calls); each probe, a fixed few-step
configuration at the NFE to be tuned, spends ``nfe`` more (with ``probes=None`` every candidate runs: 52 on a VP
schedule). A batched call is one call, so the pool's size costs time, not calls.

:func:`fewstep.tune.strata.stratify` draws such a batch with the weights that keep its errors unbiased;
``fewstep.tune(..., pool=...)`` does all of it with the tuning's own teacher and starts as the probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..model import Denoiser
from ..prepare import as_denoiser
from ..schedules import NoiseSchedule
from ..spacing import CONTINUOUS_SPACINGS, Spacing, model_times
from .budget import Budget, square_errors
from .strata import KEEP, flag_hard
from .teacher import solve_teacher

if TYPE_CHECKING:
    from ..guidance import GuidanceRule


def hard_samples(
    model: Callable[..., Tensor] | Denoiser,
    schedule: NoiseSchedule | None = None,
    *,
    noise: Tensor,
    nfe: int,
    probes: Sequence[tuple[str, str | Spacing]] | None = None,
    factor: float = 10.0,
    grid: int = 100,
    prediction: str = "auto",
    time_input: str | Callable[[Tensor], Tensor] = "auto",
    model_kwargs: Mapping[str, Any] | None = None,
    guidance_scale: float = 1.0,
    uncond_kwargs: Mapping[str, Any] | None = None,
    guidance_rescale: float = 0.0,
    guidance: GuidanceRule | None = None,
) -> Tensor:
    """The samples of ``noise`` (a (B, ...) batch at ``t_max``) on which some probe's ``nfe``-evaluation sample is
    more than ``factor`` times that probe's median distance from the teacher's (module docstring), as a (B,) bool
    mask.

    Args:
        model, schedule, prediction, time_input, model_kwargs, guidance_scale, uncond_kwargs, guidance_rescale,
            guidance: as for :func:`fewstep.sample` (per-sample conditioning is allowed: one run covers the batch).
        noise: the pool, at least 2 samples.
        nfe: the probes' network evaluations (the NFE to be tuned).
        probes: the fixed (solver, spacing) configurations run at ``nfe``, at least one; None: the :data:`KEEP`
            most accurate of :func:`fewstep.tune`'s start solvers on the continuous spacings, on the pool (each
            candidate ``nfe`` calls).
        factor: how many times the median distance makes a sample hard (> 1).
        grid: the teacher's number of logSNR-uniform times, as for :func:`fewstep.tune`.
    """
    from ..sampling import sample

    if not isinstance(noise, Tensor) or noise.ndim < 2 or noise.shape[0] < 2 or not noise.dtype.is_floating_point:
        shape = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"noise: need a floating-point batch (B, ...) of at least 2 samples, got {shape}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe: must be an integer >= 1, got {nfe!r}")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 1:
        raise ValueError(f"factor: must be a number > 1, got {factor!r}")
    if probes is not None and not probes:
        raise ValueError("probes: give at least one (solver, spacing) pair, e.g. (('unipc_bh2', 'karras'),)")
    denoiser = as_denoiser(
        model, schedule, prediction, time_input, model_kwargs, guidance_scale, uncond_kwargs, guidance_rescale,
        None, guidance,
    )  # fmt: skip
    for pair in probes or ():
        if not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], str):
            raise TypeError(f"probes: need (solver name, spacing) pairs, got {pair!r}")
        if not isinstance(pair[1], str | Spacing):
            raise TypeError(f"probes: the spacing of {pair[0]!r} must be a name or a Spacing, got {pair[1]!r}")
        refusal = _refusal(denoiser, nfe, *pair)
        if refusal:
            raise ValueError(f"probes: {refusal}")
    chosen = list(probes) if probes is not None else _candidates(denoiser, nfe)
    if not chosen:
        raise ValueError(f"nfe: none of the candidate probes can spend exactly {nfe} evaluations; give probes=")
    noise = noise.detach()
    teacher = solve_teacher(denoiser, noise, Budget(3 * grid), grid).final

    def distances(solver: str, spacing: str | Spacing) -> Tensor:  # each sample's RMS distance to the teacher's
        with torch.no_grad():
            x = sample(denoiser, noise, solver=solver, nfe=nfe, spacing=spacing, progress=False)
        distance = square_errors(x, teacher).sqrt()
        return torch.nan_to_num(distance, nan=math.inf)  # a diverged probe sample is a hard one (and ranks last)

    runs = [distances(solver, spacing) for solver, spacing in chosen]
    return flag_hard(runs if probes is not None else sorted(runs, key=lambda d: float(d.pow(2).mean()))[:KEEP], factor)


def _refusal(denoiser: Denoiser, nfe: int, solver: str, spacing: str | Spacing) -> str | None:
    """Why ``solver`` on ``spacing`` cannot run ``nfe`` evaluations on the denoiser's schedule (no model call), or
    None."""
    from .api import _spends  # imported here: the api module imports the optimisers

    steps = _spends(solver, nfe, denoiser)
    if steps is None:
        return f"{solver!r} is not a solver that spends exactly nfe={nfe} evaluations"
    try:
        model_times(denoiser.schedule, steps, spacing)
    except ValueError as err:
        return f"the spacing of {solver!r}: {err}"
    return None


def _candidates(denoiser: Denoiser, nfe: int) -> list[tuple[str, str | Spacing]]:
    """The candidate probes that can run: :func:`fewstep.tune`'s start solvers, each on every continuous spacing."""
    from .api import _start_names

    pairs = [(n, sp) for n in dict.fromkeys(_start_names(denoiser, nfe, None)) for sp in CONTINUOUS_SPACINGS]
    return [(n, sp) for n, sp in pairs if _refusal(denoiser, nfe, n, sp) is None]
