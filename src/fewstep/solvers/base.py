"""The solver interface and registry.

A solver is a small class: class attributes describe it (order, NFE per step, capabilities, paper, peer names),
``__init__`` takes and validates its options, :meth:`Solver.step_orders` says which order each step of a
node table uses (so the NFE of a run is known before it starts) and :meth:`Solver.solve` is the update rule: a
generator that yields where it wants the model evaluated and never calls the model itself, so one update rule
serves :func:`fewstep.sample`, the diffusers scheduler's ``step()``, predictor-corrector and every layer of the
model-call stack.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..context import RunContext
from ..model import Point
from ..model.stack import Evaluation
from ..nodes import NodeTable
from ..options import suggestion

#: A solver run: it yields ``(x, point)`` where it wants the model evaluated, is sent ``(x0_hat, eps_hat)``
#: back, and returns the final state. The solver never calls the model itself.
Steps = Generator[tuple[Tensor, Point], Any, Tensor]


@dataclass(frozen=True)
class SolverInfo:
    name: str
    order: int
    nfe_per_step: int
    stochastic: bool
    summary: str
    paper: str
    peers: str


class Solver:
    name: ClassVar[str]
    order: ClassVar[int]
    nfe_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    peers: ClassVar[str] = ""
    #: True for solvers stepping in lambda (they take a first-order step where lambda is infinite);
    #: False for solvers stepping in the noise level (Euler/Heun), which only lower the order to a clean end.
    lambda_based: ClassVar[bool] = True
    #: False for solvers that use the data estimate alone (the driver then sends ``(x0_hat, None)``).
    needs_eps: ClassVar[bool] = True
    #: Capability: every draw of its noise enters a Gaussian transition it records (``RunContext.transition`` or
    #: ``draw`` + ``record``), so a :class:`~fewstep.trajectory.Trajectory` can record the run.
    records_transitions: ClassVar[bool] = False
    #: Whether its samples approach the diffusion's (the ODE's, for a deterministic solver) as the steps grow; False
    #: for a sampler built for another kind of model (``lcm``: consistency models), whose error with an ordinary
    #: denoiser does not vanish with the step count.
    converges: ClassVar[bool] = True
    #: Capability: the solver has a CFG++ form (Chung et al. 2024, :mod:`fewstep.solvers.cfg_pp`): under a CFG++ rule
    #: (:class:`~fewstep.guidance.CFGPlusPlus`), whose ``eps_hat`` is the unconditional noise prediction, it
    #: renoises with ``eps_hat`` and keeps the unconditional clean samples in its history, as the published CFG++
    #: samplers do; its outputs for ordinary evaluations are unchanged.
    cfg_pp: ClassVar[bool] = False
    #: Whether this instance runs the CFG++ form (set on the run's copy by :meth:`cfg_pp_form`, never by hand).
    runs_cfg_pp: bool = False

    @property
    def corrects_requests(self) -> bool:
        """Capability: the solver corrects a state after the evaluation at it (UniC, SA-Solver's and DPM-Solver-v3's
        correctors), so its requests are predicted states, not the states it continues from."""
        return False

    def batch_dependence(self) -> str | None:
        """Why a sample of this solver (with these options) depends on the other samples of its batch, which breaks
        the promise of per-sample ``seed=``; None when it does not (every built-in solver but some options)."""
        return None

    def recording_refusal(self) -> str | None:
        """Why a :class:`~fewstep.trajectory.Trajectory` cannot record a run of this solver with these options
        (None: it can; every deterministic solver can, a stochastic one when it :attr:`records_transitions`)."""
        if self.records_transitions or not self.stochastic:
            return None
        return f"trajectory: {self.name!r} draws noise that it does not record as Gaussian transitions"

    def cfg_pp_refusal(self) -> str | None:
        """Why this solver, with these options, has no CFG++ form (None: it has one, see :attr:`cfg_pp`)."""
        return None if self.cfg_pp else f"{self.name!r} has no CFG++ form"

    def cfg_pp_form(self) -> Solver:
        """A copy of this solver that runs its CFG++ form: it asks for ``eps_hat`` at every evaluation and reads each
        answer as a CFG++ pair (guided ``x0_hat``, unconditional ``eps_hat``). ValueError where it has none."""
        refusal = self.cfg_pp_refusal()
        if refusal is not None:
            raise ValueError(refusal)
        form = copy.copy(self)
        form.runs_cfg_pp = True
        form.__dict__["needs_eps"] = True  # the instance's own value: the class's stays as it is
        return form

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step_orders" in cls.__dict__:  # the plan is a function of the (immutable) table: computed once per run
            cls.step_orders = _memoized(cls.__dict__["step_orders"])  # type: ignore[method-assign,assignment]

    def step_orders(self, nodes: NodeTable) -> list[int]:
        """The order used on each step (1 on a step of infinite size)."""
        if self.lambda_based:
            return [self.order if nodes.finite(i) else 1 for i in range(nodes.steps)]
        return [1 if nodes.clean_end and i == nodes.steps - 1 else self.order for i in range(nodes.steps)]

    def step_nfe(self, order: int) -> int:
        """Model evaluations spent by one step at the given order (a singlestep method spends its order)."""
        return order if self.nfe_per_step > 1 else 1

    def nfe(self, nodes: NodeTable) -> int:
        """The run's model evaluations, from the node table alone (remembered with it, as the step orders)."""
        return nodes.remember(self, Solver.nfe, lambda: sum(map(self.step_nfe, self.step_orders(nodes))))

    def steps_for_nfe(self, nfe: int, first_infinite: bool, clean_end: bool) -> int:
        """The number of steps that spends exactly ``nfe`` evaluations (ValueError when impossible).

        Steps of infinite lambda-size (from alpha = 0, or to a clean end) run at order 1 and cost one evaluation.
        """
        per = self.nfe_per_step
        if per == 1:
            return nfe
        forced = int(first_infinite and self.lambda_based) + int(clean_end)
        if nfe == 1 and forced:
            return 1
        steps, rest = divmod(nfe + (per - 1) * forced, per)
        if rest or steps < max(forced, 1):
            ok = [n for n in range(1, 4 * per + 1) if (n + (per - 1) * forced) % per == 0]
            raise ValueError(
                f"nfe: {self.name!r} spends {per} evaluations per step ({forced} single-evaluation end step(s) here), "
                f"so nfe={nfe} cannot be spent exactly; possible values start {ok[:6]}"
            )
        return steps

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        """The update rule over ``nodes``, as a generator of model-evaluation requests (see :data:`Steps`); noise,
        recording, callback and progress go through ``ctx``."""
        raise NotImplementedError

    def run(self, x: Tensor, nodes: NodeTable, ctx: RunContext, evaluate: Evaluation) -> Tensor:
        """Drive :meth:`solve` to the end, answering each request with ``evaluate(x, point)`` (a run's model-call
        stack)."""
        return drive(self.solve(x, nodes, ctx), evaluate)

    @classmethod
    def info(cls) -> SolverInfo:
        return SolverInfo(cls.name, cls.order, cls.nfe_per_step, cls.stochastic, cls.summary, cls.paper, cls.peers)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"


