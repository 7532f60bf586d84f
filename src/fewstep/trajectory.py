"""Trajectories and transition log-probabilities of a sampling run (for RL fine-tuning, e.g. GRPO / DDPO).

Every step of a stochastic sampler (``euler_ancestral``, ``ddpm``, ``dpm_solver_1_sde``, ``dpmpp_2m_sde``,
``dpmpp_3m_sde``) is a Gaussian transition ``x_{i+1} = mean_i + std_i z_i`` with ``z_i ~ N(0, I)``, where
``mean_i`` is a function of the states so far (and of the model) and ``std_i`` a per-step scalar. A
:class:`Trajectory` passed to :func:`fewstep.sample` as ``trajectory=`` records, for every step, the mean, the
std, the drawn noise and the next state, and the transition's log-density
``log N(x_{i+1}; mean_i, std_i^2 I)`` summed over all non-batch dimensions (shape ``(B,)``). Deterministic steps
(ODE steps, steps outside ``sde_window``, the step to the clean data) have ``std = 0``, no noise and no
log-probability, and are left out of :attr:`Trajectory.log_prob`.

With ``grad=True`` the means keep the autograd graph to the model, so ``log_prob`` can be differentiated.
:meth:`Trajectory.replay` gives a noise sampler that feeds the recorded noise back in order, which reproduces the
run exactly. Solvers whose noise is not a Gaussian transition of one step (``edm_sde``: churn noise followed by a
Heun step) raise ``NotImplementedError`` when recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Trajectory", "gaussian_log_prob", "sample_with_logprob"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: float) -> Tensor:
    """``log N(x; mean, std^2 I)`` summed over all dimensions but the first (shape ``(B,)``)."""
    z = (x - mean) / std
    return (-0.5 * z.square() - (math.log(std) + _HALF_LOG_2PI)).flatten(1).sum(1)


@dataclass
class Trajectory:
    """The record of one run: ``states[0]`` is the start noise (in the integration dtype), ``states[i + 1]`` the state
    after step ``i``; per step ``means[i]``, ``stds[i]`` (0 for a deterministic step, whose mean is the next state),
    ``noises[i]`` (the standard normal drawn, None when deterministic) and ``log_probs[i]`` (shape ``(B,)``, None
    when deterministic). ``sample`` is the returned sample."""

    states: list[Tensor] = field(default_factory=list)
    means: list[Tensor] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    noises: list[Tensor | None] = field(default_factory=list)
    log_probs: list[Tensor | None] = field(default_factory=list)
    sample: Tensor | None = None

    def start(self, x: Tensor) -> None:
        """Begin a run from ``x`` (clears an earlier record)."""
        self.states, self.means, self.stds, self.noises, self.log_probs = [x], [], [], [], []
        self.sample = None

    def record(self, i: int, mean: Tensor, std: float, x_next: Tensor, z: Tensor) -> None:
        """Step ``i`` drew ``x_next = mean + std z``."""
        if i != len(self.means):
            raise RuntimeError(f"trajectory: step {i} recorded out of order (expected step {len(self.means)})")
        self.means.append(mean)
        self.stds.append(float(std))
        self.noises.append(z)
        self.log_probs.append(gaussian_log_prob(x_next, mean, float(std)))

    def step_done(self, i: int, x: Tensor) -> None:
        """Step ``i`` ended at ``x`` (recorded as deterministic unless :meth:`record` was called for it)."""
        if len(self.means) == i:
            self.means.append(x)
            self.stds.append(0.0)
            self.noises.append(None)
            self.log_probs.append(None)
        elif len(self.means) != i + 1:
            raise RuntimeError(f"trajectory: step {i} ended out of order")
        self.states.append(x)

    @property
    def stochastic(self) -> list[bool]:
        """Which steps drew noise."""
        return [s > 0 for s in self.stds]

    @property
    def log_prob(self) -> Tensor:
        """The log-density of the whole run given its start, ``sum_i log_probs[i]`` over the stochastic steps
        (shape ``(B,)``; zeros when no step drew noise)."""
        parts = [lp for lp in self.log_probs if lp is not None]
        if not parts:
            return torch.zeros(self.states[0].shape[0], dtype=self.states[0].dtype, device=self.states[0].device)
        return torch.stack(parts).sum(0)

    def replay(self) -> Callable[[float, float], Tensor]:
        """A ``noise_sampler`` returning the recorded noise in order: ``fewstep.sample(..., noise_sampler=
        trajectory.replay())`` with the same arguments reproduces the run."""
        draws = [z for z in self.noises if z is not None]
        calls = iter(draws)

        def noise(s: float, t: float) -> Tensor:
            try:
                return next(calls)
            except StopIteration:
                raise RuntimeError(f"trajectory.replay: the run asked for more than {len(draws)} noise draws") from None

        return noise


def sample_with_logprob(*args: Any, **kwargs: Any) -> Trajectory:
    """:func:`fewstep.sample` (same arguments) returning the run's :class:`Trajectory`, with the sample as
    ``trajectory.sample``."""
    from .sampling import sample

    if "trajectory" in kwargs:
        raise TypeError(
            "sample_with_logprob: records its own trajectory; call fewstep.sample(..., trajectory=) instead"
        )
    trajectory = Trajectory()
    sample(*args, trajectory=trajectory, **kwargs)
    return trajectory
