"""Value-guided search strategies over the particles' proposal: soft value-based decoding (SVDD) and rollover budget
forcing (:func:`rollover`), both without weights.

Li, Zhao, Biancalani, Levine, Regev et al. 2024, "Derivative-Free Guidance in Continuous and Discrete Diffusion
Models with Soft Value-Based Decoding" (SVDD-PM, Alg. 1): at every stochastic step each particle draws M candidates
``x^(m) ~ p(x_{i+1} | x_i)`` from the prior's transition (:mod:`fewstep.posterior.smc.chain`), scores them by the value ``v(x^(m)) = r(x0_hat(x^(m)))``
(the posterior-mean approximation of the soft value), and keeps one: the argmax (``temperature = 0``) or a draw from
``softmax(v / temperature)``. The kept candidate's evaluation serves its next step, so the network is called once
per node on the ``B*K*M`` candidates (``calls.network`` = steps; the start state is evaluated as M copies to keep
one batch size). This targets, approximately, ``p(x) exp(r(x) / temperature)``; it is a heuristic (no weights),
reported as equal weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ...model import CallCount, Denoiser
from ...options import real_option
from ...schedules import NoiseSchedule
from ...spacing import SpacingLike
from .chain import Chain
from .engine import SMCResult

__all__ = ["rollover", "svdd"]


def svdd(
    model: Callable[..., Tensor] | Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule | None = None,
    reward: Callable[[Tensor], Tensor] | None = None,
    nfe: int | None = None,
    spacing: SpacingLike | None = None,
    prediction: str = "auto",
    generator: torch.Generator | None = None,
    *,
    candidates: int = 4,
    temperature: float = 0.0,
    proposal: str = "dpmpp_2m_sde",
    steps: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
) -> SMCResult:
    """Soft value-based decoding (module docstring) of the particles ``noise`` ``(B, K, *sample_shape)`` with
    ``reward(x0) -> (rows,)``, ``candidates`` (M >= 1) per particle and step, and ``temperature >= 0``. Returns an
    :class:`~fewstep.posterior.smc.SMCResult` with equal weights (``ess`` = K, nothing resampled)."""
    reward, m = _checked(reward, candidates)
    temp = real_option("temperature", temperature)
    chain = Chain.build(
        model, noise, schedule, nfe, steps, spacing, prediction, generator, model_kwargs, calls, None, proposal, m
    )
    b, k = chain.prompts, chain.particles
    n = b * k
    x = noise.reshape(n, *noise.shape[2:]).to(chain.dtype).clone()
    try:
        with torch.no_grad():
            cand = x.repeat_interleave(m, dim=0)  # row p*M + j: candidate j of particle p
            x0, eps = chain.evaluate(cand, 0)
            x0, eps = x0[::m], eps[::m]
            prev = x0
            for i in range(chain.steps):
                mean = chain.mean(i, x, x0, eps, prev)
                c = chain.std(i)
                if i == chain.steps - 1:
                    x = mean  # the deterministic step to the clean end
                    break
                cand = mean.repeat_interleave(m, dim=0)
                if c > 0.0:
                    cand = cand + c * chain.draw(i, cand)
                cx0, ceps = chain.evaluate(cand, i + 1)
                values = reward(cx0)
                if not isinstance(values, Tensor) or values.shape != (n * m,):
                    raise ValueError(f"reward: must return one value per row, shape ({n * m},)")
                pick = _select(values.reshape(n, m), temp, generator)
                rows = pick + m * torch.arange(n, device=pick.device)
                prev, x, x0, eps = x0, cand[rows], cx0[rows], ceps[rows]
    finally:
        chain.finish(x, calls)
    log_w = torch.full((b, k), -float(np.log(k)), dtype=torch.float64, device=x.device)
    ess = torch.full((chain.steps + 1, b), float(k), dtype=torch.float64, device=x.device)
    flags = torch.zeros(chain.steps, b, dtype=torch.bool, device=x.device)
    return SMCResult(x.reshape(noise.shape).to(noise.dtype), log_w, ess, flags, chain.calls)


def _select(values: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """One candidate per row of ``values`` ``(N, M)``: the argmax, or a draw from ``softmax(values / temperature)``."""
    if temperature == 0.0:
        return values.argmax(1)
    probs = torch.softmax(values.to(torch.float64) / temperature, dim=1)
    device = generator.device if generator is not None else probs.device
    draws = torch.multinomial(probs.to(device), 1, generator=generator)
    return draws[:, 0].to(values.device)


def _checked(reward: object, candidates: object) -> tuple[Callable[[Tensor], Tensor], int]:
    """``reward`` (TypeError unless callable) and the number of candidates M (ValueError unless an integer >= 1)."""
    if not callable(reward):
        raise TypeError(f"reward: must be callable as reward(x0) -> (rows,), got {type(reward).__name__}")
    if isinstance(candidates, bool) or not isinstance(candidates, int | np.integer) or candidates < 1:
        raise ValueError(f"candidates: must be an integer M >= 1, got {candidates!r}")
    return reward, int(candidates)  # type: ignore[return-value]


def rollover(
    model: Callable[..., Tensor] | Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule | None = None,
    reward: Callable[[Tensor], Tensor] | None = None,
    nfe: int | None = None,
    spacing: SpacingLike | None = None,
    prediction: str = "auto",
    generator: torch.Generator | None = None,
    *,
    candidates: int = 4,
    steps: int | None = None,
    proposal: str = "dpmpp_2m_sde",
    calls: CallCount | None = None,
) -> SMCResult:
    """Rollover budget forcing (Kim, Yoon, Sung et al. 2025, "Inference-Time Scaling for Flow Models via Stochastic
    Generation and Rollover Budget Forcing", §5): each particle has ``candidates`` (M) evaluations per stochastic
    step. At a step it draws candidates from the proposal one at a time and takes the first whose value
    ``r(x0_hat)`` beats its current state's; the evaluations it did not use roll over to its next step. A particle
    that finds no better candidate within its quota takes the best one it drew. On the last stochastic step the
    remaining budget is spent in full (best of all). Every particle spends exactly ``1 + M (steps - 1)``
    evaluations; the network is called once per round on the particles still searching (``calls.network`` = the
    rounds: the particles' rounds do not align, so there are more calls than any one particle's evaluations, on
    smaller batches). Per-row conditioning is not supported (the batch shrinks by rounds).
    Equal weights, as :func:`svdd`."""
    reward, m = _checked(reward, candidates)
    chain = Chain.build(model, noise, schedule, nfe, steps, spacing, prediction, generator, None, calls, None, proposal)
    b, k = chain.prompts, chain.particles
    n = b * k
    x = noise.reshape(n, *noise.shape[2:]).to(chain.dtype).clone()
    spent = torch.zeros(n, dtype=torch.long)
    try:
        with torch.no_grad():
            x0, eps = chain.evaluate(x, 0)
            value = _values(reward, x0, n)
            spent += 1
            prev, carry = x0, torch.zeros(n, dtype=torch.long)
            for i in range(chain.steps - 1):
                mean = chain.mean(i, x, x0, eps, prev)
                quota = carry + m
                last = i == chain.steps - 2
                new = _search(chain, reward, i, mean, value, quota, force=last)
                spent += new.used
                carry = quota - new.used
                prev, x, x0, eps, value = x0, new.x, new.x0, new.eps, new.value
            x = chain.mean(chain.steps - 1, x, x0, eps, prev)  # the deterministic step to the clean end
    finally:
        chain.finish(x, calls)
    assert bool((spent == 1 + m * (chain.steps - 1)).all())
    log_w = torch.full((b, k), -float(np.log(k)), dtype=torch.float64, device=x.device)
    ess = torch.full((chain.steps + 1, b), float(k), dtype=torch.float64, device=x.device)
    flags = torch.zeros(chain.steps, b, dtype=torch.bool, device=x.device)
    return SMCResult(x.reshape(noise.shape).to(noise.dtype), log_w, ess, flags, chain.calls)


class _Found(NamedTuple):
    """A step's outcome per particle: the chosen state, its evaluation and value, and the evaluations used."""

    x: Tensor
    x0: Tensor
    eps: Tensor
    value: Tensor
    used: Tensor


def _values(reward: Callable[[Tensor], Tensor], x0: Tensor, rows: int) -> Tensor:
    v = reward(x0)
    if not isinstance(v, Tensor) or v.shape != (rows,):
        raise ValueError(f"reward: must return one value per row, shape ({rows},)")
    return v


def _search(
    chain: Chain,
    reward: Callable[[Tensor], Tensor],
    i: int,
    mean: Tensor,
    current: Tensor,
    quota: Tensor,
    force: bool,
) -> _Found:
    """One step of rollover: rounds of one candidate per searching particle (module docstring of :func:`rollover`)."""
    n = mean.shape[0]
    c = chain.std(i)
    best_x, best_x0, best_eps = mean.clone(), mean.clone(), mean.clone()
    best_v = torch.full((n,), -torch.inf, dtype=current.dtype, device=current.device)
    used = torch.zeros(n, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    while True:
        active = (~done & (used < quota)).nonzero()[:, 0]
        if active.numel() == 0:
            break
        rows = mean[active]
        cand = rows + c * chain.draw(i, rows) if c > 0.0 else rows
        cx0, ceps = chain.evaluate(cand, i + 1)
        v = _values(reward, cx0, active.numel())
        used[active] += 1
        better = v > best_v[active]
        take = active[better]
        best_x[take], best_x0[take], best_eps[take], best_v[take] = cand[better], cx0[better], ceps[better], v[better]
        if not force:
            done[active[v > current[active]]] = True
    return _Found(best_x, best_x0, best_eps, best_v, used)
