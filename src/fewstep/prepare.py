"""The preparation shared by :func:`fewstep.sample`, :func:`fewstep.sample_adaptive` and the diffusers scheduler:
checking the options (each error names its option, before any model call), the Denoiser, the solver state's
dtype, the node times of a fixed-step run, the noise source and the run context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .context import Callback, RunContext
from .defaults import FALLBACK, default_solver_and_spacing
from .finite import all_finite
from .guard import DivergenceGuard
from .guidance import GuidanceRule
from .guidance.cfg_pp import is_cfg_pp
from .memo import ValueCache, state_key, value_key
from .model import CallCount, Denoiser, Threshold
from .nodes import SCHEDULE_CLASS_STATE, NodeTable
from .noise.colored import ColoredNoise
from .noise.source import NoiseSource
from .schedules import NoiseSchedule
from .solvers import Solver
from .solvers.base import cfg_pp_solvers
from .spacing import Spacing, SpacingLike, is_named, model_times
from .trajectory import Trajectory
from .tune.tuned import TunedSampler

Final = Literal["zero", "t_min"]


def check_noise(noise: object, name: str = "noise") -> None:
    """``noise`` (the argument ``name``) must be a floating-point tensor with a batch dimension first
    (TypeError/ValueError)."""
    if not isinstance(noise, Tensor):
        raise TypeError(f"{name}: must be a torch.Tensor, got {type(noise).__name__}")
    if noise.ndim < 1 or noise.shape[0] < 1:
        raise ValueError(f"{name}: need a batch dimension first, got shape {tuple(noise.shape)}")
    if not noise.dtype.is_floating_point:
        raise TypeError(f"{name}: must be a floating-point tensor, got {noise.dtype}")
    if not all_finite(noise):
        raise ValueError(f"{name}: contains NaN or inf (the start state must be finite)")


def state_dtype(noise: Tensor) -> torch.dtype:
    """The solver state's dtype: float32 for float16/bfloat16 noise, else the noise's own."""
    return torch.float32 if noise.dtype in (torch.float16, torch.bfloat16) else noise.dtype


def check_final(final: object) -> bool:
    """``final`` is ``"zero"`` (True: the run ends with a step to sigma = 0) or ``"t_min"`` (False)."""
    if final not in ("zero", "t_min"):
        raise ValueError(f"final: choose 'zero' or 't_min', got {final!r}")
    return final == "zero"


def as_denoiser(
    model: Callable[..., Tensor] | Denoiser,
    schedule: NoiseSchedule | None,
    prediction: str,
    time_input: str | Callable[[Tensor], Tensor],
    model_kwargs: Mapping[str, Any] | None,
    guidance_scale: float,
    uncond_kwargs: Mapping[str, Any] | None,
    guidance_rescale: float,
    threshold: Threshold | None,
    guidance: GuidanceRule | None = None,
) -> Denoiser:
    """``model`` itself if it is a :class:`Denoiser` (ValueError when an option the Denoiser carries is given too,
    which would be ignored), else the Denoiser wrapping it with these options."""
    if isinstance(model, Denoiser):
        given = {
            "prediction": prediction != "auto",
            "time_input": not (isinstance(time_input, str) and time_input == "auto"),
            "model_kwargs": bool(model_kwargs),
            "guidance_scale": guidance_scale != 1.0,
            "uncond_kwargs": uncond_kwargs is not None,
            "guidance_rescale": guidance_rescale != 0.0,
            "threshold": threshold is not None,
            "guidance": guidance is not None,
        }
        named = [name for name, set_ in given.items() if set_]
        if named:
            raise ValueError(
                f"{', '.join(named)}: the model is a Denoiser, which carries its own; pass them to the Denoiser "
                f"(fewstep.Denoiser(network, schedule, ..., {named[0]}=...)) or give sample the network itself"
            )
        return model
    if schedule is None:
        raise TypeError("schedule: required (the NoiseSchedule the model was trained with)")
    return Denoiser(
        model,
        schedule,
        prediction,
        time_input=time_input,
        model_kwargs=dict(model_kwargs or {}),
        guidance_scale=guidance_scale,
        uncond_kwargs=uncond_kwargs,
        guidance_rescale=guidance_rescale,
        threshold=threshold,
        guidance=guidance,
    )


def unpack_tuned(
    solver: str | Solver | TunedSampler | None,
    nfe: int | None,
    steps: int | None,
    spacing: SpacingLike | None,
    final: object,
    shift: float,
    solver_options: Mapping[str, Any],
) -> tuple[str | Solver | None, int | None, SpacingLike | None, dict[str, Any]]:
    """A :class:`~fewstep.tune.TunedSampler` as ``(solver name, nfe, times, solver options)``; other solvers as they
    are. The tuned sampler brings its own NFE, times and options: ``nfe`` may repeat its NFE, anything else that
    contradicts it is a ValueError naming the option."""
    if not isinstance(solver, TunedSampler):
        return solver, nfe, spacing, dict(solver_options)
    if nfe is not None and nfe != solver.nfe:
        raise ValueError(f"nfe: the TunedSampler spends {solver.nfe} evaluations, not {nfe} (leave nfe out)")
    for name, given in (("steps", steps is not None), ("spacing", spacing is not None), ("shift", shift != 1.0)):
        if given:
            raise ValueError(f"{name}: a TunedSampler brings its own times; leave {name} out")
    if final != "zero":
        raise ValueError(f"final: a TunedSampler ends with a step to sigma = 0 (final='zero'), got {final!r}")
    if solver_options:
        raise ValueError(
            f"solver options ({', '.join(sorted(solver_options))}): a TunedSampler brings its own "
            f"({solver.solver_options}); leave them out"
        )
    return solver.solver, solver.nfe, solver.times_tensor(), dict(solver.solver_options)


def pick_defaults(
    schedule: NoiseSchedule,
    solver: str | Solver | None,
    spacing: SpacingLike | None,
    nfe: int | None,
    steps: int | None,
    guided: bool = False,
) -> tuple[str | Solver, SpacingLike]:
    """``solver`` and ``spacing``, the missing ones from :mod:`fewstep.defaults` for the run's NFE (or step count, or
    number of given times); ``guided``: the run has a guidance rule."""
    if solver is not None and spacing is not None:
        return solver, spacing
    given = len(spacing) if spacing is not None and not isinstance(spacing, str | Spacing) else None
    count = nfe or steps or given or 10
    if solver is not None:  # a named solver without a spacing: logSNR steps, as before the measured table
        return solver, FALLBACK[1]
    chosen_solver, chosen_spacing = default_solver_and_spacing(schedule, int(count), guided)
    return chosen_solver, (chosen_spacing if spacing is None else spacing)


def check_counts(nfe: object, steps: object, spacing: object) -> None:
    """``nfe`` and ``steps``: at most one, a positive integer; one of them unless ``spacing`` gives the times."""
    if nfe is not None and steps is not None:
        raise ValueError("nfe, steps: give one of them, not both")
    if is_named(spacing) and nfe is None and steps is None:
        raise ValueError("nfe, steps: give one of them (or pass the times themselves as spacing=)")
    for name, value in (("nfe", nfe), ("steps", steps)):
        if value is not None and (not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")


#: The node times of recent runs, by value (:mod:`fewstep.memo`): a spacing is computed and checked once.
TIMES: ValueCache[np.ndarray] = ValueCache(16)


def node_times(
    schedule: NoiseSchedule,
    solver: Solver,
    nfe: int | None,
    steps: int | None,
    spacing: SpacingLike,
    clean_end: bool,
    rho: float | None = None,
    shift: float = 1.0,
) -> np.ndarray:
    """The node times of a fixed-step run (a trailing nan for the clean end): from a spacing name and the NFE (or
    step count) the solver spends, or the given times (a new array; the model times of earlier runs with the same
    values come from :data:`TIMES`)."""
    named = is_named(spacing)
    count = 1  # model_times' n: ignored for given times
    if named:
        first_infinite = float(schedule.alpha(schedule.t_max)) == 0.0
        n_steps = steps if steps is not None else solver.steps_for_nfe(int(nfe), first_infinite, clean_end)  # type: ignore[arg-type]
        count = n_steps if clean_end else n_steps + 1
    key = _times_key(schedule, spacing, count, rho, shift)
    times = TIMES.get(key)
    if times is None:
        times = model_times(schedule, count, spacing, rho=rho, shift=shift).numpy()
        times.flags.writeable = False
        TIMES.put(key, times)
    if not named:
        n_steps = len(times) if clean_end else len(times) - 1
        if n_steps < 1:
            raise ValueError("spacing: with final='t_min' give at least two times")
        if steps is not None and steps != n_steps:
            raise ValueError(f"steps: {steps} does not match the {len(times)} times given in spacing")
    return np.concatenate([times, [math.nan]]) if clean_end else times.copy()


def _times_key(
    schedule: NoiseSchedule, spacing: SpacingLike, count: int, rho: float | None, shift: float
) -> Hashable | None:
    """The value key of :func:`model_times`' arguments (None when the schedule or the spacing has none)."""
    sched = state_key(schedule, *SCHEDULE_CLASS_STATE)
    space = value_key(spacing) if not isinstance(spacing, Spacing) else state_key(spacing)
    if sched is None or space is None:
        return None
    return (sched, space, count, value_key(rho), value_key(shift))


