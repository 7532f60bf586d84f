"""``RunContext``: everything of one sampling run that is random or observed, apart from the node table.

It owns the run's :class:`~fewstep.noise.source.NoiseSource`, the SDE window, the trajectory recorder, the
callback, the progress bar and the divergence guard. A solver reads the node table for its plan and calls the context in its loop:

- :meth:`RunContext.loop` for the step indices, :meth:`RunContext.emit` after each step;
- :meth:`RunContext.transition` for a Gaussian transition ``x + std z`` (drawn and recorded in one call);
  a solver that combines several draws into one transition uses :meth:`draw` and then :meth:`record`;
- :meth:`RunContext.stochastic_step` to know whether a step may add noise (the SDE window).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from .guard import DivergenceGuard
from .nodes import NodeTable
from .noise.source import NoiseSource
from .resume import StopRun

Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RunContext:
    """The random and observed side of a run over ``nodes`` (module docstring)."""

    nodes: NodeTable
    noise: NoiseSource = NoiseSource()
    callback: Callback | None = None
    progress: bool = False
    #: a :class:`~fewstep.trajectory.Trajectory` to record the run in (None: nothing is recorded, at no cost).
    trajectory: Any = None
    #: ``(t_hi, t_lo)`` in schedule time: stochastic solvers add noise only on the steps whose start time lies in
    #: ``[t_lo, t_hi]`` and take their deterministic (eta = 0) step elsewhere (None: every step).
    sde_window: tuple[float, float] | None = None
    #: the run's :class:`~fewstep.guard.DivergenceGuard`, shown every step's end state (None: no guard).
    guard: DivergenceGuard | None = None
    #: stop the run after this step (:class:`fewstep.resume.Checkpoint`; None: run to the end).
    stop_after: int | None = None
    #: a resumed run replays the steps before this one: they are not shown again (callback, guard, progress).
    replay_until: int = 0

    def with_noise(self, noise: NoiseSource) -> RunContext:
        """The same run with another noise source (a predictor inside a predictor-corrector step)."""
        return replace(self, noise=noise)

    def loop(self) -> Iterator[int]:
        """The step indices 0..N-1, with a progress bar when asked (from the first step not replayed)."""
        if self.progress:
            return itertools.chain(range(self.replay_until), progress_bar(range(self.replay_until, self.nodes.steps)))
        return iter(range(self.nodes.steps))

    def stochastic_step(self, i: int) -> bool:
        """Whether step i may add noise: it starts inside :attr:`sde_window` (every step when there is none)."""
        if self.sde_window is None:
            return True
        hi, lo = self.sde_window
        return lo <= float(self.nodes.t[i]) <= hi

    def transition(self, i: int, x: Tensor, s: float, t: float, std: float) -> tuple[Tensor, Tensor]:
        """Step i's Gaussian transition ``N(x, std^2 I)``: ``(x + std z, z)`` with ``z`` drawn between the noise levels
        ``s`` and ``t`` (``x`` is updated in place), recorded in the trajectory when there is one."""
        z = self.noise.draw(s, t, x)
        mean = x.clone() if self.trajectory is not None else x
        x.add_(z, alpha=std)
        self.record(i, mean, std, x, z)
        return x, z

    def draw(self, s: float, t: float, like: Tensor) -> Tensor:
        """A standard normal draw between the noise levels ``s`` and ``t``, for a solver that records the Gaussian
        transitions its draws enter itself, with :meth:`record` (one per draw, in draw order)."""
        return self.noise.draw(s, t, like)

    def record(self, i: int, mean: Tensor, std: float, x: Tensor, z: Tensor) -> None:
        """Record ``x = mean + std z``, a Gaussian transition of step i, when a trajectory is recorded."""
        if self.trajectory is not None:
            self.trajectory.record(i, mean, std, x, z)

    def emit(self, i: int, x: Tensor, denoised: Tensor) -> None:
        """Step i is done: ``x`` is the state at node i + 1, ``denoised`` the data estimate at node i. The callback gets
        ``{"i", "t", "t_next", "x", "denoised"}``: ``t`` the step's start time (where ``denoised`` was estimated),
        ``t_next`` the time of ``x`` (None at the clean end, where ``x`` is the data)."""
        if i < self.replay_until:
            return
        if self.guard is not None:
            self.guard.observe(i, x)
        if self.trajectory is not None:
            self.trajectory.step_done(i, x)
        if self.callback is not None:
            t_next = float(self.nodes.t[i + 1])
            info = {"i": i, "t": float(self.nodes.t[i]), "t_next": None if math.isnan(t_next) else t_next}
            self.callback({**info, "x": x, "denoised": denoised})
        if i == self.stop_after:
            raise StopRun(i, x)


def progress_bar(it: range) -> Iterator[int]:
    """tqdm's bar when tqdm is installed, else a plain count on stderr."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _plain_progress(it)
    return iter(tqdm(it, desc="fewstep", leave=False))


def _plain_progress(it: range) -> Iterator[int]:
    n = len(it)
    for k, i in enumerate(it):
        yield i
        print(f"\rfewstep: {k + 1}/{n}", end="" if k + 1 < n else "\n", file=sys.stderr, flush=True)
