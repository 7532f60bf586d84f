"""``sample_adaptive``: error-controlled sampling with an embedded pair and a step-size controller."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..guidance import GuidanceRule
from ..model import CallCount, Denoiser, Threshold
from ..noise import BrownianPath
from ..prepare import (
    as_denoiser,
    check_calls,
    check_final,
    check_noise,
    check_rule_solver,
    refuse_cfg_pp,
    state_dtype,
)
from ..schedules import NoiseSchedule
from ..solvers.base import drive
from .controller import PIDController, StepTo
from .pairs import METHODS, Context, EmbeddedPair, Eval, brownian_interval, finite_start

#: The Brownian tree of the SDE pair resolves ``2**-BROWNIAN_DEPTH`` of its interval ``[0, tau_start^2]``.
BROWNIAN_DEPTH = 40


@dataclass
class AdaptiveStats:
    """What an adaptive run did (filled in by :func:`sample_adaptive`): model evaluations, accepted and rejected
    steps, the schedule times of the accepted states (from the start, before a final step to sigma = 0) and the
    error estimate ``E`` of each accepted step (0 under :class:`StepTo`)."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0
    times: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)


def sample_adaptive(
    model: Callable[..., Tensor] | Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule | None = None,
    method: str = "dpm_solver_23",
    rtol: float = 0.05,
    atol: float = 0.0078,
    prediction: str = "auto",
    *,
    controller: PIDController | StepTo | None = None,
    h_init: float | None = None,
    norm: Literal["max", "rms"] = "max",
    max_nfe: int = 10_000,
    final: Literal["zero", "t_min"] = "zero",
    seed: int | Sequence[int] | Tensor | None = None,
    generator: torch.Generator | None = None,
    brownian: BrownianPath | None = None,
    stats: AdaptiveStats | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    time_input: str | Callable[[Tensor], Tensor] = "auto",
    model_kwargs: Mapping[str, Any] | None = None,
    guidance_scale: float = 1.0,
    uncond_kwargs: Mapping[str, Any] | None = None,
    guidance_rescale: float = 0.0,
    threshold: Threshold | None = None,
    guidance: GuidanceRule | None = None,
    grad: bool = False,
    calls: CallCount | None = None,
) -> Tensor:
    """Solve from ``noise`` at ``t_max`` to ``t_min`` with error-controlled steps (docs/adaptive.md).

    Args:
        model, noise, schedule, prediction, time_input, model_kwargs, guidance_scale, uncond_kwargs,
            guidance_rescale, guidance, threshold, grad, final, calls: as for :func:`fewstep.sample`.
        method: an embedded pair, one of :data:`fewstep.adaptive.METHODS`: ``dpm_solver_12``, ``dpm_solver_23``,
            ``dopri5`` or ``ggf_sde`` (stochastic).
        rtol, atol: the tolerances of :class:`PIDController` (> 0); ``h_init`` its first step and ``norm`` its
            error norm (``"max"``: the worst sample's RMS, ``"rms"``: the RMS over the batch). Ignored when
            ``controller`` is given.
        controller: a :class:`PIDController` with other coefficients, or :class:`StepTo` for fixed steps through
            given times (then the run starts at the first of them).
        max_nfe: RuntimeError when the run would spend more model evaluations.
        seed, generator, brownian: the noise of ``ggf_sde`` (give at most one): per-sample seeds of a
            :class:`~fewstep.noise.BrownianPath` in ``v = (sigma/alpha)^2`` over ``[0, v_start]``, a generator
            that draws those seeds, or the path itself (shape ``noise.shape[1:]``, one seed per sample, covering
            ``[v_end, v_start]``). Default: seeds drawn from torch's global generator.
        stats: an :class:`AdaptiveStats` to fill in.
        callback: called after each accepted step with ``{"i", "t", "x", "denoised", "error"}``.

    Returns:
        The sample, shaped, typed and placed like ``noise`` (float16/bfloat16 are integrated in float32). One step
        size serves the whole batch, so a sample's result depends on the batch it is drawn in.

    On a schedule with ``alpha(t_max) = 0`` (flows at t = 1, zero terminal SNR), where lambda is infinite, the
    first step is DDIM's exact-at-pure-noise first-order step ``x = alpha x0_hat + sigma eps_hat`` to
    ``lambda = log(2 atol) / 2`` (its local error is about ``e^{2 lambda} / 2`` times the data variance), or to the
    second time of :class:`StepTo`; Dormand-Prince in ``t`` (flows) needs no such step.
    """
    pair = _method(method)
    ctl = controller if controller is not None else PIDController(rtol, atol, norm=norm, h_init=h_init)
    if not isinstance(ctl, PIDController | StepTo):
        raise TypeError(f"controller: must be a PIDController or StepTo, got {type(ctl).__name__}")
    check_noise(noise)
    if isinstance(max_nfe, bool) or not isinstance(max_nfe, numbers.Integral) or max_nfe < 1:
        raise ValueError(f"max_nfe: must be a positive integer, got {max_nfe!r}")
    clean_end = check_final(final)
    if sum(v is not None for v in (seed, generator, brownian)) > 1:
        raise ValueError("seed, generator, brownian: give at most one of them (each sets the SDE's noise)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: must be a torch.Generator, got {type(generator).__name__}")
    if brownian is not None and not isinstance(brownian, BrownianPath):
        raise TypeError(f"brownian: must be a fewstep.noise.BrownianPath, got {type(brownian).__name__}")
    if stats is not None and not isinstance(stats, AdaptiveStats):
        raise TypeError(f"stats: must be an AdaptiveStats, got {type(stats).__name__}")
    check_calls(calls)
    denoiser = as_denoiser(
        model, schedule, prediction, time_input, model_kwargs, guidance_scale, uncond_kwargs, guidance_rescale,
        threshold, guidance,
    )  # fmt: skip
    refuse_cfg_pp(denoiser, "sample_adaptive")
    check_rule_solver(denoiser, pair)
    sched = denoiser.schedule
    times = ctl.checked(sched) if isinstance(ctl, StepTo) else [float(sched.t_max), float(sched.t_min)]
    dtype = state_dtype(noise)
    run_calls = CallCount()
    stack = denoiser.stack(run_calls, True)  # eps is always computed here
    ctx = Context(denoiser, noise.shape[0], noise.device, dtype, stack.evaluate, run_calls)
    ddim_to = None
    if not finite_start(pair, sched, times[0]):
        ddim_to = times[1] if isinstance(ctl, StepTo) else _ddim_target(sched, ctl.atol, times[-1])
    if pair.stochastic:
        t_run = times[0] if ddim_to is None else ddim_to
        ctx.brownian = _brownian(noise, dtype, t_run, times[-1], sched, seed, generator, brownian)
    out = stats if stats is not None else AdaptiveStats()
    out.nfe, out.accepted, out.rejected, out.times, out.errors = 0, 0, 0, [], []
    try:
        with torch.set_grad_enabled(grad):
            x = _integrate(pair, ctl, noise.to(dtype), times, ddim_to, ctx, out, max_nfe, callback)
            if clean_end:
                p = ctx.point(out.times[-1])
                x = sched.alpha_clean * ctx.evaluate(x, p)[0]
        stack.finish()
    finally:
        if calls is not None:
            calls.add(run_calls)
    out.nfe = run_calls.nfe
    return x.to(noise.dtype)


