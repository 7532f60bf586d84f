"""Per-sample noise streams: what ``fewstep.sample(..., seed=...)`` draws a stochastic solver's step noise from.

Sample ``b`` owns one ``torch.Generator`` on the state's device, seeded with a mix of its seed ``seeds[b]``
(:func:`stream_key`), and its ``k``-th draw of a run is the ``k``-th block of ``prod(shape)`` standard normals of
that generator, written straight into row ``b`` of the step's noise tensor. So

- a sample's noise is a function of its seed and of the draw index only: a batch is bit-identical to its samples
  drawn one at a time (the batch-invariance of diffusers' list of per-sample generators);
- a draw costs what ``torch.randn`` of the whole batch costs (one fill per sample, no copies), the memory is the
  draw itself (``O(state)``), and no host-device transfer or synchronisation happens on an accelerator;
- the position in the run is the generators' states (:meth:`SeededNoise.state`), so a run can stop and resume.

The draws ignore the noise levels they are asked for, as ``generator=`` does: the noise of disjoint steps is
independent, and the path is not the same Brownian motion at another step count. Where a query pattern needs one
Brownian path (adaptive steps that refine a rejected step, or runs at several step counts compared path by path),
use a :class:`~fewstep.noise.BrownianPath` (``noise_sampler=``, or :func:`fewstep.noise.levels.brownian_level_sampler`).

The stream key is ``seed`` with its low 32 bits passed through MurmurHash3's 32-bit finaliser (a bijection) and
xor-ed with a constant, so the step noise never repeats a start noise the user drew with ``manual_seed(seed)``.
On the CPU torch's Mersenne Twister keeps the low 32 bits of a seed (distinct seeds below ``2**32`` always get
distinct streams); on CUDA the generator keeps all 64, and its numbers differ from the CPU's (as
``torch.randn``'s do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .brownian import per_sample_seeds

__all__ = ["SeededNoise", "stream_key"]

_MASK32 = 0xFFFFFFFF
_SALT = 0x5EED_F3E5


def _fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser: a bijection of ``[0, 2**32)`` that mixes every bit into every other."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    h ^= h >> 16
    return h


def stream_key(seed: int) -> int:
    """The generator seed of the noise stream of ``seed`` (in ``[0, 2**64)``): high word kept, low word mixed."""
    return (seed & ~_MASK32) | _fmix32((seed & _MASK32) ^ _SALT)


class SeededNoise:
    """``noise(level_s, level_t)``: one standard normal tensor of shape ``(B, *shape)`` per call, sample ``b`` drawn from
    its own generator seeded by ``stream_key(seeds[b])`` (module docstring).

    Args:
        like: a tensor of the state's shape ``(B, *shape)``, device and dtype.
        seeds: one integer (the seeds ``seed, ..., seed + B - 1``) or one integer per sample (a sequence or 1-D integer
            tensor, values in ``[0, 2**64)``).
        dtype: the dtype of the draws (default ``like``'s).
    """

    def __init__(self, like: Tensor, seeds: int | Sequence[int] | Tensor, dtype: torch.dtype | None = None) -> None:
        self.seeds: tuple[int, ...] = per_sample_seeds(seeds, like.shape[0] if like.ndim else 1)
        self.shape = tuple(like.shape)
        self.device = like.device
        self.dtype = dtype or like.dtype
        self.generators = [torch.Generator(self.device).manual_seed(stream_key(s)) for s in self.seeds]
        self.draws = 0

    def __call__(self, s: float | Tensor = 0.0, t: float | Tensor = 0.0) -> Tensor:
        """The next draw (the levels are not used: see the module docstring)."""
        out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        rows = out.view(len(self.seeds), -1)
        for row, generator in zip(rows, self.generators, strict=True):
            row.normal_(generator=generator)
        self.draws += 1
        return out

    def state(self) -> dict[str, Any]:
        """The position in the run: the draw count and every generator's state (CPU tensors), for :meth:`restore`."""
        return {"draws": self.draws, "generators": [g.get_state() for g in self.generators]}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by :meth:`state` (of a stream with the same seeds)."""
        generators = state["generators"]
        if len(generators) != len(self.generators):
            raise ValueError(f"state: holds {len(generators)} streams, this noise has {len(self.generators)} samples")
        for g, saved in zip(self.generators, generators, strict=True):
            g.set_state(saved)
        self.draws = int(state["draws"])

    def __repr__(self) -> str:
        return f"SeededNoise(seeds={list(self.seeds)}, shape={self.shape}, device={self.device}, draws={self.draws})"
