"""Trajectories and transition log-probabilities of a sampling run (for RL fine-tuning, e.g. GRPO / DDPO).

Every step of a one-draw stochastic sampler (``euler_ancestral``, ``ddpm``, ``dpm_solver_1_sde``, ``dpmpp_2m_sde``,
``dpmpp_3m_sde``, ``euler_maruyama``, ``er_sde_1/2/3``, ``seeds_1``, ``sa_solver`` without corrector) is a Gaussian
transition ``x_{i+1} = mean_i + std_i z_i`` with ``z_i ~ N(0, I)``, where ``mean_i`` is a function of the states
so far (and of the model) and ``std_i`` a per-step scalar. A :class:`Trajectory` passed to :func:`fewstep.sample`
as ``trajectory=`` records, for every draw, the mean, the std, the drawn noise and the state it produced, and the
transition's log-density ``log N(x_{i+1}; mean_i, std_i^2 I)`` summed over all non-batch dimensions (shape
``(B,)``). Deterministic steps (ODE steps, steps outside ``sde_window``, the step to the clean data) have one
record with ``std = 0``, no noise and no log-probability, and are left out of :attr:`Trajectory.log_prob`.

With ``grad=True`` the means keep the autograd graph to the model, so ``log_prob`` can be differentiated; the
log-density is taken at the drawn state detached (the action); the mean's graph also runs through the earlier
states (with the drawn noise held fixed), so the gradient is the total derivative along the run.
:meth:`Trajectory.replay` gives a noise sampler that feeds the recorded noise back in order, which reproduces the
run exactly.

Solvers whose noise enters a step through a state that is not the next one record the chain of the states the
noise produces (:attr:`Trajectory.noisy`); each is Gaussian given the earlier recorded states, so
:attr:`Trajectory.log_prob` is the exact log-density of these states given the start (the density of ``x_{i+1}``
given ``x_i`` alone would need the Jacobian of a model-dependent map and is not computed):

- ``edm_sde`` (churn noise, then a deterministic Heun step): step i records the churn ``x_hat_i = mean_i + std_i
  z_i`` with ``mean_i = (alpha_hat/alpha_i) x_i`` (``noisy[i] = x_hat_i``, not ``x_{i+1} = Heun_i(x_hat_i)``). The
  churned states are a Markov chain with Gaussian transitions ``N((alpha_hat_i/alpha_i) Heun_{i-1}(x_hat_{i-1}),
  std_i^2 I)`` whose means involve the model. Steps without churn are deterministic.
- ``sa_solver`` with corrector: step i records the predicted state ``x~_{i+1} = A x_i + sum_j b_j D_{i-j} + std_i
  z_i`` (``noisy[i]``, the state the step emits, at which the model is evaluated); the corrected state
  ``x_{i+1}`` reuses ``z_i`` and is a deterministic function of ``x~_{i+1}`` and the earlier predicted states.
- ``seeds_2``, ``seeds_3``, ``dpm_solver_2_sde``: a step draws one normal per sub-interval and records one
  transition per draw, in order: stage ``u_j = mean_j + std_j z_j`` with ``z_j`` the stage's last normal and
  ``mean_j`` the rest, which involves the model at the earlier stages and the earlier normals of the step (fixed by
  the earlier stage states). A step then has several records (:attr:`Trajectory.step` maps records to steps,
  :attr:`Trajectory.step_log_probs` sums them per step); the last stage is ``x_{i+1}``. Their sum is the
  log-density of the stage states given the step's start.

``pc_langevin`` with ``n_corrector > 0`` raises NotImplementedError: its Langevin step size depends on the drawn
noise's norm (and with ``norm="batch"`` on the other samples), so the corrected state is not Gaussian; with
``n_corrector=0`` its predictor's transitions are recorded. Other solvers whose noise is not recorded (drawn
whose solver does not record its draws, :attr:`fewstep.solvers.Solver.records_transitions`) raise
``NotImplementedError`` before the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Trajectory", "gaussian_log_prob"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: float) -> Tensor:
    """``log N(x; mean, std^2 I)`` summed over all dimensions but the first (shape ``(B,)``)."""
    z = (x - mean) / std
    return (-0.5 * z.square() - (math.log(std) + _HALF_LOG_2PI)).flatten(1).sum(1)


@dataclass
class Trajectory:
    """The record of one run: ``states[0]`` is the start noise (in the integration dtype), ``states[i + 1]`` the state
    after step ``i``. The transitions are recorded in draw order, one record per draw (a deterministic step has one
    record without a draw; a step of ``sa_solver``, ``edm_sde`` or a one-draw sampler has one record, so record
    ``k`` is step ``k``; a step of ``seeds_2``, ``seeds_3`` or ``dpm_solver_2_sde`` has one per stage): ``step[k]``
    (the step of record ``k``), ``means[k]``, ``stds[k]`` (0 for a deterministic step, whose mean is the next
    state), ``noises[k]`` (the standard normal drawn, None when deterministic), ``noisy[k]`` (the state the noise
    produced, ``mean + std z``: ``states[i + 1]``, the churned state of ``edm_sde``, the predicted state of
    ``sa_solver`` or a stage state; None when deterministic) and ``log_probs[k] = log N(noisy[k]; means[k],
    stds[k]^2 I)`` (shape ``(B,)``, None when deterministic); :attr:`step_log_probs` sums them per step.
    ``sample`` is the returned sample."""

    states: list[Tensor] = field(default_factory=list)
    means: list[Tensor] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    noises: list[Tensor | None] = field(default_factory=list)
    log_probs: list[Tensor | None] = field(default_factory=list)
    noisy: list[Tensor | None] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    sample: Tensor | None = None

    def start(self, x: Tensor) -> None:
        """Begin a run from ``x`` (clears an earlier record)."""
        self.states, self.means, self.stds, self.noises, self.log_probs, self.noisy = [x], [], [], [], [], []
        self.step = []
        self.sample = None

    def record(self, i: int, mean: Tensor, std: float, x_next: Tensor, z: Tensor) -> None:
        """Step ``i`` drew ``x_next = mean + std z`` (the next state, or a state the rest of the step starts from; a
        step may record several draws, in order)."""
        if i != len(self.states) - 1:
            raise RuntimeError(f"trajectory: step {i} recorded out of order (expected step {len(self.states) - 1})")
        self.step.append(i)
        self.means.append(mean)
        self.stds.append(float(std))
        self.noises.append(z)
        self.noisy.append(x_next)
        # the drawn state is the action: detached, else x_next - mean = std z would carry no gradient at all
        self.log_probs.append(gaussian_log_prob(x_next.detach(), mean, float(std)))

    def step_done(self, i: int, x: Tensor) -> None:
        """Step ``i`` ended at ``x`` (recorded as deterministic unless :meth:`record` was called for it)."""
        if i != len(self.states) - 1:
            raise RuntimeError(f"trajectory: step {i} ended out of order")
        if not self.step or self.step[-1] != i:
            self.step.append(i)
            self.means.append(x)
            self.stds.append(0.0)
            self.noises.append(None)
            self.noisy.append(None)
            self.log_probs.append(None)
        self.states.append(x)

    @property
    def stochastic(self) -> list[bool]:
        """Which records drew noise (per step for the solvers with at most one draw per step)."""
        return [s > 0 for s in self.stds]

    @property
    def step_log_probs(self) -> list[Tensor | None]:
        """Per step, the sum of its records' log-densities (None for a deterministic step)."""
        out: list[Tensor | None] = [None] * (len(self.states) - 1)
        for i, lp in zip(self.step, self.log_probs, strict=True):
            if lp is not None:
                prev = out[i]
                out[i] = lp if prev is None else prev + lp
        return out

    @property
    def log_prob(self) -> Tensor:
        """The log-density of the whole run given its start, ``sum_k log_probs[k]`` over the records that drew noise
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