def _method(method: object) -> EmbeddedPair:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: choose one of {', '.join(METHODS)}, got {method!r}")
    return METHODS[method]


def _integrate(
    pair: EmbeddedPair,
    ctl: PIDController | StepTo,
    x: Tensor,
    times: list[float],
    ddim_to: float | None,
    ctx: Context,
    out: AdaptiveStats,
    max_nfe: int,
    callback: Callable[[dict[str, Any]], None] | None,
) -> Tensor:
    """The step loop: attempts, the controller's decision, statistics; returns the state at the last time."""
    sched, evaluate = ctx.schedule, ctx.evaluate

    fixed = list(times[1:]) if isinstance(ctl, StepTo) else None
    p = ctx.point(times[0])
    first: Eval | None = evaluate(x, p)
    out.times.append(p.t)
    if ddim_to is not None:  # DDIM from pure noise: x = alpha x0_hat + sigma eps_hat
        assert first is not None
        if fixed:
            fixed.pop(0)
        p = ctx.point(ddim_to)
        x = p.alpha * first[0] + p.sigma * first[1]
        first = None
        out.accepted += 1
        out.times.append(p.t)
        out.errors.append(0.0)
    s, s_end = pair.var(sched, p.t), pair.var(sched, times[-1])
    direction = 1.0 if s_end > s else -1.0
    end_tol = 1e-9 * abs(s_end - s)  # a step ending closer than this to the end goes to the end
    state = None
    if isinstance(ctl, PIDController):
        state = ctl.start(ctl.h_init if ctl.h_init is not None else pair.default_h(sched, s_end - s), pair.error_order)
    x_prev = x
    while (fixed is None and s != s_end) or fixed:
        if ctx.calls.nfe + pair.nfe_per_step > max_nfe:
            raise RuntimeError(
                f"max_nfe: {max_nfe} model evaluations spent at t = {p.t:.6g} before reaching {times[-1]:.6g} "
                f"({out.accepted} accepted, {out.rejected} rejected steps); raise max_nfe or the tolerances"
            )
        if fixed is not None:
            t_next = fixed.pop(0)
            s_next = pair.var(sched, t_next)
        elif state is not None and state.h < abs(s_end - s) - end_tol:
            s_next = s + direction * state.h
            t_next = pair.time(sched, s_next)
        else:
            s_next, t_next = s_end, times[-1]
        if first is None:
            first = evaluate(x, p)
        pt = ctx.point(t_next)
        x_high, x_low, end = drive(pair.step(x, first, p, pt, ctx), evaluate)
        if isinstance(ctl, PIDController):
            assert state is not None
            error = ctl.error(x_high, x_low, x_prev)
            accept = state.propose(error)
        else:
            error, accept = 0.0, True
        if not accept:
            out.rejected += 1
            continue
        out.accepted += 1
        out.times.append(pt.t)
        out.errors.append(error)
        if callback is not None:
            callback({"i": out.accepted - 1, "t": pt.t, "x": x_high, "denoised": first[0], "error": error})
        x_prev, x, p, s, first = x_low, x_high, pt, s_next, end
    return x


