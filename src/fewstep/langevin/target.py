"""The distribution a Langevin sampler draws from: a log-density known up to a constant (its gradient by autograd)
or a score function alone.

A target is evaluated on a batch of chains ``x`` of shape ``[chains, d]``: the log-density returns ``[chains]``,
the score ``grad log p(x)`` returns ``[chains, d]``. Every batched call that returns a score counts one gradient
evaluation (every chain evaluated once), the unit in which samplers are compared (ESS per gradient evaluation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["LogProb", "Score", "Target"]

#: ``log_prob(x: Tensor[chains, d]) -> Tensor[chains]``, the log-density up to an additive constant.
LogProb = Callable[[Tensor], Tensor]
#: ``score(x: Tensor[chains, d]) -> Tensor[chains, d]``, the gradient of the log-density.
Score = Callable[[Tensor], Tensor]


def _check_points(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape [chains, d], got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"x must have shape [chains, d] (one row per chain), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; pass x.float()")


class Target:
    """A target density for batched Langevin chains.

    Build one with :meth:`from_log_prob` (``log_prob(x) -> Tensor[chains]``; the score by autograd) or
    :meth:`from_score` (``score(x) -> Tensor[chains, d]``; no density, so no Metropolis correction). The first
    call checks what the function returns (shape, NaN, differentiability) and raises a clear error; later calls
    are not checked, so a sampling loop does no host-device synchronisation.

    Attributes:
        has_log_prob: whether the log-density is available (samplers that need it call :meth:`require_log_prob`).
        gradient_evaluations: batched score evaluations so far (each evaluates every chain once).
        density_evaluations: batched log-density evaluations without a gradient (:meth:`log_prob` alone).
    """

    def __init__(self, *, log_prob: LogProb | None = None, score: Score | None = None, name: str | None = None):
        if (log_prob is None) == (score is None):
            raise ValueError("give exactly one of log_prob and score (use Target.from_log_prob or Target.from_score)")
        fn = log_prob if log_prob is not None else score
        if not callable(fn):
            arg = "log_prob" if log_prob is not None else "score"
            raise TypeError(f"{arg} must be callable (x: Tensor[chains, d]) -> Tensor, got {type(fn).__name__}")
        self._log_prob_fn = log_prob
        self._score_fn = score
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.gradient_evaluations = 0
        self.density_evaluations = 0
        self._checked = False  # the first score evaluation has been checked
        self._checked_density = False  # the first density-only evaluation has been checked

    # ------------------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_log_prob(cls, log_prob: LogProb, *, name: str | None = None) -> Target:
        """A target from its log-density ``log_prob(x: Tensor[chains, d]) -> Tensor[chains]`` (up to a constant);
        the score ``grad_x log_prob(x)`` is computed by autograd, so ``log_prob`` must be differentiable in ``x``."""
        return cls(log_prob=log_prob, name=name)

    @classmethod
    def from_score(cls, score: Score, *, name: str | None = None) -> Target:
        """A target given only by its score ``score(x: Tensor[chains, d]) -> Tensor[chains, d]`` (e.g. a diffusion
        model's score at a small noise level). Samplers that need the density (MALA) refuse it."""
        return cls(score=score, name=name)

    # ----------------------------------------------------------------------------------------------------- queries

    @property
    def has_log_prob(self) -> bool:
        """Whether the log-density is available (a target built with :meth:`from_log_prob`)."""
        return self._log_prob_fn is not None

    def require_log_prob(self, sampler_name: str) -> None:
        """Raise a clear error when ``sampler_name`` needs the log-density and this target has only a score."""
        if not self.has_log_prob:
            raise ValueError(
                f"sampler {sampler_name!r} needs the target's log-density (for its Metropolis-Hastings correction), "
                f"but target {self.name!r} was built with Target.from_score; build it with Target.from_log_prob, "
                "or use a sampler that needs only the score ('ula', 'kinetic')"
            )

    def reset_counters(self) -> None:
        """Set :attr:`gradient_evaluations` and :attr:`density_evaluations` back to zero."""
        self.gradient_evaluations = 0
        self.density_evaluations = 0

    # ---------------------------------------------------------------------------------------------------- checking

    def _check_log_prob(self, x: Tensor, lp: object) -> None:
        if not isinstance(lp, Tensor):
            raise TypeError(f"log_prob of target {self.name!r} must return a Tensor, got {type(lp).__name__}")
        if lp.shape != x.shape[:1]:
            hint = " (did it sum over the chains? reduce over dim=-1 only)" if lp.ndim == 0 else ""
            raise ValueError(
                f"log_prob of target {self.name!r} must return shape [chains] = {tuple(x.shape[:1])} for x of shape "
                f"{tuple(x.shape)}, got shape {tuple(lp.shape)}{hint}"
            )
        if bool(torch.isnan(lp).any()):
            raise ValueError(f"log_prob of target {self.name!r} returned NaN at the starting points (check x0)")

    def _check_score(self, x: Tensor, g: object, what: str) -> None:
        if not isinstance(g, Tensor):
            raise TypeError(f"{what} of target {self.name!r} must return a Tensor, got {type(g).__name__}")
        if g.shape != x.shape:
            raise ValueError(
                f"{what} of target {self.name!r} must return shape [chains, d] = {tuple(x.shape)}, "
                f"got shape {tuple(g.shape)}"
            )
        if bool(torch.isnan(g).any()):
            raise ValueError(f"{what} of target {self.name!r} returned NaN at the starting points (check x0)")

    # -------------------------------------------------------------------------------------------------- evaluation

    def log_prob(self, x: Tensor) -> Tensor:
        """The log-density at ``x`` (``[chains, d]`` -> ``[chains]``), detached; counts a density evaluation."""
        if self._log_prob_fn is None:
            self.require_log_prob("log_prob")
        assert self._log_prob_fn is not None
        first = not (self._checked or self._checked_density)
        if first:
            _check_points(x)
        with torch.no_grad():
            lp = self._log_prob_fn(x)
        if first:
            self._check_log_prob(x, lp)
            self._checked_density = True
        self.density_evaluations += 1
        return lp

    def log_prob_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The log-density ``[chains]`` and its gradient ``[chains, d]`` at ``x`` in one pass (one gradient
        evaluation), both detached. Needs a target built with :meth:`from_log_prob`."""
        if self._log_prob_fn is None:
            self.require_log_prob("log_prob_and_score")
        assert self._log_prob_fn is not None
        first = not self._checked
        if first:
            _check_points(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = self._log_prob_fn(xg)
            if first:
                self._check_log_prob(x, lp)
                if not lp.requires_grad:
                    raise ValueError(
                        f"log_prob of target {self.name!r} is not differentiable in x (its output has no gradient: "
                        "was x detached, converted to numpy, or used under torch.no_grad?); write it with torch "
                        "operations, or give the score with Target.from_score"
                    )
            (grad,) = torch.autograd.grad(lp.sum(), xg, allow_unused=True)
        if grad is None:
            raise ValueError(
                f"log_prob of target {self.name!r} does not depend on x (autograd found no gradient); "
                "write it with torch operations on x, or give the score with Target.from_score"
            )
        if first:
            self._check_score(x, grad, "the gradient of log_prob")
            self._checked = True
        self.gradient_evaluations += 1
        return lp.detach(), grad.detach()

    def score(self, x: Tensor) -> Tensor:
        """The score ``grad log p(x)`` (``[chains, d]``), detached; one gradient evaluation."""
        if self._score_fn is None:
            return self.log_prob_and_score(x)[1]
        first = not self._checked
        if first:
            _check_points(x)
        with torch.no_grad():
            g = self._score_fn(x)
        if first:
            self._check_score(x, g, "score")
            self._checked = True
        self.gradient_evaluations += 1
        return g

    def __repr__(self) -> str:
        kind = "log_prob" if self.has_log_prob else "score"
        return f"Target({self.name!r}, {kind}, gradient_evaluations={self.gradient_evaluations})"
