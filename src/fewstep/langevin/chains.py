"""The result of a Langevin run: the draws of every chain and what the run measured."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["Chains", "ChainsDiagnostics"]


@dataclass(frozen=True)
class ChainsDiagnostics:
    """Convergence diagnostics of a :class:`Chains` (``fewstep.langevin.diagnostics``).

    Attributes:
        ess_bulk: bulk effective sample size per dimension, ``[dims]`` (rank-normalised, Vehtari et al. 2021).
        ess_tail: tail effective sample size per dimension (the 5% and 95% quantiles), ``[dims]``.
        split_rhat: rank-normalised split R-hat per dimension, ``[dims]`` (near 1 when the chains agree).
        acceptance: the mean Metropolis acceptance of each chain, ``[chains]`` (None for unadjusted samplers).
        gradient_evaluations: batched gradient evaluations of the whole run, warm-up included.
        ess_per_gradient: the smallest bulk ESS over the dimensions divided by the gradients of all chains,
            ``chains * gradient_evaluations`` (so that it does not grow with the number of chains).
    """

    ess_bulk: Tensor
    ess_tail: Tensor
    split_rhat: Tensor
    acceptance: Tensor | None
    gradient_evaluations: int
    ess_per_gradient: float


@dataclass(frozen=True)
class Chains:
    """Draws of a batch of Markov chains.

    Attributes:
        draws: the kept states, ``[chains, draws, dims]`` (warm-up excluded).
        acceptance: mean acceptance probability of each chain over the kept draws, ``[chains]``; None for
            samplers with no accept/reject step.
        gradient_evaluations: batched gradient evaluations of the run, warm-up included (one evaluates every
            chain once).
        step_size: the step size used for the kept draws (a float, or a tensor ``[chains]`` when adapted per chain).
        inverse_mass: the diagonal inverse mass matrix (preconditioner) used for the kept draws, ``[dims]`` or
            ``[chains, dims]``; None when none was used.
        warmup: the number of warm-up iterations run before the kept draws.
        sampler: the registered name of the sampler that produced the draws.
        divergences: per chain, the unadjusted steps rejected for an energy blow-up or a non-finite state
            (``[chains]``, :mod:`fewstep.langevin.backoff`); None for samplers without the guard.
        friction: the kinetic samplers' friction ``gamma`` for the kept draws (given, or adapted in warm-up);
            None for the others.
    """

    draws: Tensor
    acceptance: Tensor | None
    gradient_evaluations: int
    step_size: Tensor | float
    inverse_mass: Tensor | None
    warmup: int
    sampler: str = ""
    divergences: Tensor | None = None
    friction: float | None = None

    @property
    def num_chains(self) -> int:
        return int(self.draws.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.draws.shape[1])

    @property
    def dims(self) -> int:
        return int(self.draws.shape[2])

    def diagnostics(self) -> ChainsDiagnostics:
        """ESS (bulk and tail), split R-hat, acceptance and ESS per gradient evaluation of these draws."""
        from fewstep.langevin import diagnostics

        draws = self.draws.detach()
        bulk = diagnostics.ess_bulk(draws)
        tail = diagnostics.ess_tail(draws)
        rhat = diagnostics.split_rhat(draws)
        per_gradient = float(bulk.min()) / max(self.num_chains * self.gradient_evaluations, 1)
        return ChainsDiagnostics(
            ess_bulk=bulk,
            ess_tail=tail,
            split_rhat=rhat,
            acceptance=self.acceptance,
            gradient_evaluations=self.gradient_evaluations,
            ess_per_gradient=per_gradient,
        )
