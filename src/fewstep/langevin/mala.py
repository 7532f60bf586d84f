"""The Metropolis-adjusted Langevin algorithm (MALA): a Langevin proposal corrected by Metropolis-Hastings, so its
stationary law is exactly the target (Roberts & Tweedie 1996; Roberts & Rosenthal 1998, optimal acceptance
0.574).

    y = x + h M^{-1} g(x) + sqrt(2 h M^{-1}) xi,         g = grad log p,
    log q(y | x) = -|y - x - h M^{-1} g(x)|^2_M / (4 h),
    accept y with probability min(1, p(y) q(x | y) / (p(x) q(y | x))).

One gradient (with the log-density) per step. During warm-up the step size of each chain is adapted by dual
averaging to ``target_accept`` and, with ``adapt_mass=True``, the diagonal inverse mass ``M^{-1}`` by Stan's
windowed variance (:mod:`fewstep.langevin.adaptation`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fewstep.noise.brownian import BrownianPath

from .adaptation import Warmup
from .chains import Chains
from .noise import StepNoise
from .registry import check_run, register
from .target import Target

__all__ = ["mala"]


@register("mala")
def mala(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    target_accept: float = 0.574,
    adapt_mass: bool = False,
    pooled_mass: bool = True,
    inverse_mass: Tensor | None = None,
    initial_step_size: float = 0.1,
    brownian: BrownianPath | None = None,
    **options: Any,
) -> Chains:
    """Run MALA: ``warmup`` adaptation iterations (discarded), then ``draws`` kept ones.

    ``step_size=None`` adapts it during warm-up (from ``initial_step_size``) to ``target_accept``; a given
    ``step_size`` is kept fixed. ``adapt_mass`` adapts a diagonal inverse mass in warm-up (starting from
    ``inverse_mass`` or the identity), one for all chains from their pooled draws (``pooled_mass=True``, ``[d]``)
    or one per chain (``[chains, d]``); ``inverse_mass`` alone is a fixed preconditioner. ``brownian``: take the
    proposal noise from a Brownian path (one unit of path time per step).
    """
    if options:
        raise TypeError(
            f"mala got unexpected options {sorted(options)}; it takes target_accept, adapt_mass, pooled_mass, inverse_mass, "
            "initial_step_size and brownian"
        )
    target, x = check_run(target, x0, draws, warmup, step_size, "mala")
    target.require_log_prob("mala")
    warm = Warmup.of_run(
        "mala", x, warmup, step_size=step_size, initial_step_size=initial_step_size, target_accept=target_accept,
        adapt_mass=adapt_mass, pooled_mass=pooled_mass, inverse_mass=inverse_mass,
    )  # fmt: skip
    noise = StepNoise(x, generator=generator, path=brownian, step_size=1.0)
    chains = x.shape[0]
    out = x.new_empty((chains, draws, x.shape[1]))
    accept_sum = x.new_zeros(chains)
    start = target.gradient_evaluations
    lp, g = target.log_prob_and_score(x)
    one = torch.ones((), dtype=x.dtype, device=x.device)
    for k in range(warmup + draws):
        h = warm.step_size
        m = warm.inverse_mass if warm.inverse_mass is not None else one
        mean_x = x + h * m * g
        y = mean_x + (2.0 * h * m).sqrt() * noise.increment(k)
        lp_y, g_y = target.log_prob_and_score(y)
        mean_y = y + h * m * g_y
        log_q_fwd = -((y - mean_x) ** 2 / m).sum(-1) / (4.0 * h[:, 0])
        log_q_bwd = -((x - mean_y) ** 2 / m).sum(-1) / (4.0 * h[:, 0])
        log_ratio = torch.nan_to_num(lp_y - lp + log_q_bwd - log_q_fwd, nan=-torch.inf)
        prob = log_ratio.clamp(max=0.0).exp()
        accept = torch.log(noise.uniform((chains,))) < log_ratio
        x = torch.where(accept[:, None], y, x)
        g = torch.where(accept[:, None], g_y, g)
        lp = torch.where(accept, lp_y, lp)
        if k < warmup:
            warm.observe(k, x, prob)
        else:
            out[:, k - warmup] = x
            accept_sum += prob
    return Chains(
        draws=out,
        acceptance=accept_sum / draws,
        gradient_evaluations=target.gradient_evaluations - start,
        step_size=warm.step.clone(),
        inverse_mass=warm.inverse_mass,
        warmup=warmup,
        sampler="mala",
    )
