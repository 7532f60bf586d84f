"""``fewstep.sample``: the one entry point from a model and a noise tensor to samples.

A run is a short sequence of named steps: build the Denoiser and the solver, plan the node table and the NFE,
make the run context (noise, trajectory, callback, progress), build the model-call stack, and drive the solver's
update rule with it (see docs/architecture.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from .adjoint import AdjointODE, GradMode, check_grad, drive_adjoint
from .context import Callback, RunContext
from .guard import DivergenceGuard
from .guidance import GuidanceRule
from .model import CallCount, Denoiser, EvaluationWrapper, ModelStack, Threshold
from .model.network import CheckFinite
from .model.time_shift import TimeShift, check_time_shift, shifted_layer
from .nodes import NodeTable
from .noise.source import NoiseSource
from .options import bool_option
from .prepare import (
    Final,
    as_denoiser,
    cfg_pp_solver,
    check_calls,
    check_counts,
    check_final,
    check_nfe,
    check_noise,
    check_rule_solver,
    check_sde_window,
    check_seed_promise,
    check_trajectory,
    node_times,
    pick_defaults,
    run_context,
    state_dtype,
    unpack_tuned,
)
from .resume import Checkpoint, Resumption, SamplingState, StopRun
from .schedules import NoiseSchedule
from .solvers import Solver, get_solver
from .solvers.base import drive_counted
from .spacing import SpacingLike, is_named
from .trajectory import Trajectory
from .tune.tuned import TunedSampler


def sample(
    model: Callable[..., Tensor] | Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule | None = None,
    solver: str | Solver | TunedSampler | None = None,
    nfe: int | None = None,
    spacing: SpacingLike | None = None,
    prediction: str = "auto",
    generator: torch.Generator | None = None,
    *,
    steps: int | None = None,
    final: Final = "zero",
    time_input: str | Callable[[Tensor], Tensor] = "auto",
    model_kwargs: Mapping[str, Any] | None = None,
    guidance_scale: float = 1.0,
    uncond_kwargs: Mapping[str, Any] | None = None,
    guidance_rescale: float = 0.0,
    guidance: GuidanceRule | None = None,
    threshold: Threshold | None = None,
    rho: float | None = None,
    callback: Callback | None = None,
    progress: bool | None = None,
    grad: bool | str | AdjointODE = False,
    noise_sampler: Callable[[float, float], Tensor] | None = None,
    shift: float = 1.0,
    seed: int | Sequence[int] | Tensor | None = None,
    trajectory: Trajectory | None = None,
    sde_window: tuple[float, float] | None = None,
    time_shift: TimeShift | Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
    check_finite: CheckFinite = "end",
    strict: bool = False,
    checkpoint: Checkpoint | None = None,
    resume: SamplingState | None = None,
    wrappers: Sequence[EvaluationWrapper] = (),
    **solver_options: Any,
) -> Tensor:
    """Solve from ``noise`` (the state at the first time, ``t_max`` unless ``spacing`` gives times) to data.

    Args:
        model: the network, called as ``model(x, time, **model_kwargs)``, or a prepared :class:`Denoiser`.
        noise: the initial state ``x_{t_max}`` (N(0, I) for VP schedules, scaled by sigma_max for VE/EDM).
        schedule: the :class:`NoiseSchedule` the model was trained with (ignored if ``model`` is a Denoiser).
        solver: a name from :func:`fewstep.solvers.available` or a :class:`Solver` instance. None (the default): the
            solver measured best for the schedule's family and the NFE (:mod:`fewstep.defaults`). A
            :class:`fewstep.tune.TunedSampler` (:func:`fewstep.tune`) runs its solver on its times with exactly its
            ``nfe`` evaluations (leave ``nfe``, ``steps``, ``spacing`` and the solver options out).
        nfe: the exact number of model evaluations to spend (give this or ``steps``).
        spacing: a spacing name (:mod:`fewstep.spacing`), a :class:`fewstep.spacing.Spacing` with its options
            (``Spacing("beta", a=0.5, b=0.7)``), or the model-evaluation times themselves (then ``nfe``/``steps``
            may be left out, or are checked against the times). None (the default): with no ``solver`` either, the
            measured one of :mod:`fewstep.defaults`; with a ``solver``, ``"logsnr"``.
        rho: the ``rho`` option of the ``"karras"`` (default 7) and ``"polyexponential"`` (default 1) spacings;
            None: the spacing's default (or its :class:`~fewstep.spacing.Spacing`'s). Ignored by other spacings.
        prediction: what the model returns: epsilon, sample, v_prediction, score or velocity; ``"auto"`` (the
            default): velocity for a :class:`~fewstep.Flow` schedule, epsilon otherwise.
        generator: the ``torch.Generator`` of a stochastic solver's per-step noise (``torch.randn``); the run is
            deterministic given it. Deterministic solvers ignore it.
        steps: the number of solver steps (instead of ``nfe``).
        final: ``"zero"`` ends with a step to sigma = 0 (the clean data); ``"t_min"`` ends at the last time.
        time_input: the model's time convention, see :class:`Denoiser`.
        callback: called after each step with ``{"i", "t", "t_next", "x", "denoised"}``: the step's start time ``t``
            (where ``denoised`` was estimated) and the time ``t_next`` of the state ``x`` after it (None at the clean
            end, where ``x`` is the data).
        progress: show a tqdm bar (default: when the run spends 100 or more evaluations).
        grad: record the autograd graph through the run (off by default, as in diffusers pipelines): ``True``, plain
            autograd (memory grows with every evaluation's activations); ``"adjoint"``, the discrete adjoint of the
            solver's steps (the same gradient; each network call is recomputed in the backward pass, so memory holds
            one state per evaluation plus one network's activations); ``"adjoint_ode"`` or
            :class:`fewstep.adjoint.AdjointODE`, the continuous adjoint of the probability-flow ODE (AdjointDPM;
            memory independent of the steps; deterministic solvers). Gradients reach the noise, tensors of
            ``model_kwargs`` and the model's parameters and closed-over tensors (:mod:`fewstep.adjoint`).
        noise_sampler: instead of ``generator``, the per-step noise of a stochastic solver:
            ``noise_sampler(level_s, level_t)`` returns a standard normal tensor shaped like ``noise`` for the step
            between the two noise levels (k-diffusion's convention; levels are ``schedule.level``: sigma/alpha,
            or t for flows), e.g. :func:`fewstep.noise.brownian_noise_sampler` of a Brownian path.
        shift: the SD3/Flux timestep shift of flow schedules, ``t -> shift t / (1 + (shift - 1) t)`` (scaled to
            keep ``t_max``) after the spacing; see :func:`fewstep.spacing.model_times`. ValueError on other schedules.
        seed: per-sample seeds of a stochastic solver's noise (instead of ``generator``/``noise_sampler``): one
            integer (the seeds ``seed, ..., seed + B - 1``) or one integer per sample (a sequence or 1-D tensor). Each
            sample draws from its own generator stream (:class:`fewstep.noise.SeededNoise`), so its noise depends on
            its seed only, not on the batch it is drawn in, at the cost of ``generator=``. The start noise is still
            ``noise``.
        trajectory: a :class:`fewstep.trajectory.Trajectory` to record the run in: every state, and for every step
            its Gaussian transition (mean, std, noise) and log-probability (see :func:`sample_with_logprob`).
        sde_window: ``(t_hi, t_lo)`` in schedule time: a stochastic solver adds noise only on the steps starting at
            a time in ``[t_lo, t_hi]`` and takes its deterministic (eta = 0; ``edm_sde``: no churn) step elsewhere.
        time_shift: the Time-Shift Sampler (Li et al. 2024) for any solver: a :class:`fewstep.model.TimeShift`
            (or a dict of its options); the network is called at the time of a window around each requested time
            whose noise variance best matches the state's (see :mod:`fewstep.model.time_shift`). None: off.
        guidance: a guidance rule of :mod:`fewstep.guidance` instead of ``guidance_scale`` (e.g. a
            :class:`~fewstep.guidance.ClassifierFreeGuidance`, or a rule of your own).
        calls: a :class:`fewstep.model.CallCount` to which the run adds its model calls (network calls, branch
            evaluations, substituted evaluations, backward passes).
        wrappers: layers of the model-call stack on ``(x0_hat, eps_hat)``, innermost first
            (:class:`fewstep.model.EvaluationWrapper`: ``wrap(inner, needs_eps, calls) -> evaluation``), e.g. a cache that
            answers some requests without the network (counted in ``calls.substituted``).
        check_finite: ``"end"`` checks the result once for NaN/inf (NonFiniteModelOutput); ``"each"`` checks every
            model output and names the first non-finite evaluation and its time (at once on the CPU, after the run
            without a host-device sync on accelerators), at the cost of one reduction over the state per call.
        strict: check the divergence guard (:mod:`fewstep.guard`) after every step and raise
            :class:`~fewstep.guard.DivergenceError` at the first step whose state grew far beyond the diffusion's
            marginal scale (one host-device synchronisation per step). By default the guard's per-step ratios stay
            on the device and are checked once after the run, with a :class:`~fewstep.guard.DivergenceWarning`
            naming the solver, step and time.
        checkpoint: a :class:`fewstep.Checkpoint` ``(step=k)``: stop after step ``k``, return the state at node
            ``k + 1`` and keep the :class:`fewstep.SamplingState` to finish from in ``checkpoint.state``
            (:mod:`fewstep.resume`).
        resume: a :class:`fewstep.SamplingState` saved by a ``checkpoint``: with the same other arguments, finish
            that run, bit-identically to a run that never stopped (ValueError naming what differs otherwise).
        solver_options: options of the named solver (e.g. ``lower_order_final=False``).

    Returns:
        The sample, with the shape, dtype and device of ``noise``. Float16/bfloat16 noise is integrated in
        float32; the model is called in its own dtype.
    """
    # 1. check every option (each error names its option) before any model call
    check_noise(noise)
    denoiser = as_denoiser(
        model, schedule, prediction, time_input, model_kwargs, guidance_scale, uncond_kwargs, guidance_rescale,
        threshold, guidance,
    )  # fmt: skip
    solver, nfe, spacing, solver_options = unpack_tuned(solver, nfe, steps, spacing, final, shift, solver_options)
    check_counts(nfe, steps, "default" if spacing is None else spacing)
    solver, spacing = pick_defaults(denoiser.schedule, solver, spacing, nfe, steps, denoiser.guided)
    slv = cfg_pp_solver(denoiser, get_solver(solver, **solver_options))
    clean_end = check_final(final)
    check_calls(calls)
    dtype = state_dtype(noise)
    source = NoiseSource.of(generator, noise_sampler, seed, like=noise, dtype=dtype)
    check_trajectory(trajectory, slv, noise_sampler)
    check_seed_promise(seed, slv)
    window = check_sde_window(sde_window)
    check_rule_solver(denoiser, slv, window)
    shifter = check_time_shift(time_shift)
    grad_mode = check_grad(grad, slv, checkpoint, resume)

    # 2. plan: the node table and the solver's requests, known before the run
    times = node_times(denoiser.schedule, slv, nfe, steps, spacing, clean_end, rho, shift)
    budget = int(nfe) if nfe is not None and is_named(spacing) else None
    nodes = NodeTable.build(denoiser, times, clean_end, noise.shape[0], noise.device, dtype, budget)
    expected = check_nfe(slv, nodes, nfe)
    start = noise.to(dtype)
    if start is noise:  # the caller's tensor is never written to (a model may change its input in place)
        start = noise.clone()
    guard = DivergenceGuard(nodes, start, slv.name, bool_option("strict", strict))
    resumption = Resumption.of(checkpoint, resume, trajectory, slv, nodes, start, source)
    show_progress = progress if progress is not None else expected >= 100
    ctx = run_context(nodes, source, callback, show_progress, trajectory, window, guard)
    if resumption is not None:
        ctx = replace(ctx, stop_after=resumption.stop_after, replay_until=resumption.replay_until)
    # 3. the run: its context, its model-call stack, the solver driven through it, then the plan checked
    run_calls = CallCount()
    base = shifted_layer(shifter, denoiser, nodes.points, noise.device, dtype)
    stack = denoiser.stack(run_calls, slv.needs_eps, base, wrappers, check_finite, slv.name)
    if resumption is not None:
        stack = replace(stack, outer=resumption.wrap(stack.outer))
    try:
        backward = functools.partial(denoiser.stack, CallCount(), True, base, wrappers, check_finite, slv.name)
        x = integrate(slv, start, nodes, ctx, stack, grad_mode, backward)
    except StopRun as stop:  # the checkpoint's step is done
        assert resumption is not None
        guard.check()
        return resumption.stopped(stop).to(noise.dtype)
    finally:
        if calls is not None:
            calls.add(run_calls)
    if run_calls.requests != expected:  # an internal invariant: the plan and the run must agree
        raise RuntimeError(f"solver {slv.name!r} asked for {run_calls.requests} evaluations, planned {expected}")
    guard.check()
    out = x.to(noise.dtype)
    if trajectory is not None:
        trajectory.sample = out
    return out


def integrate(
    solver: Solver,
    x: Tensor,
    nodes: NodeTable,
    ctx: RunContext,
    stack: ModelStack,
    grad: GradMode,
    backward_stack: Callable[[], ModelStack] | None = None,
) -> Tensor:
    """Drive the solver's update rule from ``x`` over ``nodes``, answering its requests with the model-call stack
    (under an adjoint, :func:`fewstep.adjoint.drive_adjoint`, whose continuous form calls ``backward_stack``)."""
    with torch.set_grad_enabled(grad is not False):
        if ctx.trajectory is not None:
            ctx.trajectory.start(x)
        if isinstance(grad, bool):
            x, requests = drive_counted(solver.solve(x, nodes, ctx), stack.outer)
        else:
            assert backward_stack is not None
            x, requests = drive_adjoint(grad, solver.solve(x, nodes, ctx), x, nodes, stack, backward_stack)
    stack.network.calls.requests += requests
    stack.finish(x)
    return x


def sample_with_logprob(*args: Any, **kwargs: Any) -> Trajectory:
    """:func:`sample` (same arguments) returning the run's :class:`~fewstep.trajectory.Trajectory`, with the sample
    as ``trajectory.sample``."""
    if "trajectory" in kwargs:
        raise TypeError(
            "sample_with_logprob: records its own trajectory; call fewstep.sample(..., trajectory=) instead"
        )
    trajectory = Trajectory()
    sample(*args, trajectory=trajectory, **kwargs)
    return trajectory