def check_nfe(solver: Solver, nodes: NodeTable, nfe: int | None) -> int:
    """The NFE the solver plans on ``nodes`` (ValueError when ``nfe`` is given and differs)."""
    expected = solver.nfe(nodes)
    if nfe is not None and expected != nfe:
        raise ValueError(f"nfe: {solver.name!r} spends {expected} evaluations on these {nodes.steps} steps, not {nfe}")
    return expected


def cfg_pp_solver(denoiser: Denoiser, solver: Solver) -> Solver:
    """The solver a run uses under the denoiser's guidance rule: for a CFG++ rule (:mod:`fewstep.guidance.cfg_pp`)
    the solver's CFG++ form (a ValueError naming the solvers that have one, or the option that prevents it, and for a
    threshold), else the solver itself."""
    if not is_cfg_pp(denoiser.guidance):
        return solver
    refuse_threshold_with_cfg_pp(denoiser)
    refusal = solver.cfg_pp_refusal()
    if refusal is not None:
        raise ValueError(f"guidance: {refusal}; {_cfg_pp_hint(denoiser)}")
    return solver.cfg_pp_form()


def refuse_cfg_pp(denoiser: Denoiser, caller: str) -> None:
    """A ValueError when the denoiser's guidance rule is CFG++ and ``caller`` (a sampler without a CFG++ form, such as
    ``sample_adaptive``) would run it."""
    if is_cfg_pp(denoiser.guidance):
        raise ValueError(f"guidance: {caller} has no CFG++ form; {_cfg_pp_hint(denoiser)}")


