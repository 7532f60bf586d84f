"""A search over per-step solver choices (and, optionally, the times) against a teacher, in the spirit of USF's
solver-schedule search (Liu et al. 2023, "A Unified Sampling Framework for Solver Searching of Diffusion
Probabilistic Models", Sec. 5).

USF trains a predictor of the sample quality of a solver schedule and searches with it; that needs thousands of
sampled schedules. Here the objective is measured directly and the search is a greedy coordinate descent:

    minimise  E(c, t) = RMSE( per_step(c)(noise; t),  teacher )

over the choices ``c = (c_0, ..., c_{n-1})`` (:class:`~fewstep.solvers.ode.per_step.StepChoice` of each step) and,
with ``refine_times``, the model-evaluation times ``t_1 .. t_{n-1}`` (``t_0 = t_max``; the run ends with a step to
sigma = 0). It starts from the best uniform schedule (one choice for every step; among them DPM-Solver++(2M),
``dpmpp_2m``, and UniPC-bh2, ``unipc_bh2``, which are tried first) at the given times, or from given choices (a
grown sampler's, :mod:`fewstep.tune.grow`), then repeats sweeps until one improves nothing or the budget is spent:

1. for each step j (in an order drawn from ``seed`` after the first sweep, which goes from the first step to the
   last), every distinct choice of that step with the others held; the best is kept if it lowers E;
2. with ``refine_times``, for each time t_k (k >= 1), a move of ``-lambda(t_k)`` by ``+/- delta`` of the gap to the
   neighbouring time; kept if it lowers E; ``delta`` halves after a sweep that improves nothing.

Cost: a run whose evaluations up to node j are those of a run already made (the same state at the same time,
compared exactly) takes those answers from a cache and calls the network only from node j + 1 on, so a trial at
step j costs ``n - 1 - j`` calls. Every network call is counted in one :class:`~fewstep.model.CallCount` (one
batched call on the calibration batch is one call); a run that would exceed ``budget`` is stopped before the call
and discarded. The result is deterministic given ``seed`` (and the model).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model import CallCount, Denoiser, Point
from ..model.network import NonFiniteModelOutput
from ..model.stack import Evaluation
from ..schedules import NoiseSchedule
from ..solvers.ode.per_step import ORDERS, PREDICTIONS, SCALES, StepChoice, as_choice
from .budget import Budget, rmse
from .teacher import Teacher

SOLVER = "per_step"
#: The first move of a time, as a share of the gap to its neighbour in -lambda (halved when a sweep finds nothing).
FIRST_DELTA = 0.25
SMALLEST_DELTA = 1.0 / 64


class BudgetSpent(Exception):
    """The next network call would exceed the search's budget."""


@dataclass
class _Entry:
    x: Tensor
    t: float
    answer: tuple[Tensor, Tensor | None]


@dataclass
class ReuseCache:
    """An evaluation layer (``sample(wrappers=[...])``): the i-th request of a run is answered from the i-th answer
    of an earlier run when its state and time are exactly the same (a deterministic model gives the same answer),
    counted as ``substituted``; otherwise the network is called, unless that would exceed ``limit`` calls."""

    calls: CallCount
    limit: int
    entries: list[_Entry] = field(default_factory=list)

    def wrap(self, inner: Evaluation, needs_eps: bool, calls: CallCount) -> Evaluation:
        index = iter(range(1 << 62))
        # the run's own calls join self.calls when the run ends: count them here meanwhile
        before, made = self.calls.nfe, iter(range(1, 1 << 62))

        def evaluate(x: Tensor, p: Point) -> tuple[Tensor, Tensor | None]:
            i = next(index)
            if i < len(self.entries):
                e = self.entries[i]
                if e.t == p.t and torch.equal(e.x, x):
                    self.calls.substituted += 1
                    return e.answer
                del self.entries[i:]  # this run leaves the cached path here
            if before + next(made) > self.limit:
                raise BudgetSpent(f"budget: {self.limit} network calls spent")
            answer = inner(x, p)
            self.entries.append(_Entry(x.clone(), p.t, answer))
            return answer

        return evaluate


