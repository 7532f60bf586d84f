"""Stop a run after a step and finish it later, bit-identically to a run that never stopped.

``fewstep.sample(..., checkpoint=Checkpoint(step=k))`` runs steps ``0..k`` and returns the state at node ``k + 1``
(the partial sample); ``checkpoint.state`` is then a :class:`SamplingState`, which :meth:`SamplingState.save`
writes to a file. ``fewstep.sample(..., resume=state)`` with the same arguments finishes the run.

What a state holds, for every solver alike: the run's start, the model's answers to the solver's requests up to the
stop, and the noise source's position at the start (a generator's state, the per-sample streams' states, torch's
global generator's state; a ``noise_sampler`` with ``state()``/``restore()`` methods is saved the same way, one
without them must be a pure function of the levels, as Brownian paths are). Resuming replays the solver's update
rule from the start with those answers instead of model calls and with the restored noise, so every multistep
history, corrector buffer and momentum is rebuilt exactly as it was, and then continues with the model. The replay
costs the solver's arithmetic (microseconds per step) and no model call; the state costs one copy of the state per
model answer so far (``O(k x state)``, on the disk rather than in the running sampler).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .model import Point
from .model.stack import Evaluation, Prediction
from .nodes import NodeTable

__all__ = ["Checkpoint", "SamplingState", "StopRun"]


@dataclass(frozen=True)
class SamplingState:
    """A run stopped after step ``step - 1`` (module docstring).

    Fields: ``x`` the state at node ``step`` (what the callback of step ``step - 1`` saw), ``step`` the next step,
    ``start`` the run's start in the solver's dtype, ``answers`` the model's ``(x0_hat, eps_hat)`` for each request so
    far, ``noise`` the noise source's position at the start, ``run`` what identifies the run (solver and options,
    node times, shape, dtype), checked when resuming.
    """

    x: Tensor
    step: int
    start: Tensor
    answers: tuple[tuple[Tensor, Tensor | None], ...]
    noise: Any
    run: dict[str, Any]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state to ``path`` (``torch.save`` of plain tensors, lists and strings)."""
        torch.save({**asdict(self), "answers": [list(a) for a in self.answers]}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str | torch.device | None = None) -> SamplingState:
        """Read a state written by :meth:`save`."""
        data = torch.load(path, map_location=map_location, weights_only=False)
        data["answers"] = tuple(tuple(a) for a in data["answers"])
        return cls(**data)

    def check(self, run: dict[str, Any], start: Tensor) -> None:
        """ValueError naming what differs when the resuming call is not the run this state was saved from."""
        for key, saved in self.run.items():
            if repr(run.get(key)) != repr(saved):  # repr: exact for floats, and nan equals nan
                raise ValueError(
                    f"resume: the state was saved from a run with {key}={saved!r}, this call has {run.get(key)!r}"
                )
        if start.shape != self.start.shape or not torch.equal(start, self.start.to(start.device)):
            raise ValueError("noise: differs from the start of the run the resume state was saved from")


class StopRun(Exception):
    """Raised by the run context after the checkpoint's step: ends the solver's loop."""

    def __init__(self, step: int, x: Tensor) -> None:
        super().__init__(f"stopped after step {step}")
        self.step, self.x = step, x


