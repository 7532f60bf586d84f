"""The normals of a Brownian tree's nodes: a pure function of ``(seed, node, stream, element)``.

Two generators, chosen by the per-sample size ``numel`` (so a path's values depend on its seeds and shape, never on
the batch it is drawn in):

* ``numel < NATIVE_MIN_NUMEL`` (small states, often in large batches): Philox4x32-10 (Salmon et al. 2011, the
  counter-based generator of cuRAND and JAX; checked against Random123's known answers) evaluated with torch
  integer ops, vectorised over nodes, samples and elements. One block per (node, sample, pair of elements):
  counter ``(pair index, node low word, node high word, stream)``, key ``(seed low word, seed high word)``; words
  0-1 give ``Z1`` and words 2-3 ``Z2`` of elements ``2p, 2p + 1`` by Box-Muller in float64.
* ``numel >= NATIVE_MIN_NUMEL`` (image-sized states): torch's own generator on the compute device, seeded per
  (sample, node) with :func:`node_key` (SplitMix64 of the seed, node and stream), filling ``Z1, Z2`` as float32
  normals (cast to float64 for the tree's arithmetic). About 5x faster than Philox in torch ops per element;
  the CPU's Mersenne Twister keeps the low 32 bits of the key, so two (seed, node) pairs share their normals with
  probability ``2**-32``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["NATIVE_MIN_NUMEL", "node_key", "node_normals", "philox4x32_10"]

#: Per-sample sizes from which a node's normals come from torch's generator rather than Philox (module docstring).
NATIVE_MIN_NUMEL = 1024

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_PREFETCH_PAIRS = 2**16  # Philox blocks per call: amortises per-op overhead, keeps temporaries (512 KiB) in cache
_TWO_PI = 6.283185307179586
_INV_2_32 = 2.0**-32


def _mulhilo(m: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of ``m * x`` for 32-bit ``m`` and ``x`` held in int64.

    The product wraps modulo ``2**64`` in int64 (two's complement) and both words survive the wrap: the low word is
    ``p & (2**32 - 1)``, and the arithmetic shift of the wrapped product differs from the true ``p >> 32`` by a
    multiple of ``2**32``, which the mask removes."""
    p = x * m
    hi = p >> 32
    hi &= _MASK32
    p &= _MASK32
    return hi, p


def philox4x32_10(counter: Sequence[Tensor | int], key: Sequence[Tensor | int]) -> tuple[Tensor, ...]:
    """Philox4x32-10 (Salmon et al. 2011) on int64 tensors holding 32-bit words; the inputs broadcast.

    ``counter`` is four words, ``key`` two; returns the four output words (int64 tensors in ``[0, 2^32)``).
    """
    ref = next((w for w in (*counter, *key) if isinstance(w, Tensor)), None)
    device = ref.device if ref is not None else None

    def word(w: Tensor | int) -> Tensor:
        if isinstance(w, Tensor):
            return w.to(torch.int64)
        return torch.tensor(w & _MASK32, dtype=torch.int64, device=device)

    c0, c1, c2, c3 = (word(w) for w in counter)
    k0, k1 = (word(w) for w in key)
    shape = torch.broadcast_shapes(*(w.shape for w in (c0, c1, c2, c3, k0, k1)))
    c0, c1, c2, c3 = (w.expand(shape) for w in (c0, c1, c2, c3))  # views; every round's words are then full-sized
    for r in range(10):
        if r:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        hi1 ^= c1  # full-sized fresh tensors: update in place
        hi1 ^= k0
        hi0 ^= c3
        hi0 ^= k1
        c0, c1, c2, c3 = hi1, lo1, hi0, lo0
    return c0, c1, c2, c3


def _box_muller(x: Tensor, y: Tensor) -> Tensor:
    """Two standard normals ``(r cos a, r sin a)`` (stacked on a new last axis) from two 32-bit words."""
    radius = (x + 1).to(torch.float64).mul_(_INV_2_32).log_().mul_(-2.0).sqrt_()  # uniform in (0, 1]
    angle = y.to(torch.float64).mul_(_TWO_PI * _INV_2_32)  # uniform in [0, 2 pi)
    out = torch.empty((*angle.shape, 2), dtype=torch.float64, device=angle.device)
    torch.cos(angle, out=out[..., 0])
    torch.sin(angle, out=out[..., 1])
    return out.mul_(radius.unsqueeze(-1))


def _philox_normals(words: Tensor, numel: int, nodes: Sequence[int], stream: int) -> tuple[Tensor, Tensor]:
    pairs = torch.arange((numel + 1) // 2, dtype=torch.int64, device=words.device).unsqueeze(0)
    key = (words[:, :1], words[:, 1:])  # the seeds' low and high words, (B, 1) each
    ids = torch.tensor(nodes, dtype=torch.int64, device=words.device).view(-1, 1, 1)
    x0, x1, x2, x3 = philox4x32_10((pairs, ids & _MASK32, ids >> 32, stream), key)
    z1 = _box_muller(x0, x1).flatten(-2)[..., :numel]
    z2 = _box_muller(x2, x3).flatten(-2)[..., :numel]
    return z1, z2


def _mix64(x: int) -> int:
    """SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijection of 64-bit integers that mixes every bit."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


def node_key(seed: int, node: int, stream: int) -> int:
    """The generator seed of a node's normals: distinct nodes (and streams) of one seed get distinct 64-bit keys."""
    return _mix64(_mix64(seed) ^ (2 * node + stream))


def _generator_normals(
    seeds: Sequence[int], numel: int, nodes: Sequence[int], stream: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    out = torch.empty(len(nodes), len(seeds), 2, numel, dtype=torch.float32, device=device)
    generator = torch.Generator(device)
    for j, node in enumerate(nodes):
        for b, seed in enumerate(seeds):
            out[j, b].normal_(generator=generator.manual_seed(node_key(seed, node, stream)))
    z = out.to(torch.float64)
    return z[:, :, 0], z[:, :, 1]


def node_normals(
    seeds: Sequence[int], numel: int, nodes: Sequence[int], stream: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Independent standard normals ``Z1, Z2`` (float64, shape ``(len(nodes), B, numel)``) of each node, sample and
    element (module docstring). Every value depends on its (seed, node, stream, element) and ``numel`` only."""
    if not nodes:
        empty = torch.empty(0, len(seeds), numel, dtype=torch.float64, device=device)
        return empty, empty
    if numel >= NATIVE_MIN_NUMEL:
        return _generator_normals(seeds, numel, nodes, stream, device)
    words = torch.tensor([[s & _MASK32, s >> 32] for s in seeds], dtype=torch.int64, device=device)
    chunk = max(1, _PREFETCH_PAIRS // (len(seeds) * ((numel + 1) // 2)))
    parts = [_philox_normals(words, numel, nodes[i : i + chunk], stream) for i in range(0, len(nodes), chunk)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