def _distinct_choices(steps: int, finite: Sequence[bool]) -> list[list[StepChoice]]:
    """Per step, the choices that can differ in effect: the order is capped by the estimates available (the
    largest possible at each step assumes finite steps before it), the scale matters from order 2, the corrector
    not on the last step nor a step of infinite lambda-size, and a step of infinite lambda-size has order 1."""
    out, history = [], 0
    for j in range(steps):
        top = min(max(ORDERS), history + 1) if finite[j] else 1
        history = history + 1 if finite[j] else 0
        corrector = (False, True) if finite[j] and j < steps - 1 else (False,)
        per_step = []
        for k in range(1, top + 1):
            for prediction in PREDICTIONS:
                for scale in SCALES if k > 1 else SCALES[:1]:
                    per_step += [StepChoice(k, prediction, c, scale) for c in corrector]
        out.append(per_step)
    return out


def _check_times(times: np.ndarray | Sequence[float] | Tensor, nfe: int, schedule: NoiseSchedule) -> np.ndarray:
    t = np.asarray(times.detach().cpu() if isinstance(times, Tensor) else times, dtype=np.float64)
    if t.ndim != 1 or len(t) != nfe:
        raise ValueError(
            f"times: need the {nfe} model-evaluation times of a run ending at sigma = 0, got shape {t.shape}"
        )
    if not (np.all(np.isfinite(t)) and np.all(np.diff(t) < 0) and t[-1] >= schedule.t_min and t[0] <= schedule.t_max):
        raise ValueError(f"times: need finite, strictly decreasing times in [{schedule.t_min}, {schedule.t_max}]")
    return t


@dataclass
class _Search:
    """The objective E(choices, times) with its call accounting (module docstring)."""

    denoiser: Denoiser
    noise: Tensor
    teacher: Tensor
    cache: ReuseCache
    runs: int = 0
    weights: Tensor | None = None

    def error(self, choices: Sequence[StepChoice], times: np.ndarray) -> float:
        from ..sampling import sample  # the tuning package is imported by the sampling module's callers only

        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a diverging trial is scored, not reported
                out = sample(
                    self.denoiser, self.noise, solver=SOLVER, spacing=torch.from_numpy(np.ascontiguousarray(times)),
                    choices=list(choices), calls=self.cache.calls, wrappers=[self.cache], progress=False,
                )  # fmt: skip
        except NonFiniteModelOutput:  # a trial that diverged so far that the model overflowed
            return math.inf
        finally:
            self.runs += 1
        err = rmse(out, self.teacher, self.weights)
        return err if math.isfinite(err) else math.inf


