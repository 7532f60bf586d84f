"""Keeping unadjusted kinetic-Langevin chains finite: reject a step whose energy blows up, and back off the step.

An unadjusted step is a Metropolis proposal accepted with probability one. In the tails of a target whose
curvature grows (a funnel's neck, a banana's arms) a step size tuned in the bulk makes the integrator unstable,
and the energy error ``dH`` of the step (its Hamiltonian part; for the randomized midpoint the total change of
``H(x, v) = -log p(x) + v^T M v / 2``) grows geometrically until the draws overflow. The guard:

* **rejects** a step whose ``dH`` exceeds ``max_energy_error`` (default 1000, the energy error at which Stan and
  blackjax call a transition divergent) or is not finite, or whose position or score is not finite: the chain keeps its
  position and score and its velocity is reversed, as generalised HMC does on a rejection (Horowitz 1991). Where
  ``dH > max_energy_error`` a Metropolis test would accept with probability at most ``exp(-max_energy_error)``,
  so in the bulk of the target the guarded chain is the unadjusted one;
* **backs off** that chain's step size by ``step_backoff`` (default 1/2), at most once every ``CHECK_EVERY``
  steps, for the rest of the run: a chain whose step is too large where it goes gets a smaller one (a finite
  number of decreases, so the kernel settles).

A score-only target has no energy: only non-finite positions or scores are rejected. The rejections are counted per chain
(``Chains.divergences``). The decision is tensor-only each step; the step sizes are re-read (one host
synchronisation) every ``CHECK_EVERY`` steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CHECK_EVERY", "StepBackoff", "divergent"]

#: steps between the (synchronising) checks that apply pending step-size back-offs
CHECK_EVERY = 16


def divergent(x: Tensor, score: Tensor, energy_error: Tensor | None, max_energy_error: float) -> Tensor:
    """``[chains]`` bool: a non-finite position ``x`` or score ``[chains, d]``, or an energy error ``[chains]``
    that is not finite or exceeds ``max_energy_error``."""
    bad = ~(torch.isfinite(x).all(-1) & torch.isfinite(score).all(-1))
    if energy_error is not None:
        bad = bad | ~(energy_error <= max_energy_error)  # NaN fails the comparison
    return bad


class StepBackoff:
    """Per-chain step-size multipliers and rejection counts of one run's unadjusted steps (module docstring)."""

    def __init__(self, like: Tensor, *, max_energy_error: float, step_backoff: float) -> None:
        if isinstance(max_energy_error, bool) or not isinstance(max_energy_error, int | float):
            raise TypeError(f"max_energy_error must be a float, got {type(max_energy_error).__name__}")
        if not max_energy_error > 0:
            raise ValueError(f"max_energy_error must be positive (1000 is Stan's divergence), got {max_energy_error!r}")
        if isinstance(step_backoff, bool) or not isinstance(step_backoff, int | float) or not 0 < step_backoff <= 1:
            raise ValueError(f"step_backoff must be in (0, 1] (1: reject without backing off), got {step_backoff!r}")
        chains = like.shape[0]
        self.max_energy_error = float(max_energy_error)
        self.step_backoff = float(step_backoff)
        self.scale = torch.ones(chains, 1, dtype=like.dtype, device=like.device)
        self.pending = torch.zeros(chains, dtype=torch.bool, device=like.device)
        self.count = torch.zeros(chains, dtype=torch.long, device=like.device)

    def screen(self, x: Tensor, score: Tensor, energy_error: Tensor | None) -> Tensor:
        """Which chains' step to reject (``[chains]`` bool); counts them and marks them for a back-off."""
        bad = divergent(x, score, energy_error, self.max_energy_error)
        self.count += bad
        self.pending |= bad
        return bad

    def apply(self, k: int) -> bool:
        """Every ``CHECK_EVERY`` steps: shrink the pending chains' multipliers once; whether any changed."""
        if self.step_backoff == 1.0 or (k + 1) % CHECK_EVERY:
            return False
        if not bool(self.pending.any()):
            return False
        self.scale = torch.where(self.pending[:, None], self.step_backoff * self.scale, self.scale)
        self.pending = torch.zeros_like(self.pending)
        return True