def _ddim_target(sched: NoiseSchedule, atol: float, t_end: float) -> float:
    """The time of ``lambda = log(2 atol) / 2`` (sample_adaptive's docstring), not beyond the end."""
    return max(float(sched.t_of_lambda(0.5 * math.log(2.0 * atol))), t_end)


def _brownian(
    noise: Tensor,
    dtype: torch.dtype,
    t_start: float,
    t_end: float,
    sched: NoiseSchedule,
    seed: int | Sequence[int] | Tensor | None,
    generator: torch.Generator | None,
    path: BrownianPath | None,
) -> BrownianPath:
    """The SDE pair's Brownian path in ``v = (sigma/alpha)^2`` over ``[0, v_start]`` (given, or seeded)."""
    batch, shape = noise.shape[0], tuple(noise.shape[1:])
    v_lo, v_hi = brownian_interval(float(sched.sigma(t_start) / sched.alpha(t_start)))
    if path is not None:
        v_end = float(sched.sigma(t_end) / sched.alpha(t_end)) ** 2
        if path.shape != shape or path.batch_size != batch:
            raise ValueError(
                f"brownian: need shape {shape} and {batch} seeds, got shape {path.shape} and {path.batch_size} seeds"
            )
        if path.t0 > v_end or path.t1 < v_hi * (1 - 1e-12):
            raise ValueError(
                f"brownian: must cover v = (sigma/alpha)^2 in [{v_end:.6g}, {v_hi:.6g}], got [{path.t0}, {path.t1}]"
            )
        return path
    if seed is None:
        seed = torch.randint(0, 2**62, (batch,), generator=generator).tolist()
    scalar = isinstance(seed, numbers.Integral) or isinstance(seed, Tensor) and seed.dim() == 0
    out = BrownianPath(
        shape,
        seed,
        v_lo,
        v_hi,
        batch_size=batch if scalar else None,
        tol=v_hi * 2.0**-BROWNIAN_DEPTH,
        dtype=dtype,
        device=noise.device,
        cache_size=1024,
    )
    if out.batch_size != batch:
        raise ValueError(f"seed: give one integer seed per sample ({batch}), got {out.batch_size}")
    return out