def check_rule_solver(denoiser: Denoiser, solver: object, sde_window: object = None) -> None:
    """A guidance rule that holds for some solvers only refuses the others before any model call: it has
    ``check_solver(solver, sde_window)`` (superposition: reverse-SDE paths with one evaluation per step)."""
    check = getattr(denoiser.guidance, "check_solver", None)
    if callable(check):
        check(solver, sde_window)


def refuse_threshold_with_cfg_pp(denoiser: Denoiser) -> None:
    if denoiser.threshold is not None:
        raise ValueError(
            "threshold: CFG++ renoises with the unconditional eps_hat, which thresholding would replace by the one "
            "its thresholded x0_hat implies; leave threshold out (threshold=None) with a CFG++ rule"
        )


def _cfg_pp_hint(denoiser: Denoiser) -> str:
    only = getattr(denoiser.guidance, "cfg_pp_solvers", None)  # a rule served by some CFG++ forms only
    if only:
        return f"{type(denoiser.guidance).__name__} needs one of the solvers {', '.join(only)} (e.g. {only[0]!r})"
    return (
        f"{type(denoiser.guidance).__name__} needs a solver with a CFG++ form: fewstep.sample with solver= one of "
        f"{', '.join(cfg_pp_solvers())} (e.g. 'dpmpp_2m'), or ClassifierFreeGuidance for plain CFG"
    )


def check_trajectory(trajectory: object, solver: Solver | None, noise_sampler: object) -> None:
    """``trajectory`` is None or a :class:`Trajectory` the solver can record (TypeError/ValueError/
    NotImplementedError naming why not)."""
    if trajectory is None:
        return
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"trajectory: must be a fewstep.trajectory.Trajectory, got {type(trajectory).__name__}")
    if isinstance(noise_sampler, ColoredNoise):
        raise ValueError("trajectory, noise_sampler: recorded log-probabilities assume white noise, not ColoredNoise")
    refusal = solver.recording_refusal() if solver is not None else None
    if refusal is not None:
        raise NotImplementedError(refusal)


def check_sde_window(window: object) -> tuple[float, float] | None:
    """``(t_hi, t_lo)`` as floats, ``t_hi >= t_lo`` (ValueError otherwise)."""
    if window is None:
        return None
    try:
        hi, lo = (float(v) for v in window)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(f"sde_window: must be a pair (t_hi, t_lo) of schedule times, got {window!r}") from None
    if math.isnan(hi) or math.isnan(lo) or hi < lo:
        raise ValueError(f"sde_window: need t_hi >= t_lo, got {window!r}")
    return hi, lo


def check_calls(calls: object) -> None:
    """``calls`` is None or a :class:`~fewstep.model.CallCount` to add a run's counts to (TypeError otherwise)."""
    if calls is not None and not isinstance(calls, CallCount):
        raise TypeError(f"calls: must be a fewstep.model.CallCount, got {type(calls).__name__}")


def check_seed_promise(seed: object, solver: Solver) -> None:
    """``seed=`` promises that a sample depends on its seed only: ValueError (with the reason and the remedy) for a
    solver whose samples depend on their batch."""
    reason = solver.batch_dependence() if seed is not None else None
    if reason is not None:
        raise ValueError(f"seed: {reason}")


def run_context(
    nodes: NodeTable,
    noise: NoiseSource,
    callback: Callback | None = None,
    progress: bool = False,
    trajectory: Trajectory | None = None,
    sde_window: tuple[float, float] | None = None,
    guard: DivergenceGuard | None = None,
) -> RunContext:
    """The run context over ``nodes`` (see :class:`~fewstep.context.RunContext`)."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: must be callable as callback(info), got {type(callback).__name__}")
    return RunContext(nodes, noise, callback, bool(progress), trajectory, sde_window, guard)
