"""``NodeTable``: the nodes of one sampling run, with every per-node quantity precomputed, immutable.

Nodes ``t_0 > t_1 > ... > t_N`` in schedule time; the last node may be the clean end (sigma = 0, lambda = +inf),
which is a target only and never evaluated. Node arrays are read-only float64 numpy arrays; the evaluation
:class:`~fewstep.model.Point` of each model node (and of any intermediate time a solver asks for) is built before
the step loop, so that the loop does tensor arithmetic with Python floats only.

The table is the whole input of a solver's plan: which order each step takes and so the NFE of the run
(:meth:`fewstep.solvers.Solver.step_orders`) are functions of the table (and of ``nfe_budget``, the NFE the run
was asked to spend, which DPM-Solver's order mixing needs) and of the solver alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from .memo import ValueCache, state_key, value_key
from .model import Denoiser, Point
from .model.denoiser import PointValues
from .schedules import NoiseSchedule

T = TypeVar("T")

_NO_CONTEXT = contextlib.nullcontext()
_OWNER_KEY, _NO_KEY = object(), object()  # NodeTable.memo's entries of the owners' value keys


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a`` (a new float64 array of this table's own) made read-only."""
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class TableValues:
    """The host side of a node table: its arrays (fields of :class:`NodeTable`) and, when the model's time input is
    named, the :class:`~fewstep.model.denoiser.PointValues` of its model nodes. ``plans`` holds the plans solvers
    derive from it (:meth:`NodeTable.remember`), shared by every run that finds these values in the cache."""

    t: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    lam: np.ndarray
    h: np.ndarray
    tau: np.ndarray
    c: np.ndarray
    point_values: PointValues | None
    plans: dict[Hashable, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        schedule: NoiseSchedule,
        t: np.ndarray,
        clean_end: bool,
        model_points: Sequence[Point],
        point_values: PointValues | None,
    ) -> TableValues:
        """The arrays of node times ``t`` (a trailing nan for a clean end) from the model nodes' values."""
        if point_values is not None:
            alpha, sigma, lam = list(point_values.alpha), list(point_values.sigma), list(point_values.lam)
        else:
            alpha, sigma, lam = (
                [p.alpha for p in model_points],
                [p.sigma for p in model_points],
                [p.lam for p in model_points],
            )
        if clean_end:
            alpha.append(schedule.alpha_clean)
            sigma.append(0.0)
            lam.append(math.inf)
        a, s, la = np.array(alpha, dtype=np.float64), np.array(sigma, dtype=np.float64), np.array(lam, dtype=np.float64)
        regular = bool(np.isfinite(la[:-1]).all() and (a > 0).all())  # no inf - inf, no x / 0 below
        with np.errstate(invalid="ignore", divide="ignore") if not regular else _NO_CONTEXT:
            h = la[1:] - la[:-1]  # inf on a step to the clean end (or from alpha = 0)
            if schedule.ode_variable == "t":
                tau, c = np.where(np.isnan(t), 0.0, t), np.ones_like(a)
            else:
                tau, c = s / a, a.copy()
        t = np.array(t, dtype=np.float64)
        return cls(_frozen(t), _frozen(a), _frozen(s), _frozen(la), _frozen(h), _frozen(tau), _frozen(c), point_values)


#: The host side of recent node tables, by value (:mod:`fewstep.memo`).
TABLES: ValueCache[TableValues] = ValueCache(16)


def _table_key(denoiser: Denoiser, t: np.ndarray, clean_end: bool, nfe_budget: int | None) -> Hashable | None:
    """The value key of a table's host side: the schedule's state, the prediction, the model's time input, the
    node times and the NFE budget; None when one of them has none (a callable time input, a schedule holding a
    callable) or the table has a single model node."""
    if callable(denoiser.time_input) or len(t) - clean_end < 2:
        return None
    schedule = state_key(denoiser.schedule, *SCHEDULE_CLASS_STATE)
    times = value_key(t)
    if schedule is None or times is None:
        return None
    return (schedule, denoiser.prediction, denoiser.time_input, times, clean_end, nfe_budget)


#: The class-level attributes of a schedule that its table depends on, besides its instance state.
SCHEDULE_CLASS_STATE = ("t_min", "t_max", "ode_variable", "alpha_clean", "default_time_input")


