"""Resampling K weighted particles per prompt, and their effective sample size.

Weights are given as unnormalised log-weights of shape ``(B, K)`` (B prompts, K particles each) and normalised
within each row, ``w_bk = exp(l_bk) / sum_j exp(l_bj)``. Every scheme returns ancestor indices ``a`` of shape
``(B, K)`` whose counts ``N_bk = #{j: a_bj = k}`` are unbiased, ``E[N_bk] = K w_bk`` (Douc, Cappe & Moulines 2005,
"Comparison of Resampling Schemes for Particle Filtering"):

- ``"multinomial"``: K independent draws from ``w``.
- ``"systematic"``: one uniform ``u ~ U[0, 1)`` per prompt and the points ``(u + j) / K``, inverted through the
  cumulative weights (the lowest variance in practice; ``N_bk`` is ``floor(K w_bk)`` or one more).
- ``"residual"``: ``floor(K w_bk)`` copies of each particle, then the remaining ``R = K - sum_k floor(K w_bk)``
  drawn multinomially from the residual weights ``(K w_bk - floor(K w_bk)) / R``.

The effective sample size is ``ESS_b = 1 / sum_k w_bk^2`` (between 1 and K).

**When to resample** (:func:`ess_thresholds`): a prompt resamples before step ``i`` when ``ESS / K`` falls below a
threshold. ``"constant"``: the threshold ``t`` at every step (Doucet & Johansen 2009, §3.5). ``"noise"``: ``1 -
kappa_i (1 - t)``, ``kappa_i = alpha_i^2 / (alpha_i^2 + sigma_i^2)``. Resampling duplicates particles; over a
diffusion's remaining steps two copies of ``x_i`` drift apart again, and the share of the final sample's variance
they still have in common is ``Var(E[x0 | x_i]) / Var(x0) = kappa_i`` for data of unit scale (``alpha^2 S^2 /
(alpha^2 S^2 + sigma^2)``, ``S = 1``). At high noise (``kappa ~ 0``) a duplicate costs almost nothing and waiting
costs the particles that the weights already say are in the wrong place, so the rule resamples at any weight
spread; near the clean end (``kappa ~ 1``) duplicates stay duplicates and the rule is the constant one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...options import suggestion

__all__ = [
    "RESAMPLERS",
    "RESAMPLE_SCHEDULES",
    "check_resample_schedule",
    "check_resampler",
    "effective_sample_size",
    "ess_thresholds",
    "normalise",
    "resample_indices",
]

#: the resampling schemes
RESAMPLERS = ("systematic", "multinomial", "residual")
#: when to resample (module docstring)
RESAMPLE_SCHEDULES = ("noise", "constant")


def ess_thresholds(alpha_sigma: list[tuple[float, float]], threshold: float, schedule: object) -> list[float]:
    """The ``ESS / K`` threshold before each step, from the schedule values ``(alpha_i, sigma_i)`` of the step's
    start node (module docstring); ``threshold = 0`` never resamples under either schedule."""
    if check_resample_schedule(schedule) == "constant" or threshold == 0.0:
        return [threshold] * len(alpha_sigma)
    return [1.0 - a * a / (a * a + s * s) * (1.0 - threshold) for a, s in alpha_sigma]


def check_resampler(name: object) -> str:
    """``name`` if it is one of :data:`RESAMPLERS`, else a ValueError naming the choices."""
    if name not in RESAMPLERS:
        hint = suggestion(name, RESAMPLERS)
        raise ValueError(f"resample: choose one of {', '.join(map(repr, RESAMPLERS))}, got {name!r}{hint}")
    return str(name)


def check_resample_schedule(name: object) -> str:
    """``name`` if it is one of :data:`RESAMPLE_SCHEDULES`, else a ValueError naming the choices."""
    if name not in RESAMPLE_SCHEDULES:
        hint = suggestion(name, RESAMPLE_SCHEDULES)
        raise ValueError(
            f"resample_schedule: choose one of {', '.join(map(repr, RESAMPLE_SCHEDULES))}, got {name!r}{hint}"
        )
    return str(name)


def normalise(log_w: Tensor) -> Tensor:
    """Log-weights normalised within each row (``logsumexp = 0`` per prompt)."""
    return log_w - torch.logsumexp(log_w, dim=1, keepdim=True)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """``1 / sum_k w_k^2`` per row of log-weights ``(B, K)``, shape ``(B,)``."""
    return torch.exp(-torch.logsumexp(2.0 * normalise(log_w), dim=1))


def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64).to(like.device)


def _invert(cumulative: Tensor, points: Tensor) -> Tensor:
    """The index of the first cumulative weight above each point (the inverse CDF), clamped to the last index."""
    idx = torch.searchsorted(cumulative, points.contiguous(), right=True)
    return idx.clamp_(max=cumulative.shape[1] - 1)


def _from_counts(counts: Tensor) -> Tensor:
    """Ancestor indices ``(B, K)`` from per-particle copy counts that sum to K in each row (in index order)."""
    k = counts.shape[1]
    ends = counts.cumsum(1)
    slots = torch.arange(k, device=counts.device).expand_as(counts).contiguous()
    return torch.searchsorted(ends, slots, right=True).clamp_(max=k - 1)


def resample_indices(log_w: Tensor, scheme: str, generator: torch.Generator | None = None) -> Tensor:
    """Ancestor indices ``(B, K)`` drawn by ``scheme`` (module docstring) from the log-weights ``(B, K)``."""
    scheme = check_resampler(scheme)
    w = torch.exp(normalise(log_w.to(torch.float64)))
    b, k = w.shape
    if scheme == "systematic":
        u = _uniform((b, 1), w, generator)
        points = (u + torch.arange(k, device=w.device, dtype=torch.float64)) / k
        return _invert(w.cumsum(1), points)
    if scheme == "multinomial":
        draws = torch.multinomial(w.to(_device(generator, w)), k, replacement=True, generator=generator)
        return draws.to(w.device).sort(dim=1).values
    scaled = k * w
    counts = (scaled + 1e-9).floor()  # K w within rounding of an integer counts as that integer
    remaining = (k - counts.sum(1)).round().long()  # R per prompt, 0 <= R < K
    residual = (scaled - counts).clamp_(min=0.0)
    residual = torch.where(remaining[:, None] > 0, residual, torch.ones_like(residual))  # unused rows: any valid
    draws = torch.multinomial(residual.to(_device(generator, w)), k, replacement=True, generator=generator)
    keep = torch.arange(k, device=w.device)[None, :] < remaining[:, None]
    extra = torch.zeros_like(counts).scatter_add_(1, draws.to(w.device), keep.to(counts.dtype))
    return _from_counts((counts + extra).long())


def _device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def resampled_rows(log_w: Tensor, low: Tensor, scheme: str, generator: torch.Generator | None = None) -> Tensor:
    """The rows of a prompt-major ``B*K`` batch after resampling the prompts flagged ``low`` ``(B,)`` by ``scheme``
    (their particles' ancestors); the other prompts keep their own rows."""
    b, k = log_w.shape
    idx = resample_indices(log_w, scheme, generator)
    return batch_rows(torch.where(low[:, None], idx, torch.arange(k, device=log_w.device).expand(b, k)))


def batch_rows(idx: Tensor) -> Tensor:
    """Particle indices ``(B, K)`` within each prompt as rows ``(B*K,)`` of the prompt-major batch (particle ``k`` of
    prompt ``b`` is row ``b*K + k``)."""
    b, k = idx.shape
    return (idx + k * torch.arange(b, device=idx.device)[:, None]).reshape(-1)
