"""Structured stochastic-gradient MCMC (Alexos, Boyd & Mandt 2022, "Structured Stochastic Gradient MCMC").

The parameters are split into groups ``theta = (theta_1, ..., theta_G)``. Each group moves by Langevin on the
energy averaged over the other groups' earlier states, which breaks the dependencies between groups in a
controlled way: the chain samples the structured (non-parametric) variational approximation
``q(theta) = prod_g q_g(theta_g)``, ``q_g(theta_g) ∝ exp E_{q_{-g}}[log p(theta_g, theta_{-g})]``. A step:

    theta_g <- theta_g + h [grad_{theta_g} log p(theta_g, theta~_{-g})]_hat + sqrt(2 h) z_g,   for every g,

where ``theta~_{-g}`` is a state drawn at random (per chain and group) from the chain's last ``history`` states,
an unbiased estimate of the average, and the gradient is a minibatch estimate for a
:class:`~fewstep.langevin.MinibatchTarget` (one minibatch per chain and step, shared by its groups). The G
gradients of a step are one batched call of ``G x chains`` rows, counted as G gradient evaluations. One group
holding every parameter is SGLD; one group per parameter is the fully factorised (mean-field) approximation. For
a Gaussian posterior of precision ``Lambda`` the groups' law is exact in the means and has covariance
``(Lambda_gg)^-1`` per group (narrower than the posterior's where the groups are correlated), up to the O(h)
bias of the step and of the partners' randomness. The partners are the chain's own recent states, so the law is
reached when ``history`` spans many relaxation times of the chain; a shorter history lands between the mean-field
and the full posterior. The history is a ring buffer (memory ``history x chains x d``); until it fills, the states
so far are drawn from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .chains import Chains
from .history import StateHistory
from .minibatch import MinibatchTarget, stochastic_score
from .noise import StepNoise
from .registry import check_run, register
from .sampler_options import parse_options, positive_int
from .sgld import required_step, step_schedule
from .target import Target

NAME = "structured_sgmcmc"


@dataclass
class StructuredOptions:
    """``groups``: a partition of the parameter indices (a list of index lists), or an int G (G contiguous groups of
    near-equal size); ``history``: how many earlier states the other groups are drawn from; ``decay``,
    ``decay_offset``: the step-size schedule of :func:`~fewstep.langevin.sgld.sgld`."""

    sampler: ClassVar[str] = NAME  # the name in error messages (a subclass's sampler sets its own)
    groups: int | Sequence[Sequence[int]] | None = None
    history: int = 100
    decay: float = 0.0
    decay_offset: float = 100.0

    def __post_init__(self) -> None:
        self.history = positive_int("history", self.history, self.sampler)
        if self.groups is None:
            raise TypeError(
                f"{self.sampler!r} needs groups=: a partition of the parameters, e.g. groups=[[0, 1], [2]] or groups=2 "
                "(contiguous halves); one group per parameter is the mean-field approximation"
            )

    def assignment(self, d: int) -> Tensor:
        """The group of each parameter, ``[d]`` (checked: every index in exactly one group)."""
        groups = self.groups
        if isinstance(groups, int) and not isinstance(groups, bool):
            count = positive_int("groups", groups, self.sampler)
            if count > d:
                raise ValueError(f"groups of {self.sampler!r} must be at most d = {d}, got {count}")
            return torch.arange(d) * count // d
        try:
            lists = [[int(i) for i in g] for g in groups]  # type: ignore[union-attr]
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"groups of {self.sampler!r} must be an int or a list of index lists, got {groups!r}"
            ) from err
        flat = sorted(i for g in lists for i in g)
        if flat != list(range(d)) or any(not g for g in lists):
            raise ValueError(
                f"groups of {self.sampler!r} must partition the indices 0..{d - 1} (each exactly once, no empty group), "
                f"got {groups!r}"
            )
        owner = torch.empty(d, dtype=torch.long)
        for k, g in enumerate(lists):
            owner[g] = k
        return owner


@register(NAME)
def structured_sgmcmc(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Chains:
    """Structured SG-MCMC (module docstring)."""
    _, theta = check_run(target, x0, draws, warmup, step_size, NAME)
    opts = parse_options(StructuredOptions, options, NAME)
    h = required_step(step_size, NAME)
    chains, d = theta.shape
    owner = opts.assignment(d).to(theta.device)
    g_count = int(owner.max()) + 1
    own = (owner[None, :] == torch.arange(g_count, device=theta.device)[:, None]).to(theta.dtype)  # [G, d]
    mine = own[:, None, :]  # row g takes group g's coordinates from the current state
    steps = step_schedule(h, warmup + draws, opts.decay, opts.decay_offset)
    moves = [(s, math.sqrt(2.0 * s)) for s in steps]
    minibatch = target if isinstance(target, MinibatchTarget) else None
    history = StateHistory(theta, opts.history, generator)
    out = theta.new_empty(chains, draws, d)
    noise = StepNoise(theta, generator=generator)
    start = target.gradient_evaluations
    for i, (s, scale) in enumerate(moves):
        others = history.per_group(g_count)  # [G, chains, d]: an earlier state per group and chain
        mixed = (mine * theta[None] + (1.0 - mine) * others).reshape(g_count * chains, d)
        index = None
        if minibatch is not None:
            index = minibatch.draw_index(chains, theta.device, generator).repeat(g_count, 1)
        grads = stochastic_score(target, mixed, index, evaluations=g_count).reshape(g_count, chains, d)
        score = (grads * mine).sum(0)  # group g's block from row g
        theta = theta + s * score + scale * noise.normal()
        history.push(theta)
        if i >= warmup:
            out[:, i - warmup] = theta
    return Chains(
        draws=out,
        acceptance=None,
        gradient_evaluations=target.gradient_evaluations - start,
        step_size=steps[-1],
        inverse_mass=None,
        warmup=warmup,
        sampler=NAME,
    )