@dataclass(frozen=True, eq=False)
class NodeTable:
    """The run's nodes (module docstring). Build it with :meth:`build`.

    Fields: ``t`` (nan at a clean end), ``alpha``, ``sigma``, ``lam`` (lambda = log(alpha/sigma)), ``h`` (the step
    sizes in lambda, inf on a step from alpha = 0 or to sigma = 0), ``tau`` and ``c`` (the ODE frame of
    :meth:`ode_frame`), ``points`` (the model node Points; None at a clean end), ``clean_end`` and ``nfe_budget``.
    """

    schedule: NoiseSchedule
    t: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    lam: np.ndarray
    h: np.ndarray
    tau: np.ndarray
    c: np.ndarray
    points: tuple[Point | None, ...]
    clean_end: bool
    nfe_budget: int | None
    make_point: Callable[[float], Point] = field(repr=False)
    #: plans derived from this table by solvers whose state has a value key, shared with the later runs on the same
    #: values (:meth:`remember`; a table of its own by default)
    shared: dict[Hashable, Any] = field(repr=False, default_factory=dict)
    #: whether each step has a finite lambda-size (:meth:`finite`)
    finite_steps: tuple[bool, ...] = field(init=False, repr=False)
    #: plans derived from this table by other solvers, computed once per run
    memo: dict[Hashable, Any] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        finite = np.isfinite(self.lam)
        object.__setattr__(self, "finite_steps", tuple((finite[:-1] & finite[1:]).tolist()))

    @classmethod
    def build(
        cls,
        denoiser: Denoiser,
        t: np.ndarray,
        clean_end: bool,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
        nfe_budget: int | None = None,
    ) -> NodeTable:
        """The table of node times ``t`` (with a trailing nan for a clean end) for states of ``batch`` samples on
        ``device`` in ``dtype``. Its host side comes from the cache when a run with the same values built it
        (:data:`TABLES`), and so do the Points of the last runs on the same device, dtype and batch while their time
        tensors are unchanged (:meth:`~fewstep.model.denoiser.PointValues.points`)."""
        sched = denoiser.schedule
        key = _table_key(denoiser, t, clean_end, nfe_budget)
        values = TABLES.get(key)
        model_points: Sequence[Point]
        if values is not None and values.point_values is not None:
            model_points = values.point_values.points(batch, device, dtype)
        else:
            model_t = t[:-1] if clean_end else t
            vectorized = not callable(denoiser.time_input) and len(model_t) >= 2
            point_values = denoiser.point_values(model_t) if vectorized else None
            if point_values is not None:
                model_points = point_values.points(batch, device, dtype)
            else:
                model_points = denoiser.points(model_t, batch, device, dtype)
            values = TABLES.put(key, TableValues.of(sched, t, clean_end, model_points, point_values))
        points: list[Point | None] = list(model_points)
        if clean_end:
            points.append(None)
        v = values
        return cls(
            sched,
            v.t,
            v.alpha,
            v.sigma,
            v.lam,
            v.h,
            v.tau,
            v.c,
            tuple(points),
            clean_end,
            nfe_budget,
            lambda time: denoiser.point(time, batch, device, dtype),
            v.plans if key is not None else {},
        )

    def remember(self, owner: object, what: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, a plan that ``owner`` (a solver) derives from this table alone, computed once per table.
        When ``owner``'s state has a value key (:func:`fewstep.memo.state_key`) the plan is kept with the table's
        values and shared with later runs on the same values; otherwise with this table only."""
        owner_key = self.memo.get((_OWNER_KEY, owner), _NO_KEY)
        if owner_key is _NO_KEY:  # the owner's state is read once per table
            owner_key = self.memo[_OWNER_KEY, owner] = state_key(owner)
        if owner_key is None:
            memo, key = self.memo, (owner, what)
        else:
            memo, key = self.shared, (owner_key, what)
        if key not in memo:
            memo[key] = compute()
        return memo[key]  # type: ignore[no-any-return]

    def tail(self, begin: int) -> NodeTable:
        """The table of the nodes from ``begin`` on (a run started part-way), without an NFE budget."""
        s = slice(begin, None)
        return NodeTable(
            self.schedule,
            self.t[s],
            self.alpha[s],
            self.sigma[s],
            self.lam[s],
            self.h[s],
            self.tau[s],
            self.c[s],
            self.points[s],
            self.clean_end,
            None,
            self.make_point,
        )

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    @property
    def first_infinite(self) -> bool:
        """Whether the first node has alpha = 0 (lambda = -inf)."""
        return not math.isfinite(float(self.lam[0]))

    def finite(self, i: int) -> bool:
        """Whether step i has a finite lambda-size (so higher-order corrections are defined)."""
        return self.finite_steps[i]

    def node(self, i: int) -> Point:
        """The Point of model node i."""
        p = self.points[i]
        if p is None:
            raise IndexError("the clean end is not a model node")
        return p

    def point(self, t: float) -> Point:
        """The Point of any schedule time (an intermediate evaluation of a singlestep solver)."""
        return self.make_point(t)

    def point_at_lambda(self, lam: float) -> Point:
        return self.point(float(self.schedule.t_of_lambda(lam)))

    # Euler/Heun-type solvers integrate y = x / c in the noise level tau (NoiseSchedule.ode_variable):
    #   "sigma": tau = sigma/alpha, c = alpha, dy/dtau = eps_hat                  (k-diffusion, EDM)
    #   "t":     tau = t,           c = 1,     dy/dtau = alpha' x0_hat + sigma' eps_hat  (flow matching)
    def ode_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tau, c)`` at every node; ``tau`` is also the noise level the noise samplers are given (inf at
        alpha = 0, 0 at the clean end)."""
        return self.tau, self.c

    def frame_at(self, p: Point) -> tuple[float, float]:
        """``(tau, c)`` of :meth:`ode_frame` at any point (a node or an intermediate time)."""
        if self.schedule.ode_variable == "t":
            return p.t, 1.0
        return p.sigma / p.alpha, p.alpha

    def ode_velocity(self, p: Point) -> tuple[float, float]:
        """Coefficients ``(a, b)`` of ``dy/dtau = a x0_hat + b eps_hat`` at point p."""
        if self.schedule.ode_variable == "t":
            return p.dalpha, p.dsigma
        return 0.0, 1.0
