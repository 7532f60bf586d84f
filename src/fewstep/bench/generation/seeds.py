"""Per-index seeds: sample ``i`` of a run with base seed ``s`` draws all its randomness from one stream.

The stream of index ``i`` is a :class:`fewstep.noise.SeededNoise` stream of the seed :func:`index_seed` ``(s, i)``:
its first draw is the sample's start noise (times the schedule's ``sigma(t_max)``), the following draws are a
stochastic solver's step noise. A sample therefore depends on ``(s, i)`` alone, not on the rank, the world size or
the other samples of its batch (EDM's per-seed generation, with one stream per sample instead of one seed per
batch row), and a draw costs one fill per sample on the state's device.

``index_seed(s, i)`` keeps a word of ``s`` in the high 32 bits and puts ``fmix32((i + c(s)) mod 2**32)`` in the
low 32 bits, ``fmix32`` being MurmurHash3's 32-bit finaliser (a bijection) and ``c(s)`` a mix of ``s``. For one
base seed the low words of indices below ``2**32`` are distinct, so every sample of a run gets its own stream even
on the CPU, whose Mersenne Twister keeps only the low 32 bits of a seed (a random 32-bit seed per index would
repeat one among 50,000 samples with probability about 1/4).
"""

from __future__ import annotations

import numbers

from ...noise.streams import _fmix32  # MurmurHash3's 32-bit finaliser, shared with the sampler's noise streams

__all__ = ["MAX_INDEX", "MAX_SEED", "index_seed", "index_seeds", "check_base_seed"]

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1

#: The largest base seed (seeds are in ``[0, 2**63)``).
MAX_SEED = (1 << 63) - 1
#: The number of indices with distinct streams for one base seed.
MAX_INDEX = 1 << 32


def _splitmix64(x: int) -> int:
    """SplitMix64's output function (Steele, Lea & Flood 2014): a bijection of ``[0, 2**64)``."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def check_base_seed(seed: object) -> int:
    """``seed`` as an int in ``[0, 2**63)`` (TypeError / ValueError naming ``seed`` otherwise)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: must be an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed: must be in [0, 2**63), got {seed}")
    return int(seed)


def index_seed(seed: int, index: int) -> int:
    """The stream seed of sample ``index`` of a run with base seed ``seed`` (module docstring)."""
    if not 0 <= index < MAX_INDEX:
        raise ValueError(f"index: must be in [0, 2**32), got {index}")
    mixed = _splitmix64(seed)
    low = _fmix32((index + (mixed & _MASK32)) & _MASK32)
    return (mixed & ~_MASK32 & _MASK64) | low


def index_seeds(seed: int, indices: range) -> list[int]:
    """:func:`index_seed` of each index of ``indices``."""
    return [index_seed(seed, i) for i in indices]