class Checkpoint:
    """``sample(..., checkpoint=Checkpoint(step=k))``: stop after step ``k`` (``0 <= k < steps``) and keep the
    :class:`SamplingState` in :attr:`state`."""

    def __init__(self, step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step: must be a step index (an integer >= 0), got {step!r}")
        self.step = step
        self.state: SamplingState | None = None


class Recorder:
    """An evaluation layer that keeps a copy of every answer (the model's outputs may be changed in place later)."""

    def __init__(self, inner: Evaluation) -> None:
        self.inner = inner
        self.answers: list[tuple[Tensor, Tensor | None]] = []

    def __call__(self, x: Tensor, p: Point) -> Prediction:
        x0, eps = self.inner(x, p)
        self.answers.append((x0.detach().clone(), None if eps is None else eps.detach().clone()))
        return x0, eps


class Replay:
    """An evaluation layer that answers the first requests from a saved state's answers (fresh copies, no model
    call), then passes the rest to ``inner``."""

    def __init__(self, inner: Evaluation, answers: tuple[tuple[Tensor, Tensor | None], ...]) -> None:
        self.inner = inner
        self.answers = answers
        self.served = 0

    def __call__(self, x: Tensor, p: Point) -> Prediction:
        if self.served < len(self.answers):
            x0, eps = self.answers[self.served]
            self.served += 1
            return x0.to(x.device).clone(), None if eps is None else eps.to(x.device).clone()
        return self.inner(x, p)


class Resumption:
    """A run's side of checkpointing: what it replays (``resume``), where it stops (``checkpoint``), and the layers
    that record and replay the model's answers. Built (and every option checked) before any model call."""

    def __init__(
        self,
        checkpoint: Checkpoint | None,
        resume: SamplingState | None,
        steps: int,
        run: dict[str, Any],
        start: Tensor,
        noise_position: Any,
    ) -> None:
        self.checkpoint, self.resume, self.run = checkpoint, resume, run
        self.stop_after = checkpoint.step if checkpoint is not None else None
        self.replay_until = resume.step if resume is not None else 0
        # the position at the start of the run; a resumed run keeps the one it was saved with
        self.noise_position = resume.noise if resume is not None else noise_position
        self.start = start.clone() if checkpoint is not None else start  # before the solver changes it in place
        self.recorder: Recorder | None = None
        if self.stop_after is not None and not self.replay_until <= self.stop_after < steps:
            raise ValueError(
                f"checkpoint: step {self.stop_after} is not a step of this run (0 <= step < {steps}"
                + (f", after the resumed step {self.replay_until - 1})" if resume is not None else ")")
            )

    @classmethod
    def of(
        cls,
        checkpoint: object,
        resume: object,
        trajectory: object,
        solver: object,
        nodes: NodeTable,
        start: Tensor,
        noise: Any,
    ) -> Resumption | None:
        """None when neither ``checkpoint`` nor ``resume`` is given; else the checked resumption, with ``noise`` (a
        :class:`~fewstep.noise.source.NoiseSource`) restored to the saved start position when resuming."""
        if checkpoint is None and resume is None:
            return None
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise TypeError(f"checkpoint: must be a fewstep.Checkpoint, got {type(checkpoint).__name__}")
        if resume is not None and not isinstance(resume, SamplingState):
            raise TypeError(f"resume: must be a fewstep.SamplingState, got {type(resume).__name__}")
        if trajectory is not None:
            raise ValueError("trajectory, checkpoint, resume: a recorded trajectory cannot be split between runs")
        steps = nodes.steps
        run = {"solver": repr(solver), "times": nodes.t.tolist(), "shape": list(start.shape), "noise": noise.kind}
        if resume is not None:
            resume.check(run, start)
            if resume.step > steps:
                raise ValueError(f"resume: the state is after step {resume.step - 1}, this run has {steps} steps")
            noise.restore(resume.noise, start)
        position = noise.position(start) if checkpoint is not None and resume is None else None
        return cls(checkpoint, resume, steps, run, start, position)  # type: ignore[arg-type]

    def wrap(self, outer: Evaluation) -> Evaluation:
        """The stack's outer layer with the saved answers replayed first and, for a checkpoint, every answer kept."""
        if self.resume is not None:
            outer = Replay(outer, self.resume.answers)
        if self.checkpoint is not None:
            outer = self.recorder = Recorder(outer)
        return outer

    def stopped(self, stop: StopRun) -> Tensor:
        """The run stopped at the checkpoint: keep the state in it and return the state at the next node."""
        assert self.checkpoint is not None and self.recorder is not None
        x = stop.x.detach().clone()
        answers = tuple(self.recorder.answers)
        self.checkpoint.state = SamplingState(x, stop.step + 1, self.start, answers, self.noise_position, self.run)
        return x
