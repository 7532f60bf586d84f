"""``fewstep.tune``: fit a sampler's times (and solver) to one model and schedule within a network-call budget.

Steps: draw the calibration and held-out noise; solve both with the teacher in one batch
(:mod:`~fewstep.tune.teacher`); score a few fixed (solver, spacing) configurations (or, with ``start=``, the ways of
growing a smaller tuned sampler, :mod:`~fewstep.tune.grow`) on the calibration batch and keep the best as the start;
run the method; measure the result and the start on the held-out batch. Every network call (teacher, scoring,
optimisation, held-out measurement) is counted against ``budget``.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from ..defaults import default_solver_and_spacing
from ..model import Denoiser
from ..prepare import as_denoiser, refuse_cfg_pp
from ..schedules import NoiseSchedule
from ..solvers import available, get_solver
from ..spacing import CONTINUOUS_SPACINGS, model_times
from .backprop import check_backprop
from .budget import LOSSES, Budget, BudgetExhausted, Objective, rmse_of
from .coefficients import fitted, refined
from .dmn import nelder_mead
from .gits import gits_times
from .grow import GROWN_SOLVER, check_start, grown_starts
from .ld3 import adam_spsa, learn_times
from .params import LogSNRIncrements
from .strata import KEEP, flag_hard, stratify
from .teacher import Teacher, solve_teacher
from .tuned import TunedSampler, model_fingerprint, schedule_description

if TYPE_CHECKING:
    from ..guidance import GuidanceRule

#: The losses the optimisers may minimise (:data:`fewstep.tune.budget.LOSSES`), and ``"auto"``.
LOSS_CHOICES = ("auto", "rmse", "mean_distance")

#: With ``loss="auto"``: the RMSE (what the results are measured by) from this many calibration samples on, the
#: mean per-sample distance below (the RMSE of a small batch is dominated by its few samples that land in another
#: mode, and the times fitted to them do not carry over to fresh noise; docs/tuning.md).
RMSE_FROM = 256

#: What ``method="auto"`` runs after GITS, from the better of GITS's times and the best fixed spacing (measured in
#: docs/tuning.md).
AUTO_REFINE = "dmn"

#: ``coefficients="refine"``: the share of the calls that the teacher and the starts leave, kept from the method for
#: the end-to-end refinement of the fitted rows (:func:`fewstep.tune.coefficients.refined`; it also takes what the
#: method leaves).
REFINE_SHARE = 0.5

#: The methods of :func:`tune`.
METHODS = ("auto", "gits", "dmn", "ld3", "search")

#: The solvers scored on every continuous spacing as starts when ``solver=None`` (besides the measured default for
#: the schedule and NFE).
CANDIDATE_SOLVERS = ("dpmpp_3m", "unipc_bh2", "ipndm", "gradient_estimation")

#: The spacings every deterministic solver is scored on as starts, when the budget allows.
COMMON_SPACINGS = ("logsnr", "time_quadratic")

#: The share of the budget the scoring of starts may take: with ``solver=None``, :data:`CANDIDATE_SOLVERS` on every
#: continuous spacing and, when that fits too, every other deterministic solver (but DPM-Solver-v3, which needs its
#: statistics, and the per-step solver, which needs its choices) on :data:`COMMON_SPACINGS`.
START_SHARE = 0.4


def _positive_int(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
    return int(value)


def _noise(given: Tensor | int, name: str, shape: tuple[int, ...] | None, scale: float, gen: torch.Generator) -> Tensor:
    """The calibration / held-out noise: the given tensor, or ``given`` samples of ``scale * N(0, I)``."""
    if isinstance(given, Tensor):
        if given.ndim < 2 or given.shape[0] < 1 or not given.dtype.is_floating_point:
            raise ValueError(f"{name}: need a floating-point batch (B, ...), got shape {tuple(given.shape)}")
        return given.detach()
    count = _positive_int(name, given)
    if shape is None:
        raise ValueError(f"shape: give one sample's shape (e.g. shape=(2,)) when {name} is a number of samples")
    return scale * torch.randn(count, *shape, generator=gen, dtype=torch.float64)


def _check_rule(denoiser: Denoiser) -> None:
    """Tuning fits deterministic samplers of the guided probability-flow ODE: a rule that changes the solver's update
    (CFG++) or holds on reverse-SDE paths only (superposition) is refused before any model call."""
    refuse_cfg_pp(denoiser, "fewstep.tune")
    if callable(getattr(denoiser.guidance, "check_solver", None)):
        raise ValueError(
            f"guidance: fewstep.tune fits probability-flow ODE samplers, and {type(denoiser.guidance).__name__} holds "
            "on reverse-SDE paths only; sample with it directly (fewstep.sample) instead"
        )


def _spends(solver: str, nfe: int, denoiser: Denoiser, **options: Any) -> int | None:
    """The number of times ``solver`` steps through on ``nfe`` evaluations ending at sigma = 0, None if it cannot
    spend exactly ``nfe``."""
    schedule = denoiser.schedule
    try:
        slv = get_solver(solver, **options)
        return slv.steps_for_nfe(nfe, float(schedule.alpha(schedule.t_max)) == 0.0, True)
    except ValueError:
        return None


def _start_names(denoiser: Denoiser, nfe: int, solver: str | None) -> list[str]:
    """``solver``, or the measured default for the schedule and NFE and :data:`CANDIDATE_SOLVERS`: the solvers scored
    as starts on every continuous spacing (also ``fewstep.tune.hard_samples``' candidate probes)."""
    default_solver, _ = default_solver_and_spacing(denoiser.schedule, nfe)
    return [solver] if solver else [default_solver, *CANDIDATE_SOLVERS]


def _starts(denoiser: Denoiser, nfe: int, solver: str | None, budget: int) -> list[tuple[str, str, np.ndarray]]:
    """The fixed (solver, spacing, times) configurations scored as starts (:data:`START_SHARE`)."""
    names = _start_names(denoiser, nfe, solver)
    every = [i.name for i in available() if not i.stochastic and i.name not in ("dpm_solver_v3", "per_step")]
    tiers = [  # from the widest scoring to the narrowest, the first that fits the share of the budget
        [(n, sp) for n in names for sp in CONTINUOUS_SPACINGS] + [(n, sp) for n in every for sp in COMMON_SPACINGS],
        [(n, sp) for n in names for sp in CONTINUOUS_SPACINGS],
        [(n, sp) for n in names for sp in COMMON_SPACINGS],
        [(names[0], sp) for sp in COMMON_SPACINGS],
    ]
    if solver is not None:
        tiers = tiers[1:]
    pairs = next((t for t in tiers if len(dict.fromkeys(t)) * nfe <= START_SHARE * budget), tiers[-1])
    out = []
    for name, spacing in dict.fromkeys(pairs):
        n_times = _spends(name, nfe, denoiser)
        if n_times is None:
            if solver is not None:
                raise ValueError(f"solver: {solver!r} cannot spend exactly nfe={nfe} evaluations")
            continue
        try:
            times = model_times(denoiser.schedule, n_times, spacing).numpy()
        except ValueError:  # a spacing this schedule does not have
            continue
        out.append((name, spacing, times))
    return out


def _reporter(progress: bool, started: float) -> Callable[[str], None]:
    """A printer of tuning phases to standard error (a no-op without ``progress``)."""
    if not progress:
        return lambda _message: None

    def report(message: str) -> None:
        print(f"fewstep tune [{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    return report


def _has_search() -> bool:
    """Whether this fewstep has the per-step solver search (``fewstep.tune.search``)."""
    return importlib.util.find_spec(f"{__package__}.search") is not None


def _search(
    denoiser: Denoiser,
    nfe: int,
    noise: Tensor,
    teacher: Teacher,
    times: np.ndarray,
    budget: Budget,
    seed: int,
    choices: list[Any] | None = None,
) -> tuple[str, dict[str, Any], np.ndarray]:
    """The per-step solver search of ``fewstep.tune.search`` (ValueError when this fewstep has none)."""
    if not _has_search():
        raise ValueError("method: 'search' needs fewstep.tune.search, which this installation does not have")
    module = importlib.import_module(f"{__package__}.search")
    solver, options, found = module.search_choices(
        denoiser, denoiser.schedule, nfe, noise, teacher, times, budget, seed, choices=choices
    )
    return str(solver), dict(options), np.asarray(found, dtype=np.float64)


def _check_shared_conditioning(kwargs: Mapping[str, Any] | None, name: str) -> None:
    """Conditioning tensors must serve every batch tune runs (the calibration and held-out noise together and
    apart): no per-sample batch dimension."""
    for key, value in (kwargs or {}).items():
        if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] > 1:
            raise ValueError(
                f"{name}[{key!r}]: tune runs the calibration and held-out noise in batches of several sizes, so a "
                f"conditioning tensor must be shared by every sample (batch dimension 1); got batch {value.shape[0]}"
            )


def tune(
    model: Callable[..., Tensor] | Denoiser,
    schedule: NoiseSchedule | None = None,
    *,
    nfe: int,
    calibration: Tensor | int = 64,
    holdout: Tensor | int = 64,
    shape: tuple[int, ...] | None = None,
    method: str = "auto",
    budget: int = 2000,
    solver: str | None = None,
    prediction: str = "auto",
    time_input: str | Callable[[Tensor], Tensor] = "auto",
    model_kwargs: Mapping[str, Any] | None = None,
    guidance_scale: float = 1.0,
    uncond_kwargs: Mapping[str, Any] | None = None,
    guidance_rescale: float = 0.0,
    guidance: GuidanceRule | None = None,
    seed: int = 0,
    grid: int = 100,
    progress: bool = False,
    loss: str = "auto",
    coefficients: bool | str = False,
    start: TunedSampler | None = None,
    pool: Tensor | int | None = None,
) -> TunedSampler:
    """Tune the model-evaluation times (and, with ``solver=None``, the solver) of an ``nfe``-evaluation sampler for
    ``model`` so that its samples match a high-NFE teacher's from the same noise.

    Args:
        model, schedule, prediction, time_input, model_kwargs, guidance_scale, uncond_kwargs, guidance_rescale,
            guidance: as for :func:`fewstep.sample`.
        nfe: the network evaluations the tuned sampler spends.
        calibration: the calibration noise (the start states at ``t_max``, a (B, ...) tensor) or a number of samples
            of ``sigma(t_max) N(0, I)`` of one-sample ``shape``, drawn from ``seed``.
        holdout: the held-out noise (or a number of samples, drawn after the calibration noise) on which the result
            and its start are measured.
        method: ``"gits"`` (the cheapest path through a fine grid on the teacher trajectory), ``"dmn"`` (Nelder-Mead
            on the final error), ``"ld3"`` (gradient descent on the times through the differentiable run, with LD3's
            soft-teacher slack; simultaneous-perturbation gradients where the run has no time gradient),
            ``"search"`` (the per-step solver search of ``fewstep.tune.search``), or ``"auto"``: with
            ``solver=None`` and without ``coefficients="refine"``, the search where this fewstep has it; else GITS,
            then :data:`AUTO_REFINE` from the better of GITS and the best fixed spacing, on the best start's solver
            (docs/tuning.md has the measurements).
        budget: the most network calls the tuning spends, teacher included (a batched call is one call; a backward
            pass is one call).
        solver: the solver name to tune the times of; None: the best on the calibration batch of the measured
            default and :data:`CANDIDATE_SOLVERS`.
        seed: the seed of the drawn noise and of the optimisers' randomness; the result is deterministic given it.
        grid: the teacher's number of logSNR-uniform times (``3 grid`` calls), also GITS's grid.
        progress: print each phase (teacher, starts, method, held-out check) with the network calls spent so far to
            standard error.
        loss: what the optimisers minimise against the teacher: ``"rmse"``, ``"mean_distance"`` (the mean over
            samples of each sample's RMS error), or ``"auto"``: the RMSE from :data:`RMSE_FROM` calibration samples
            on, else the mean distance. The reported errors are RMSEs whatever the loss.
        coefficients: True: rewrite the result as a non-stationary linear solver and fit its weights, step by step,
            to the teacher's trajectory (:func:`fewstep.tune.coefficients.fitted`, ``nfe`` calls); ``"refine"``: then
            move them end to end by gradient descent on the output's error through the network
            (:func:`~fewstep.tune.coefficients.refined`, with :data:`REFINE_SHARE` of the calls the teacher and the
            starts leave). Either is kept only where the held-out error is lower.
        start: a per-step sampler tuned for this model and schedule at fewer evaluations (``method="auto"`` or
            ``"search"`` with ``solver=None``) to grow to ``nfe``: every way of splitting its steps
            (:mod:`fewstep.tune.grow`) is scored on the calibration batch instead of the fixed configurations, and the
            search starts from the best (its times and per-step choices). None: start from the fixed configurations.
        pool: a larger batch of noise (a (P, ...) tensor or a number of samples, drawn before the held-out noise) to
            draw a stratified calibration batch of ``calibration`` (a number) samples from: the teacher solves the
            pool and the starts are scored on it (the same calls: a batched call is one call); the samples that one
            of the :data:`~fewstep.tune.strata.KEEP` best starts sends far from the teacher (more than ten times its
            median distance, :func:`~fewstep.tune.strata.flag_hard`) fill up to half the batch, and every error on the
            batch weighs each sample by its stratum's share of the pool (:func:`~fewstep.tune.strata.stratify`).
            Where a few samples that end in another mode hold most of the error, the tuning then sees many of them.
            It costs time (the pool's teacher solve and starts) and memory (the teacher's ``grid`` states of the
            pool), not calls. None: the calibration batch as given or drawn.

    Returns:
        A :class:`TunedSampler`; run it with ``fewstep.sample(model, noise, schedule, solver=tuned)``.
    """
    started = time.perf_counter()
    report = _reporter(progress, started)
    if method not in METHODS:
        raise ValueError(f"method: choose one of {', '.join(METHODS)}, got {method!r}")
    if loss not in LOSS_CHOICES:
        raise ValueError(f"loss: choose one of {', '.join(LOSS_CHOICES)}, got {loss!r}")
    nfe = _positive_int("nfe", nfe)
    limit = _positive_int("budget", budget)
    seed = _positive_int("seed", seed, 0)
    grid = _positive_int("grid", grid, 2)
    if isinstance(coefficients, str) and coefficients != "refine":
        raise ValueError(f"coefficients: choose True, False or 'refine', got {coefficients!r}")
    if not isinstance(coefficients, bool | str):
        raise TypeError(f"coefficients: must be True, False or 'refine', got {type(coefficients).__name__}")
    if solver is not None and not isinstance(solver, str):
        raise TypeError(f"solver: must be a solver name or None, got {type(solver).__name__}")
    if start is not None and (method not in ("auto", "search") or solver is not None):
        raise ValueError(
            f"start: a grown sampler starts the per-step search; use method='auto' or 'search' with solver=None "
            f"(got method={method!r}, solver={solver!r})"
        )
    denoiser = as_denoiser(
        model, schedule, prediction, time_input, model_kwargs, guidance_scale, uncond_kwargs, guidance_rescale,
        None, guidance,
    )  # fmt: skip
    _check_rule(denoiser)
    _check_shared_conditioning(model_kwargs, "model_kwargs")
    _check_shared_conditioning(uncond_kwargs, "uncond_kwargs")
    sched = denoiser.schedule
    gen = torch.Generator().manual_seed(seed)
    scale = float(sched.sigma(sched.t_max))
    if pool is not None and isinstance(calibration, Tensor):
        raise ValueError("pool: the calibration batch is drawn from the pool; give calibration as a number of samples")
    if pool is not None:
        scoring = _noise(pool, "pool", shape, scale, gen)
        b = _positive_int("calibration", calibration, 2)
        if b > scoring.shape[0]:
            raise ValueError(f"calibration: {b} samples cannot be drawn from a pool of {scoring.shape[0]}")
    else:
        scoring = _noise(calibration, "calibration", shape, scale, gen)
        b = scoring.shape[0]
    calib = scoring
    held = _noise(holdout, "holdout", tuple(scoring.shape[1:]), scale, gen)
    if held.shape[1:] != calib.shape[1:]:
        raise ValueError(f"holdout: samples of shape {tuple(held.shape[1:])}, calibration {tuple(calib.shape[1:])}")
    held = held.to(calib.dtype)
    if loss == "auto":
        loss = "rmse" if b >= RMSE_FROM else "mean_distance"
    if start is not None:
        starts = [
            (GROWN_SOLVER, label, times, {"choices": choices})
            for label, times, choices in grown_starts(check_start(start, nfe, sched), nfe, sched)
        ]
    else:
        starts = [(name, spacing, times, {}) for name, spacing, times in _starts(denoiser, nfe, solver, limit)]
    if not starts:
        raise ValueError(f"nfe: none of the candidate solvers spends exactly {nfe} evaluations")
    checks = 5 * nfe if coefficients else 4 * nfe  # the held-out runs (and the fitted sampler's) kept back
    fitting = nfe if coefficients else 0  # the run that fits the coefficients
    need = 3 * grid + len(starts) * nfe + checks + fitting + 1
    if need > limit:
        raise ValueError(f"budget: {limit} calls do not cover the teacher, the starts and the held-out check ({need})")

    accounts = Budget(limit)
    both = solve_teacher(denoiser, torch.cat([scoring, held]), accounts, grid)
    p = scoring.shape[0]
    teacher = Teacher(both.final[:p], both.grid, both.states[:, :p], both.calls)
    held_teacher = both.final[p:]
    report(f"teacher: {accounts.spent} network calls")
    # keep the coefficients' run, the held-out runs and the fingerprint's probe call
    work = Budget(limit - checks - fitting - 1, accounts.calls)

    # the start: the best fixed configuration (or grown sampler) on the calibration batch
    scored = []
    refused: ValueError | None = None
    for name, spacing, times, start_options in starts:
        objective = Objective(denoiser, name, start_options, nfe, scoring, teacher.final, work, loss=loss)
        try:
            value = objective.error(times)
            squares_of = cast(Tensor, objective.squares)  # each sample's, set by error()
            scored.append((value, name, spacing, times, objective.best_rmse, start_options, squares_of))
        except ValueError as err:  # a solver whose plan on these times spends another NFE (checked before any call)
            refused = err
    if not scored:
        raise ValueError(f"nfe: no start configuration could run {nfe} evaluations; the last refusal: {refused}")
    scored.sort(key=lambda s: s[0])
    start_loss, start_solver, start_spacing, start_times, start_error, start_options, squares = scored[0]
    report(f"{len(scored)} starts scored, best {start_solver} on {start_spacing}: {accounts.spent} calls")
    if pool is not None:  # the stratified calibration batch, and the start's errors on it (from its run on the pool)
        hard = flag_hard([s[-1].sqrt() for s in scored[:KEEP]])
        index, weights = stratify(hard, b)
        calib = scoring[index]
        teacher = Teacher(teacher.final[index], teacher.grid, teacher.states[:, index], teacher.calls, weights)
        start_error, start_loss = rmse_of(squares[index], weights), LOSSES[loss](squares[index], weights)
        report(f"stratified batch: {int(hard[index].sum())} of the pool's {int(hard.sum())} hard samples")
    if coefficients == "refine":  # the refinement's share of what the teacher and the starts leave
        work.limit -= min(int(REFINE_SHARE * work.left), max(0, work.left - nfe))  # the method keeps a run
    solver_name = start_solver
    objective = Objective(
        denoiser, solver_name, start_options, nfe, calib, teacher.final, work, loss=loss, weights=teacher.weights
    )
    objective.best, objective.best_rmse = (start_loss, start_times), start_error
    options: dict[str, Any] = {}
    chosen = method
    # measured best (docs/tuning.md): the search where this fewstep has it; with refined weights GITS and Nelder-Mead
    # on the best start's solver, then the weights
    if method == "auto" and solver is None and _has_search() and coefficients != "refine":
        method, chosen = "search", "auto (search)"
    if method == "search":
        search_start = start_times if len(start_times) == nfe else model_times(sched, nfe, start_spacing).numpy()
        choices = start_options.get("choices")
        solver_name, options, times = _search(denoiser, nfe, calib, teacher, search_start, work, seed, choices)
    else:
        if method in ("gits", "auto"):
            try:
                objective.error(gits_times(denoiser, teacher, len(start_times), work))
            except BudgetExhausted:
                pass
        params = LogSNRIncrements(sched, len(start_times))
        z0 = params.logits(objective.best[1])  # type: ignore[arg-type]
        refine = AUTO_REFINE if method == "auto" else method
        if refine == "dmn":
            nelder_mead(lambda z: objective.error(params.times(z)), z0)
        elif refine == "ld3" and check_backprop(denoiser, get_solver(solver_name)) is None:
            learn_times(objective, params, z0, work)
        elif refine == "ld3":  # no time gradient for this run: the derivative-free variant
            adam_spsa(lambda z: objective.error(params.times(z)), z0, seed)
        times = objective.best[1]  # type: ignore[assignment]
        chosen = f"gits+{AUTO_REFINE}" if method == "auto" else method

    report(f"{chosen}: {accounts.spent} calls")
    fit, refined_note = None, ""
    if coefficients:
        # all but the held-out runs, for the fit and its refinement
        fitting_budget = Budget(limit - checks - 1, work.calls)
        try:
            fit = fitted(denoiser, solver_name, options, times, calib, teacher, fitting_budget)
        except BudgetExhausted:
            pass
        report(f"coefficients: {'fitted' if fit else 'not fitted'}, {accounts.spent} calls")
        if fit is not None and coefficients == "refine":
            moved, steps = refined(denoiser, fit, calib, teacher, fitting_budget)
            fit, refined_note = moved, " refined" if moved is not fit else ""
            report(f"coefficients refined: {steps} steps, {accounts.spent} calls")
    # the held-out measurement of the result, its start and the default (the search's also on the calibration batch)
    calib_error = (
        Objective(denoiser, solver_name, options, nfe, calib, teacher.final, accounts, weights=teacher.weights).error(
            times
        )
        if method == "search"
        else float(objective.best_rmse)
    )
    errors = {
        "calibration": calib_error,
        "holdout": Objective(denoiser, solver_name, options, nfe, held, held_teacher, accounts).error(times),
        "start_calibration": float(start_error),
        "start_holdout": Objective(denoiser, start_solver, start_options, nfe, held, held_teacher, accounts).error(
            start_times
        ),
    }
    if fit is not None:
        fit_options = {"coefficients": fit.rows}
        fit_holdout = Objective(denoiser, "nonstationary", fit_options, nfe, held, held_teacher, accounts)
        errors["coefficients_holdout"] = fit_holdout.error(fit.times)
        if errors["coefficients_holdout"] < errors["holdout"]:  # kept only where it carries over to fresh noise
            solver_name, options, times = "nonstationary", fit_options, fit.times
            chosen = f"{chosen} +{refined_note} coefficients"
            errors["calibration"], errors["holdout"] = fit.calibration, errors["coefficients_holdout"]
    default_solver, default_spacing = default_solver_and_spacing(sched, nfe)
    default_steps = _spends(default_solver, nfe, denoiser)
    if default_steps is not None:
        default_times = model_times(sched, default_steps, default_spacing).numpy()
        default_run = Objective(denoiser, default_solver, {}, nfe, held, held_teacher, accounts)
        errors["default_holdout"] = default_run.error(default_times)
    report(f"held-out check: {accounts.spent} calls")
    if errors["holdout"] > errors["start_holdout"]:  # the optimum over-fitted the calibration batch: keep the start
        solver_name, options, times, chosen = start_solver, start_options, start_times, f"{chosen} (start kept)"
        errors["calibration"], errors["holdout"] = errors["start_calibration"], errors["start_holdout"]
    fingerprint = model_fingerprint(denoiser, sched, tuple(calib.shape[1:]), accounts.calls)
    levels = torch.exp(-sched.lambda_(torch.from_numpy(np.asarray(times, dtype=np.float64)))).tolist()
    return TunedSampler(
        times=[float(t) for t in times],
        solver=solver_name,
        solver_options=options,
        nfe=nfe,
        method=chosen,
        schedule=schedule_description(sched),
        fingerprint=fingerprint,
        levels=[float(v) for v in levels],
        prediction=denoiser.prediction,
        time_input=denoiser.time_input if isinstance(denoiser.time_input, str) else "callable",
        teacher=teacher.describe(),
        calls=accounts.spent,
        seconds=time.perf_counter() - started,
        errors=errors,
        start={
            "solver": start_solver,
            "spacing": start_spacing,
            "default_solver": default_solver,
            "default_spacing": default_spacing,
            **({"grown_from_nfe": start.nfe} if start is not None else {}),
            **({"pool": p, "pool_hard": int(hard.sum())} if pool is not None else {}),
        },
        seed=seed,
    )
