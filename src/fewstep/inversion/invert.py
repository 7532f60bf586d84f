"""``fewstep.inversion.invert``: a deterministic solver run from data to noise.

The probability-flow ODE is a bijection between the data end and ``t_max``; running a solver's update rule on the
node table of INCREASING times ``t_min = t_0 < t_1 < ... < t_N = t_max`` integrates it backwards. DDIM inversion
(Song, Meng & Ermon 2021, sec. 4.3; Mokady et al. 2023, "Null-text Inversion") is the first-order case:

    x_{i+1} = alpha_{i+1} x0_hat(x_i, t_i) + sigma_{i+1} eps_hat(x_i, t_i).

The exponential-integrator solvers (DPM-Solver++, UniPC; Lu et al. 2022, Zhao et al. 2023) step in
``lambda = log(alpha / sigma)``, and their updates stay valid for negative steps ``h_i = lambda_{i+1} - lambda_i``
(the phi-functions are analytic in h), so the same generators run on the increasing table. Which solvers keep their
order there was measured (the round-trip error of plain inversion falls at the solver's order as the NFE grows,
``tests/test_invert.py``); only those are allowed (:data:`INVERTIBLE`).

The inverted latent is the state at ``t_max`` from which :func:`fewstep.sample` on the same times, ended at
``t_min`` (``final="t_min"``), returns ``x0``, up to the two runs' discretisation errors:

    x0 ~ fewstep.sample(model, invert(model, x0, schedule, solver, nfe), schedule, solver, nfe, final="t_min")

``x0`` is taken as the state at the first (smallest) time, ``t_min`` unless ``spacing`` gives the times.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..context import RunContext
from ..guidance import GuidanceRule
from ..model import CallCount, Denoiser, EvaluationWrapper, Threshold
from ..model.network import CheckFinite
from ..nodes import NodeTable
from ..prepare import (
    as_denoiser,
    cfg_pp_solver,
    check_calls,
    check_counts,
    check_nfe,
    check_noise,
    check_rule_solver,
    node_times,
    state_dtype,
)
from ..sampling import integrate
from ..schedules import NoiseSchedule
from ..solvers import Solver, get_solver
from ..spacing import SpacingLike, is_named
from .fixed_point import FixedPoint, FixedPointReport, check_refine, refined_inversion

#: The deterministic solvers whose update rule, run on increasing times, integrates the ODE backwards at its order
#: (measured on the 2-D mixture under VP, EDM and Flow: plain inversion's round-trip error falls at the solver's
#: order as the NFE grows). Left out: the singlestep DPM-Solver-2/3 and ``exp_heun_2_x0`` (they assume the infinite
#: lambda-step comes first, as on a Flow's decreasing times), ``lms``/``ipndm_v``/``heunpp2``/``gradient_estimation``
#: (their error does not fall at their order backwards), and the solvers fitted to the forward direction.
INVERTIBLE: tuple[str, ...] = (
    "ddim",
    "euler",
    "heun",
    "deis_2",
    "deis_rho_2",
    "deis_rho_3",
    "dpmpp_2m",
    "dpmpp_3m",
    "res_multistep",
    "ipndm",
    "unipc_bh1",
    "unipc_bh2",
)


def invert(
    model: Callable[..., Tensor] | Denoiser,
    x0: Tensor,
    schedule: NoiseSchedule | None = None,
    solver: str | Solver = "ddim",
    nfe: int | None = None,
    spacing: SpacingLike = "logsnr",
    prediction: str = "auto",
    *,
    steps: int | None = None,
    time_input: str | Callable[[Tensor], Tensor] = "auto",
    model_kwargs: Mapping[str, Any] | None = None,
    guidance_scale: float = 1.0,
    uncond_kwargs: Mapping[str, Any] | None = None,
    guidance_rescale: float = 0.0,
    guidance: GuidanceRule | None = None,
    threshold: Threshold | None = None,
    rho: float | None = None,
    shift: float = 1.0,
    grad: bool = False,
    calls: CallCount | None = None,
    check_finite: CheckFinite = "end",
    wrappers: Sequence[EvaluationWrapper] = (),
    refine: FixedPoint | None = None,
    report: FixedPointReport | None = None,
    **solver_options: Any,
) -> Tensor:
    """Solve the probability-flow ODE from ``x0`` (the state at the smallest time) up to ``t_max``: the latent.

    The options are :func:`fewstep.sample`'s (guidance included), with the times run in increasing order: a named
    ``spacing`` gives the times of ``sample(..., final="t_min")`` reversed; given times must be strictly increasing.
    ``sample(model, latent, schedule, solver, nfe, spacing, final="t_min")`` (the same times, decreasing) is the
    round trip, whose error falls at the solver's order as ``nfe`` grows.

    Args:
        model: the network ``model(x, time, **model_kwargs)`` or a :class:`~fewstep.Denoiser`.
        x0: the data (any floating-point tensor with a batch dimension first).
        schedule: the model's :class:`~fewstep.NoiseSchedule` (ignored for a Denoiser).
        solver: a deterministic solver of :data:`INVERTIBLE` (a name or an instance); default ``"ddim"``.
        nfe, steps: the model evaluations (or steps) to spend, as in :func:`fewstep.sample`.
        spacing: a spacing name (default ``"logsnr"``) or the times themselves, strictly increasing.
        refine: a :class:`~fewstep.inversion.FixedPoint` to solve every step of a one-step solver (``ddim``,
            ``euler``, ``heun``) for the state the sampling step maps onto the previous one, by fixed-point
            iteration (:mod:`fewstep.inversion.fixed_point`); each correction costs one more step of calls, and
            reporting the residual one more per step.
        report: a :class:`~fewstep.inversion.FixedPointReport` that a refined inversion fills with each step's
            residual.

    Returns:
        The latent at ``t_max`` (the last time), with the shape, dtype and device of ``x0``.
    """
    check_noise(x0, "x0")
    denoiser = as_denoiser(
        model, schedule, prediction, time_input, model_kwargs, guidance_scale, uncond_kwargs, guidance_rescale,
        threshold, guidance,
    )  # fmt: skip
    slv = cfg_pp_solver(denoiser, check_invertible(get_solver(solver, **solver_options)))
    check_counts(nfe, steps, spacing)
    check_calls(calls)
    check_rule_solver(denoiser, slv)
    fixed_point = check_refine(refine, report, slv)
    times = increasing_times(denoiser.schedule, slv, nfe, steps, spacing, rho, shift)
    dtype = state_dtype(x0)
    budget = int(nfe) if nfe is not None and is_named(spacing) else None
    nodes = NodeTable.build(denoiser, times, False, x0.shape[0], x0.device, dtype, budget)
    expected = check_nfe(slv, nodes, nfe)
    start = x0.to(dtype)
    if start is x0:  # the caller's tensor is never written to
        start = x0.clone()
    run_calls = CallCount()
    stack = denoiser.stack(run_calls, slv.needs_eps, None, wrappers, check_finite, slv.name)
    try:
        if fixed_point is not None:
            latent = refined_inversion(slv, start, times, denoiser, stack, fixed_point, report, grad)
            stack.finish(latent)
            return latent.to(x0.dtype)
        latent = integrate(slv, start, nodes, RunContext(nodes), stack, grad)
    finally:
        if calls is not None:
            calls.add(run_calls)
    if run_calls.requests != expected:  # an internal invariant: the plan and the run must agree
        raise RuntimeError(f"solver {slv.name!r} asked for {run_calls.requests} evaluations, planned {expected}")
    return latent.to(x0.dtype)


def check_invertible(solver: Solver) -> Solver:
    """``solver`` itself when it is deterministic and in :data:`INVERTIBLE`; a ValueError naming the allowed ones
    (and, for a stochastic solver, the edit-friendly inversion) otherwise."""
    allowed = ", ".join(INVERTIBLE)
    if solver.stochastic:
        raise ValueError(
            f"solver: {solver.name!r} is stochastic, and a plain inversion needs a deterministic solver (one of "
            f"{allowed}, e.g. 'ddim'); to reproduce a sample with a stochastic (DDPM-type) sampler, use the "
            "edit-friendly inversion (fewstep.inversion.edit_friendly_invert), which stores the per-step noise"
        )
    if solver.name not in INVERTIBLE:
        raise ValueError(
            f"solver: {solver.name!r} is not checked to integrate the ODE backwards at its order on increasing "
            f"times; choose one of {allowed} (e.g. 'dpmpp_2m')"
        )
    return solver


def increasing_times(
    schedule: NoiseSchedule,
    solver: Solver,
    nfe: int | None,
    steps: int | None,
    spacing: SpacingLike,
    rho: float | None,
    shift: float,
) -> np.ndarray:
    """The node times of the inversion, increasing: a named spacing's times of ``sample(..., final="t_min")``
    reversed, or the given times (ValueError unless strictly increasing, inside the schedule's range)."""
    if not is_named(spacing):
        given = spacing.detach().cpu().to(torch.float64).numpy() if isinstance(spacing, Tensor) else spacing
        t = np.asarray(given, dtype=np.float64)
        if t.ndim != 1 or t.size < 2 or not np.all(np.diff(t) > 0):
            raise ValueError(
                f"spacing: inversion runs from data to noise, so given times must be strictly increasing (at least "
                f"two, t_min first), got {t.tolist()}; reverse the sampling times (times[::-1])"
            )
        spacing = torch.from_numpy(t[::-1].copy())
    return node_times(schedule, solver, nfe, steps, spacing, False, rho, shift)[::-1].copy()