def _memoized(step_orders: Callable[[Any, NodeTable], list[int]]) -> Callable[[Any, NodeTable], list[int]]:
    """``step_orders`` remembered with the node table (:meth:`NodeTable.remember`; a copy is returned)."""

    @functools.wraps(step_orders)
    def orders(self: Solver, nodes: NodeTable) -> list[int]:
        return list(nodes.remember(self, step_orders, lambda: step_orders(self, nodes)))

    return orders


def drive(steps: Generator[tuple[Tensor, Point], Any, Any], evaluate: Callable[[Tensor, Point], Any]) -> Any:
    """Run a step generator to its end, answering each ``(x, point)`` request with ``evaluate(x, point)``; its
    return value."""
    return drive_counted(steps, evaluate)[0]


def drive_counted(
    steps: Generator[tuple[Tensor, Point], Any, Any], evaluate: Callable[[Tensor, Point], Any]
) -> tuple[Any, int]:
    """:func:`drive`, also returning the number of requests answered."""
    n = 0
    try:
        request = next(steps)
        while True:
            n += 1
            request = steps.send(evaluate(*request))
    except StopIteration as done:
        return done.value, n


_REGISTRY: dict[str, type[Solver]] = {}

#: Names users bring from other tools, for the suggestion of an unknown name (diffusers' UniPC default is bh2).
SOLVER_ALIASES = {
    "unipc": "unipc_bh2",
    "euler_a": "euler_ancestral",
    "dpm++_2m": "dpmpp_2m",
    "dpm++_3m": "dpmpp_3m",
    "dpm++_2s": "dpmpp_2s",
    "dpm++_2m_sde": "dpmpp_2m_sde",
    "dpm++_3m_sde": "dpmpp_3m_sde",
    "dpm_2": "dpm_solver_2",
    "dpm_fast": "dpm_solver_3",
    "sa-solver": "sa_solver",
}


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: make a solver available by its name."""
    if cls.name in _REGISTRY:
        raise ValueError(f"solver name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def cfg_pp_solvers() -> list[str]:
    """The names of the solvers with a CFG++ form (:attr:`Solver.cfg_pp`)."""
    return [name for name, cls in _REGISTRY.items() if cls.cfg_pp]


def available() -> list[SolverInfo]:
    """Every solver, with its order, model evaluations per step and whether it is stochastic."""
    return [cls.info() for cls in _REGISTRY.values()]


def get_solver(solver: str | Solver, **options: Any) -> Solver:
    """A solver instance from a name (and options) or an instance (no options then)."""
    if isinstance(solver, Solver):
        if options:
            raise TypeError(
                f"solver options {sorted(options)} given with a solver instance; pass them to its constructor"
            )
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver: must be a solver name or a Solver instance, got {type(solver).__name__}")
    if solver not in _REGISTRY:
        raise ValueError(
            f"solver: unknown name {solver!r}{suggestion(solver, list(_REGISTRY), SOLVER_ALIASES)}; "
            f"choose one of {', '.join(_REGISTRY)}"
        )
    cls = _REGISTRY[solver]
    if not options:
        return cls()
    params = option_names(cls)
    unknown = [k for k in options if k not in params]
    if unknown:
        raise TypeError(f"solver {solver!r}: unknown option(s) {unknown}; allowed: {list(params) or 'none'}")
    return cls(**options)


_OPTION_NAMES: dict[type[Solver], tuple[str, ...]] = {}


def option_names(cls: type[Solver]) -> tuple[str, ...]:
    """The options a solver class takes: its constructor's parameters (read once per class)."""
    names = _OPTION_NAMES.get(cls)
    if names is None:
        names = _OPTION_NAMES[cls] = tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")
    return names
