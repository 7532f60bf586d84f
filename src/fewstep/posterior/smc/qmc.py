"""Sequential quasi-Monte Carlo (SQMC): the particles' resampling and proposal noise from randomised QMC points.

Gerber & Chopin 2015, "Sequential quasi-Monte Carlo" (JRSS B 77(3)), Algorithm 3 with the Hilbert sort: at each
step one randomised QMC point set ``u^n = (u_0^n, v^n)``, ``n = 1..K``, in ``[0, 1)^{1+D}`` per prompt (``D``:
the sample's size), sorted so that ``u_0^1 <= ... <= u_0^K``. The particles are put in the order ``h`` of the
Hilbert curve's index of ``psi(x)`` (``psi``: each coordinate standardised over the prompt's particles and mapped
through the logistic function into ``[0, 1]``, the paper's §4.3), and particle slot ``n`` takes

    the ancestor   a^n = h(F^{-1}(u_0^n)),   F(j) = sum_{m <= j} w_{h(m)}   (the inverse CDF of the sorted weights)
    the noise      z^n = Phi^{-1}(v^n)        (the proposal's standard normal draw, component-wise)

Each point is marginally uniform on ``[0, 1)^{1+D}`` (the random digital shift), so ``E[#{n: a^n = j}] = K w_j``
(unbiased resampling) and ``z^n ~ N(0, I)`` marginally: the weights' formula is unchanged. What QMC adds is the
pairing: the points are a net, so the K ancestors and their K noises are spread more evenly than K iid draws, and
the error of the particle estimates falls faster than ``K^{-1/2}`` for smooth problems in low dimension (Gerber &
Chopin, Thms 5, 7). A prompt that does not resample keeps its weights and takes, in slot ``n``, the ``n``-th
particle in Hilbert order with the noise ``z^n`` (with uniform weights and a ``(0, m, 1+D)``-net of ``K = 2^m``
points this is what resampling would give). The gain fades as ``D`` grows (the Hilbert order and the net's
uniformity say less in high dimension), the correctness does not.

The point sets: scrambled Sobol' (``torch.quasirandom.SobolEngine(scramble=True)``, in blocks of at most
:data:`~torch.quasirandom.SobolEngine.MAXDIM` coordinates), one run-long sequence whose consecutive blocks of ``K``
points (nets when K is a power of two) serve the prompts and steps, each block under its own independent random
digital shift (an XOR of each coordinate's 30 bits, which keeps the net property and makes every point uniform;
L'Ecuyer & Lemieux 2002). Points sit at the centres of the ``2^-30`` grid cells, so ``Phi^{-1}`` stays finite.
The Hilbert index follows Skilling 2004, "Programming the Hilbert curve" (AIP Conf. Proc. 707): ``O(bits * d)``
vector operations per step, ``bits = min(16, max(2, 62 // d))`` per coordinate, ``d = D`` up to
:data:`SORT_DIMS` = 128 coordinates. A larger state (an image's) is sorted in its particles' leading principal
coordinates instead, ``d = min(K - 1, 128)`` of them (:func:`principal_scores`: an eigendecomposition of each
prompt's ``K x K`` Gram matrix): K particles span at most ``K - 1`` directions, so for ``K <= 129`` the sort sees
their geometry whole, at a cost that no longer grows with ``D`` beyond the Gram matrix (``O(K^2 D)``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.quasirandom import SobolEngine

from .resampling import _invert, normalise

__all__ = ["RQMC", "hilbert_keys", "hilbert_order", "principal_scores", "rqmc_normal", "sqmc_ancestors"]

#: bits of every Sobol' coordinate (torch's ``SobolEngine.MAXBIT``)
SOBOL_BITS = 30
#: bits of a packed Hilbert-index word (int64, kept non-negative)
WORD_BITS = 62
#: the most bits per coordinate of the Hilbert grid (65536 cells per axis: finer than any particle cloud needs)
GRID_BITS = 16
#: states with more coordinates are sorted in their particles' leading principal coordinates (at most this many)
SORT_DIMS = 128


class RQMC:
    """Randomised QMC point sets ``(B, K, dim)`` for ``B`` prompts of ``K`` points each (module docstring); every
    call to :meth:`uniform` gives the next step's sets, seeded from ``generator`` (torch's global generator if
    ``None``)."""

    def __init__(
        self,
        prompts: int,
        particles: int,
        dim: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (("prompts", prompts), ("particles", particles), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: must be a torch.Generator, got {type(generator).__name__}")
        self.prompts, self.particles, self.dim, self.generator = prompts, particles, dim, generator
        self.device = torch.device("cpu") if device is None else torch.device(device)
        widths = [min(SobolEngine.MAXDIM, dim - s) for s in range(0, dim, SobolEngine.MAXDIM)]
        seeds = self._integers(2**62, (len(widths),)).tolist()  # one host read, at construction
        self.engines = [SobolEngine(w, scramble=True, seed=int(s)) for w, s in zip(widths, seeds, strict=True)]

    def _integers(self, high: int, shape: tuple[int, ...]) -> Tensor:
        gen = self.generator
        device = gen.device if gen is not None else torch.device("cpu")
        return torch.randint(0, high, shape, generator=gen, device=device, dtype=torch.int64)

    def uniform(self) -> Tensor:
        """The next step's point sets: ``(B, K, dim)`` float64 in ``(0, 1)`` on the source's device."""
        b, k = self.prompts, self.particles
        raw = torch.cat([e.draw(b * k, dtype=torch.float64) for e in self.engines], dim=1)
        bits = (raw * 2.0**SOBOL_BITS).round_().to(torch.int64).reshape(b, k, self.dim).to(self.device)
        shift = self._integers(2**SOBOL_BITS, (b, 1, self.dim)).to(self.device)
        return ((bits ^ shift).to(torch.float64) + 0.5) / 2.0**SOBOL_BITS


def rqmc_normal(
    prompts: int,
    particles: int,
    sample_shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Start states for :func:`~fewstep.posterior.smc.smc` with ``qmc=True``: per prompt, K scrambled-Sobol' points in
    ``[0, 1)^D`` through ``Phi^{-1}``, shape ``(prompts, particles, *sample_shape)``; each row is ``N(0, I)``."""
    shape = tuple(int(s) for s in sample_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"sample_shape: need a non-empty shape of positive sizes, got {sample_shape!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: must be a floating-point torch.dtype, got {dtype!r}")
    u = RQMC(prompts, particles, math.prod(shape), generator, device).uniform()
    return torch.special.ndtri(u).to(dtype).reshape(prompts, particles, *shape)


