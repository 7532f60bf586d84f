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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .model import Denoiser, Point
from .schedules import NoiseSchedule

_NO_CONTEXT = contextlib.nullcontext()


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a`` (a new float64 array of this table's own) made read-only."""
    a.flags.writeable = False
    return a


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
    #: whether each step has a finite lambda-size (:meth:`finite`)
    finite_steps: tuple[bool, ...] = field(init=False, repr=False)
    #: plans derived from this table by a solver (its step orders), computed once per run
    memo: dict[object, list[int]] = field(init=False, repr=False, default_factory=dict)

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
        ``device`` in ``dtype``."""
        sched = denoiser.schedule
        model_t = t[:-1] if clean_end else t
        model_points = denoiser.points(model_t, batch, device, dtype)
        alpha = [p.alpha for p in model_points]
        sigma = [p.sigma for p in model_points]
        lam = [p.lam for p in model_points]
        points: list[Point | None] = list(model_points)
        if clean_end:
            points.append(None)
            alpha.append(sched.alpha_clean)
            sigma.append(0.0)
            lam.append(math.inf)
        a, s, la = np.array(alpha, dtype=np.float64), np.array(sigma, dtype=np.float64), np.array(lam, dtype=np.float64)
        regular = bool(np.all(np.isfinite(la[:-1]))) and bool(np.all(a > 0))  # no inf - inf, no x / 0 below
        with np.errstate(invalid="ignore", divide="ignore") if not regular else _NO_CONTEXT:
            h = np.diff(la)  # inf on a step to the clean end (or from alpha = 0)
            if sched.ode_variable == "t":
                tau, c = np.where(np.isnan(t), 0.0, t), np.ones_like(a)
            else:
                tau, c = s / a, a.copy()
        return cls(
            sched,
            _frozen(np.array(t, dtype=np.float64)),
            _frozen(a),
            _frozen(s),
            _frozen(la),
            _frozen(h),
            _frozen(tau),
            _frozen(c),
            tuple(points),
            clean_end,
            nfe_budget,
            lambda time: denoiser.point(time, batch, device, dtype),
        )

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
