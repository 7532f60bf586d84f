"""Strata of a pool of noise: the hard samples (:func:`flag_hard`) and a stratified calibration batch with the weights
that keep its errors unbiased (:func:`stratify`), for ``fewstep.tune(..., pool=...)`` and
:func:`fewstep.tune.hard.hard_samples`.

A sample is hard when some probe (a few-step configuration) ends more than ``factor`` times its median distance from
the teacher; with ``d_i(p)`` the RMS distance of probe ``p``'s sample from the teacher's,

    hard_i = max_p d_i(p) > factor * median_i d_i(p).

The batch takes up to :data:`HARD_SHARE` of its samples from the hard ones and weighs each sample by its stratum's share
of the pool over the stratum's count in the batch, so that a weighted error on it estimates the error on fresh noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: With ``probes=None`` (:func:`fewstep.tune.hard.hard_samples`) or in ``tune(pool=)``, the ``KEEP`` most accurate
#: configurations are the probes (a probe that is far off on every sample, as Karras sigmas at NFE 5 on the guided
#: 2-D mixture, flags nothing).
KEEP = 3
#: The most of a stratified batch (:func:`stratify`) the hard samples fill.
HARD_SHARE = 0.5


def flag_hard(distances: Sequence[Tensor], factor: float = 10.0) -> Tensor:
    """``hard_i = max_p d_i(p) > factor * median_i d_i(p)`` over the probes' (B,) distances from the teacher (module
    docstring), a (B,) bool mask."""
    hard = torch.zeros(distances[0].shape[0], dtype=torch.bool, device=distances[0].device)
    for distance in distances:
        distance = torch.nan_to_num(distance, nan=math.inf)  # a diverged sample is a hard one
        hard |= distance > factor * distance.median()
    return hard


def stratify(hard: Tensor, size: int, share: float = HARD_SHARE) -> tuple[Tensor, Tensor]:
    """A stratified calibration batch of ``size`` samples from a pool with ``hard`` (B,) flags: the pool's first
    ``min(n_hard, round(share size))`` hard samples and its first easy ones for the rest, as (size,) indices into the
    pool, and each sample's weight, its stratum's share of the pool over the stratum's count in the batch,

        w_i = (n_s / B) / m_s    (s the stratum of i, n_s its pool count, m_s its batch count),

    so that ``sum_i w_i e_i`` is an unbiased estimate of the pool's mean error with the hard stratum measured on
    many more samples than a batch drawn at random holds (the weights sum to 1)."""
    pool = hard.shape[0]
    if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= pool:
        raise ValueError(f"size: the batch must hold between 2 and the pool's {pool} samples, got {size!r}")
    where_hard = torch.nonzero(hard, as_tuple=True)[0]
    where_easy = torch.nonzero(~hard, as_tuple=True)[0]
    # the easy ones fill what the hard ones' share leaves; a pool short of easy samples gives the rest to hard ones
    m_easy = min(len(where_easy), size - min(len(where_hard), round(share * size)))
    m_hard = size - m_easy
    index = torch.cat([where_hard[:m_hard], where_easy[:m_easy]])
    weights = torch.cat([
        torch.full((m_hard,), len(where_hard) / pool / max(m_hard, 1), dtype=torch.float64, device=hard.device),
        torch.full((m_easy,), len(where_easy) / pool / max(m_easy, 1), dtype=torch.float64, device=hard.device),
    ])  # fmt: skip
    return index, weights