def _hilbert_transpose(axes: list[Tensor], bits: int) -> list[Tensor]:
    """Skilling's ``AxesToTranspose``: the Hilbert index of the integer points ``axes`` (``d`` tensors of ``bits``
    bits), in transposed form (bit ``l`` of axis ``i`` is the index's bit ``l d + (d - 1 - i)``)."""
    x = list(axes)
    d = len(x)
    q = 1 << (bits - 1)
    while q > 1:  # inverse undo
        p = q - 1
        for i in range(d):
            hit = (x[i] & q) != 0
            if i == 0:
                x[0] = torch.where(hit, x[0] ^ p, x[0])
                continue
            t = (x[0] ^ x[i]) & p
            x[0], x[i] = torch.where(hit, x[0] ^ p, x[0] ^ t), torch.where(hit, x[i], x[i] ^ t)
        q >>= 1
    for i in range(1, d):  # Gray encode
        x[i] = x[i] ^ x[i - 1]
    t = torch.zeros_like(x[0])
    q = 1 << (bits - 1)
    while q > 1:
        t = torch.where((x[d - 1] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    return [xi ^ t for xi in x]


def hilbert_keys(points: Tensor, bits: int) -> Tensor:
    """The Hilbert-curve index of integer points ``(N, d)`` in ``[0, 2^bits)^d`` (``d >= 2``), as ``(N, W)``
    non-negative int64 words of 62 bits, most significant first (compare lexicographically)."""
    n, d = points.shape
    transposed = torch.stack(_hilbert_transpose(list(points.to(torch.int64).unbind(1)), bits), 1)  # (N, d)
    shifts = torch.arange(bits - 1, -1, -1, device=points.device)
    digits = (transposed[:, None, :] >> shifts[None, :, None]) & 1  # (N, bits, d): level-major, MSB first
    digits = digits.reshape(n, bits * d)
    words = -(-(bits * d) // WORD_BITS)
    digits = torch.nn.functional.pad(digits, (0, words * WORD_BITS - bits * d)).reshape(n, words, WORD_BITS)
    weights = torch.arange(WORD_BITS - 1, -1, -1, device=points.device)
    return (digits << weights).sum(2)


def hilbert_order(x: Tensor) -> Tensor:
    """The permutation ``(B, K)`` putting each prompt's particles ``x`` ``(B, K, *shape)`` in Hilbert-curve order of
    ``psi(x)`` (module docstring); for one coordinate, plain sorting."""
    b, k = x.shape[:2]
    flat = x.detach().reshape(b, k, -1).to(torch.float64)
    if flat.shape[2] > SORT_DIMS and k > 1:
        flat = principal_scores(flat, min(k - 1, SORT_DIMS))
    d = flat.shape[2]
    if d == 1:
        return flat[..., 0].argsort(dim=1, stable=True)
    mean, std = flat.mean(1, keepdim=True), flat.std(1, keepdim=True, correction=0)
    u = torch.sigmoid((flat - mean) / std.clamp_min(1e-12))
    bits = max(2, min(GRID_BITS, WORD_BITS // d))
    grid = (u * 2.0**bits).floor_().clamp_(0, 2**bits - 1).to(torch.int64)
    keys = hilbert_keys(grid.reshape(b * k, d), bits).reshape(b, k, -1)
    order = torch.arange(k, device=x.device).expand(b, k)
    for w in range(keys.shape[2] - 1, -1, -1):  # lexicographic: stable sorts from the least significant word
        step = keys[..., w].gather(1, order).argsort(dim=1, stable=True)
        order = order.gather(1, step)
    return order


def principal_scores(flat: Tensor, rank: int) -> Tensor:
    """Each prompt's particles ``(B, K, D)`` in the coordinates of their ``rank`` leading principal axes ``(B, K,
    rank)``: with ``X`` the centred particles and ``X X^T = V diag(lam) V^T``, the scores ``V sqrt(lam)`` (largest
    first). K particles span at most ``K - 1`` directions, so with ``rank = K - 1`` every pairwise distance is kept."""
    centred = flat - flat.mean(1, keepdim=True)
    lam, vec = torch.linalg.eigh(centred @ centred.transpose(1, 2))
    scores = vec * lam.clamp_min(0.0).sqrt()[:, None, :]
    return scores.flip(2)[..., :rank]


def sqmc_ancestors(log_w: Tensor, order: Tensor, u0: Tensor) -> Tensor:
    """Ancestor indices ``(B, K)`` from log-weights ``(B, K)``, the particles' Hilbert ``order`` ``(B, K)`` and the
    points' first coordinates ``u0`` ``(B, K)`` sorted ascending: ``a^n = h(F^{-1}(u_0^n))`` (module docstring)."""
    w = torch.exp(normalise(log_w.to(torch.float64).gather(1, order)))
    return order.gather(1, _invert(w.cumsum(1), u0.to(torch.float64)))