def search_choices(
    denoiser: Denoiser | Callable[..., Tensor],
    schedule: NoiseSchedule | None,
    nfe: int,
    noise: Tensor,
    teacher: Tensor | Teacher,
    times: np.ndarray | Sequence[float] | Tensor,
    budget: int | Budget,
    seed: int = 0,
    *,
    refine_times: bool = True,
    calls: CallCount | None = None,
    choices: Sequence[StepChoice | dict[str, Any]] | None = None,
) -> tuple[str, dict[str, Any], np.ndarray]:
    """Search the per-step choices of the ``per_step`` solver (and the times) that bring the final sample from
    ``noise`` closest to ``teacher`` (module docstring).

    Args:
        denoiser: a :class:`~fewstep.Denoiser`, or a model for ``Denoiser(model, schedule)``.
        schedule: the model's schedule (None when ``denoiser`` is a Denoiser).
        nfe: the evaluations of one run: ``len(times)`` steps, the last to sigma = 0.
        noise: the calibration noise (the state at ``times[0]``), one batch.
        teacher: the teacher's final sample for ``noise`` (the exact or a high-NFE answer), same shape, or a
            :class:`~fewstep.tune.teacher.Teacher` (its ``final``; its ``weights`` weigh each sample's error).
        times: the initial model-evaluation times (``nfe`` of them, decreasing).
        budget: the most network calls the search may make (one batched call on ``noise`` is one call), or a
            :class:`~fewstep.tune.budget.Budget`, whose count the search's calls then join (up to its limit).
        seed: the seed of the sweep orders; the result is deterministic given it.
        refine_times: also move the times (coordinate moves in logSNR).
        calls: a :class:`~fewstep.model.CallCount` that receives the search's counts (network calls, substituted);
            with a ``Budget``, its own count is used.
        choices: the start's per-step choices (``nfe`` of them; e.g. a grown sampler's, :mod:`fewstep.tune.grow`);
            None: the best uniform schedule.

    Returns:
        ``("per_step", {"choices": [StepChoice.to_dict(), ...]}, times)``: the solver's name and JSON options for
        :func:`fewstep.sample` and the model-evaluation times (float64) to run them at.
    """
    if not isinstance(denoiser, Denoiser):
        if schedule is None:
            raise TypeError("schedule: needed when denoiser is a model rather than a fewstep.Denoiser")
        denoiser = Denoiser(denoiser, schedule)
    schedule = denoiser.schedule
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 2:
        raise ValueError(f"nfe: must be an integer >= 2, got {nfe!r}")
    if isinstance(budget, Budget):
        calls, budget = budget.calls, budget.left
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < nfe:
        raise ValueError(f"budget: must be an integer of at least nfe = {nfe} network calls, got {budget!r}")
    if isinstance(teacher, Teacher):
        weights, teacher = teacher.weights, teacher.final
    else:
        weights = None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: must be an integer, got {seed!r}")
    if not isinstance(noise, Tensor) or not isinstance(teacher, Tensor) or noise.shape != teacher.shape:
        raise ValueError("noise, teacher: need two tensors of the same shape (the teacher's answer for the noise)")
    t = _check_times(times, nfe, schedule)
    calls = calls if calls is not None else CallCount()
    search = _Search(denoiser, noise, teacher, ReuseCache(calls, calls.nfe + budget), weights=weights)
    rng = np.random.default_rng(seed)
    finite = [float(schedule.alpha(float(t[0]))) > 0.0, *[True] * (nfe - 2), False]  # the last step ends at sigma = 0
    options = _distinct_choices(nfe, finite)

    def trial(choices: Sequence[StepChoice], times_: np.ndarray) -> float:
        try:
            return search.error(choices, times_)
        except BudgetSpent:
            return math.nan

    given = None if choices is None else [as_choice(c) for c in choices]
    if given is not None and len(given) != nfe:
        raise ValueError(f"choices: need one per step ({nfe}), got {len(given)}")
    # start: the given choices, or the best uniform schedule, first DPM-Solver++(2M) and UniPC-bh2 (which these
    # uniform schedules equal)
    best_c: list[StepChoice] = given if given is not None else [StepChoice()] * nfe
    best_e = trial(best_c, t)
    if math.isnan(best_e):
        raise ValueError(f"budget: {budget} calls do not pay for one run of {nfe} evaluations")
    uniform = [StepChoice(corrector=True), *(c for c in max(options, key=len) if c != StepChoice())]
    for choice in uniform if given is None else []:
        e = trial([choice] * nfe, t)
        if math.isnan(e):
            break
        if e < best_e:
            best_c, best_e = [choice] * nfe, e
    delta, first, spent = FIRST_DELTA, True, False
    while not spent:
        improved = False
        order = list(range(nfe)) if first else rng.permutation(nfe).tolist()
        first = False
        for j in order:  # 1. the choice of step j
            for option in options[j]:
                if option == best_c[j]:
                    continue
                trial_c = [*best_c[:j], option, *best_c[j + 1 :]]
                e = trial(trial_c, t)
                if math.isnan(e):
                    spent = True
                    break
                if e < best_e:
                    best_c, best_e, improved = trial_c, e, True
            if spent:
                break
        if refine_times and not spent:  # 2. the times, in u = -lambda
            u = -schedule.lambda_(torch.from_numpy(t)).numpy()  # decreasing along the nodes
            u_end = -float(schedule.lambda_(torch.tensor(schedule.t_min, dtype=torch.float64)))
            for k in [int(v) for v in rng.permutation(np.arange(1, nfe))]:
                for neighbour in (u[k + 1] if k + 1 < nfe else u_end, u[k - 1]):  # towards the next, the previous
                    if not math.isfinite(neighbour):
                        continue
                    trial_t = t.copy()  # u_k moves a share delta of the gap towards the neighbour
                    trial_u = u[k] + delta * (neighbour - u[k])
                    trial_t[k] = float(schedule.t_of_lambda(torch.tensor(-trial_u, dtype=torch.float64)))
                    if not (trial_t[k - 1] > trial_t[k] > (trial_t[k + 1] if k + 1 < nfe else schedule.t_min)):
                        continue
                    e = trial(best_c, trial_t)
                    if math.isnan(e):
                        spent = True
                        break
                    if e < best_e:
                        t, best_e, improved = trial_t, e, True
                        u[k] = trial_u
                        break
                if spent:
                    break
            if not improved:
                delta *= 0.5
                improved = delta >= SMALLEST_DELTA
        if not improved:
            break
    return SOLVER, {"choices": [c.to_dict() for c in best_c]}, t.copy()
