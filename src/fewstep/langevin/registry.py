"""The Langevin samplers by name, and :func:`sample`, which runs one.

Every sampler is a function ``fn(target, x0, *, draws, warmup=0, step_size=None, generator=None, **options) ->
Chains`` registered with :func:`register`; ``x0`` is ``[chains, d]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from ..guard import DivergenceWarning
from ..options import suggestion
from .chains import Chains
from .target import Target

__all__ = ["SAMPLERS", "SamplerFn", "check_run", "register", "sample"]


class SamplerFn(Protocol):
    def __call__(
        self,
        target: Target,
        x0: Tensor,
        *,
        draws: int,
        warmup: int = 0,
        step_size: float | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Chains: ...


#: name -> sampler function.
SAMPLERS: dict[str, SamplerFn] = {}


def register(name: str) -> Callable[[SamplerFn], SamplerFn]:
    """Register a sampler function under ``name`` (a decorator)."""

    def decorate(fn: SamplerFn) -> SamplerFn:
        if name in SAMPLERS and SAMPLERS[name] is not fn:
            raise ValueError(f"a Langevin sampler named {name!r} is already registered")
        SAMPLERS[name] = fn
        return fn

    return decorate


def check_run(
    target: object, x0: object, draws: object, warmup: object, step_size: object, sampler: str
) -> tuple[Target, Tensor]:
    """The checks every sampler runs before evaluating the target; returns the target and ``x0`` detached."""
    if not isinstance(target, Target):
        raise TypeError(
            f"target must be a fewstep.langevin.Target, got {type(target).__name__}; "
            "wrap a function with Target.from_log_prob(log_prob) or Target.from_score(score)"
        )
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a torch.Tensor of shape [chains, d], got {type(x0).__name__}")
    if x0.ndim != 2:
        hint = "; for one chain pass x0[None]" if x0.ndim == 1 else ""
        raise ValueError(f"x0 must have shape [chains, d], got shape {tuple(x0.shape)}{hint}")
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor, got dtype {x0.dtype}; pass x0.float()")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if step_size is not None and (
        isinstance(step_size, bool) or not isinstance(step_size, int | float) or not step_size > 0
    ):
        raise ValueError(f"step_size of {sampler!r} must be a positive float or None (adapted), got {step_size!r}")
    return target, x0.detach()


def sample(
    target: Target,
    sampler: str,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Chains:
    """Run the Langevin sampler named ``sampler`` (a key of :data:`SAMPLERS`) from ``x0`` (``[chains, d]``) for
    ``warmup`` adaptation iterations and ``draws`` kept draws; ``options`` go to the sampler."""
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        names = ", ".join(sorted(SAMPLERS))
        raise ValueError(
            f"unknown Langevin sampler {sampler!r}{suggestion(sampler, list(SAMPLERS))}; the samplers are: {names}"
        )
    chains = SAMPLERS[sampler](
        target, x0, draws=draws, warmup=warmup, step_size=step_size, generator=generator, **options
    )
    check_finite_draws(chains)
    return chains


def check_finite_draws(chains: Chains) -> None:
    """Warn (:class:`fewstep.DivergenceWarning`) when a chain's draws are not finite: an unadjusted sampler whose
    step is too large for the target's tails diverges; say which chains, from which draw, and what usually helps.
    One reduction over the draws, after the run."""
    bad = ~torch.isfinite(chains.draws).flatten(2).all(-1)  # [chains, draws]
    if not bool(bad.any()):
        return
    rows = bad.any(-1).nonzero().flatten().tolist()
    first = int(bad.float().argmax(-1)[rows[0]])
    h = chains.step_size
    step = f"{float(h.min()):.3g} to {float(h.max()):.3g}" if isinstance(h, Tensor) else f"{h:.3g}"
    warnings.warn(
        f"sampler {chains.sampler!r}: {len(rows)} of {chains.num_chains} chains diverged (non-finite draws; chain "
        f"{rows[0]} from kept draw {first}, step size {step}); a smaller step_size, more warm-up or a "
        "Metropolis-adjusted sampler (mala) usually fixes it",
        DivergenceWarning,
        stacklevel=3,
    )
