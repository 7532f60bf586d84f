"""Reproducible Brownian paths: a virtual Brownian tree with space-time Lévy area.

:class:`BrownianPath` is a batch of independent Brownian motions ``W_b(t)``, ``t in [t0, t1]``, each with the
per-sample shape ``shape``, that can be queried at any times in any order and always returns the same path.
It follows the virtual Brownian tree of Gaines & Lyons (1997) / Li et al. (2020) (torchsde's ``BrownianTree``,
diffrax's ``VirtualBrownianTree``) and carries the space-time Lévy area through the tree as in Jelinčič,
Tang, Foster, Kidger et al. (2023), "Single-seed generation of Brownian paths and integrals for adaptive and
high order SDE solvers".

Construction (time normalised to ``u = (t - t0) / (t1 - t0)`` in ``[0, 1]``; every value is finally scaled by
``sqrt(t1 - t0)``):

* Node ``k`` of a binary tree (heap numbering: root 1, children ``2k``, ``2k + 1``) covers the dyadic interval
  ``[j / 2^d, (j + 1) / 2^d]`` with ``k = 2^d + j``. It holds the increment ``W`` over its interval and the
  space-time Lévy area ``H = (1/h) int_a^b (W_r - W_a - (r - a)/h W) dr`` (``h = 2^-d``).
* The root holds ``W ~ N(0, 1)`` and ``H ~ N(0, 1/12)`` (independent). Splitting node ``k`` at its midpoint
  draws two standard normals ``Z1, Z2`` and sets (``h`` the node's length)::

      W_left  = W/2 + 3/2 H + sqrt(h)/4 Z1            W_right = W - W_left
      H_left  = H/4 - sqrt(h)/8 Z1 + sqrt(h/12)/2 Z2   H_right = H/4 - sqrt(h)/8 Z1 - sqrt(h/12)/2 Z2

  the exact conditional law of the two halves given ``(W, H)``: the halves are independent with
  ``W ~ N(0, h/2)``, ``H ~ N(0, h/24)``, and ``W = W_left + W_right``,
  ``H = (H_left + H_right)/2 + (W_left - W_right)/4`` hold exactly.
* The normals are a pure function of ``(seed, node, element)`` (:mod:`fewstep.noise.normals`: Philox4x32-10,
  the counter-based generator of cuRAND and JAX, for small per-sample states; torch's generator seeded per
  (seed, node) for image-sized ones). So sample ``b``'s path depends on ``seeds[b]`` only
  (never on the batch it is drawn in), values do not depend on the order of queries or on what is cached, and a
  cache miss recomputes the same bits. A query generates the normals of all the nodes it needs in one call.
* The tree stops at depth ``D = ceil(log2((t1 - t0) / tol))`` (leaves no longer than ``tol``). Inside a leaf
  the path is the conditional mean given the leaf's ``(W, H)`` — the "Brownian parabola"
  ``W_a + s W + 6 s (1 - s) H`` (``s`` the position in the leaf), whose time integral is known in closed form.
  It is deterministic, so every time has one value. The law is exact at the tree's times (the dyadic times of
  depth ``<= D``); between them the variance of ``W(t)`` given the leaf is left out, at most ``tol / 12``.

A query ``increment(s, t)`` finds the smallest node containing ``[s, t]`` and descends from it to ``s`` and to
``t``, accumulating ``W`` and the time integral ``K(r) = int (W - W_a)`` relative to that node's left end; then
``W(t) - W(s)`` is the difference of the two values and
``H(s, t) = (K(t) - K(s)) / (t - s) - (W(s) + W(t)) / 2``. Increments are differences of one function of time,
so increments over any partition of ``[s, t]`` sum to ``W(t) - W(s)`` up to float rounding, and Lévy areas
combine exactly by the bisection formula above.

All tree arithmetic is float64 (on ``compute_device``, the CPU by default, so results are bit-identical on any
output device); results are cast to ``dtype`` and moved to ``device``. Nodes live in an LRU cache of at most
``cache_size`` entries, each ``2 * B * prod(shape)`` float64 numbers.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import torch
from torch import Tensor

from .normals import node_normals

__all__ = ["BrownianPath", "NoiseSampler", "brownian_noise_sampler"]

NoiseSampler = Callable[[float | Tensor, float | Tensor], Tensor]

_MAX_DEPTH = 48  # node ids stay below 2^49 (two counter words); leaves of 2^-48 are far below any useful tol
_END_SLACK = 1e-6  # relative: times this close outside [t0, t1] are clamped to it (float32 rounding is 6e-8)
_STREAM_SPLIT = 0
_STREAM_ROOT = 1


def _as_time(value: float | Tensor, name: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: must be a scalar time, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    return value


def _as_seeds(seeds: int | Sequence[int] | Tensor, batch_size: int | None) -> tuple[int, ...]:
    if isinstance(seeds, Tensor):
        if seeds.dtype.is_floating_point or seeds.dtype.is_complex or seeds.dtype == torch.bool:
            raise ValueError(f"seeds: must be integers, got a {seeds.dtype} tensor")
        if seeds.dim() > 1:
            raise ValueError(f"seeds: must be one seed or a 1-D sequence of seeds, got shape {tuple(seeds.shape)}")
        seeds = int(seeds.item()) if seeds.dim() == 0 else [int(s) for s in seeds.tolist()]
    if isinstance(seeds, bool):
        raise ValueError("seeds: must be integers, got a bool")
    if isinstance(seeds, numbers.Integral):
        seeds = int(seeds)
        if batch_size is None:
            batch_size = 1
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
        values = [seeds + b for b in range(batch_size)]
    else:
        items: Any = seeds
        try:
            values = list(items)
        except TypeError:
            raise ValueError(
                f"seeds: must be an integer or a sequence of integers, got {type(seeds).__name__}"
            ) from None
        if not values:
            raise ValueError("seeds: must not be empty")
        for s in values:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral):
                raise ValueError(f"seeds: must be integers, got {s!r}")
        values = [int(s) for s in values]
        if batch_size is not None and batch_size != len(values):
            raise ValueError(f"batch_size: {batch_size} does not match the {len(values)} seeds given")
    for s in values:
        if not 0 <= s < 2**64:
            raise ValueError(f"seeds: must be in [0, 2**64), got {s}")
    return tuple(values)


def per_sample_seeds(seed: int | Sequence[int] | Tensor, batch: int) -> tuple[int, ...]:
    """The seeds of a batch of ``batch`` samples from the option ``seed``: one integer (the seeds ``seed, ...,
    seed + batch - 1``) or one integer per sample (ValueError naming ``seed`` otherwise)."""
    scalar = isinstance(seed, numbers.Integral) or isinstance(seed, Tensor) and seed.dim() == 0
    if not scalar:
        try:
            count = len(seed)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(f"seed: must be an integer or one integer per sample, got {type(seed).__name__}") from None
        if count != batch:
            raise ValueError(f"seed: give one integer seed per sample ({batch}), got {count}")
    return _as_seeds(seed, batch if scalar else None)


class BrownianPath:
    """A batch of reproducible Brownian motions on ``[t0, t1]`` with space-time Lévy area.

    Args:
        shape: the per-sample shape of ``W(t)`` (e.g. ``(C, H, W)``); results have shape ``(B, *shape)``.
        seeds: one integer seed per sample (a list or 1-D integer tensor, values in ``[0, 2**64)``); sample ``b``'s
            path is a function of ``seeds[b]`` alone. A single integer with ``batch_size=B`` means the seeds
            ``seed, seed + 1, ..., seed + B - 1``.
        t0, t1: the time interval (``t0 < t1``). Queries at most ``1e-6 * max(|t0|, |t1|)`` outside it (float32
            rounding of the ends) are clamped to it; further out is a ``ValueError``.
        batch_size: the number of samples when ``seeds`` is a single integer (default 1).
        tol: the longest leaf of the tree, in time units (default ``1e-6 * (t1 - t0)``); the path is exact at the
            tree's dyadic times and a deterministic interpolant in between (see the module docstring).
        dtype: the floating dtype of the results (the tree itself is always float64).
        device: where the results go.
        compute_device: where the tree is computed and cached (default the CPU, which makes results
            bit-identical whatever ``device``); another device is faster for large states, with the same random
            bits but possibly different last-place rounding of ``log``/``cos``.
        cache_size: the most tree nodes kept (LRU); each holds ``2 * B * prod(shape)`` float64 numbers.
    """

    def __init__(
        self,
        shape: int | Sequence[int] | torch.Size,
        seeds: int | Sequence[int] | Tensor,
        t0: float = 0.0,
        t1: float = 1.0,
        *,
        batch_size: int | None = None,
        tol: float | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        compute_device: str | torch.device = "cpu",
        cache_size: int = 128,
    ) -> None:
        if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
            shape = (int(shape),)
        items: Any = shape
        try:
            dims = tuple(items)
        except TypeError:
            raise ValueError(f"shape: must be a sequence of positive integers, got {shape!r}") from None
        if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in dims):
            raise ValueError(f"shape: must be a sequence of positive integers, got {shape!r}")
        dims = tuple(int(n) for n in dims)
        numel = math.prod(dims)
        if numel >= 2**32:
            raise ValueError(f"shape: at most 2**32 - 1 elements per sample, got {numel}")
        self.shape: tuple[int, ...] = dims
        self.seeds: tuple[int, ...] = _as_seeds(seeds, batch_size)
        self.batch_size = len(self.seeds)
        self.t0 = _as_time(t0, "t0")
        self.t1 = _as_time(t1, "t1")
        if not self.t0 < self.t1:
            raise ValueError(f"t1: must be greater than t0, got t0={self.t0}, t1={self.t1}")
        length = self.t1 - self.t0
        if tol is None:
            tol = 1e-6 * length
        tol = _as_time(tol, "tol")
        if tol <= 0:
            raise ValueError(f"tol: must be positive, got {tol}")
        self.depth = max(0, math.ceil(math.log2(length / tol) - 1e-12)) if tol < length else 0
        if self.depth > _MAX_DEPTH:
            raise ValueError(
                f"tol: {tol} needs a tree deeper than {_MAX_DEPTH} levels; use tol >= {length * 2.0**-_MAX_DEPTH:.3g}"
            )
        self.tol = tol
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype: must be a floating torch dtype, got {dtype!r}")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.compute_device = torch.device(compute_device)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size: must be a non-negative integer, got {cache_size!r}")
        self.cache_size = cache_size

        self._scale = math.sqrt(length)
        self._numel = numel
        self._cache: OrderedDict[int, tuple[Tensor, Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ cache and tree nodes

    def cache_info(self) -> dict[str, int]:
        """``hits``, ``misses`` (node look-ups), ``size`` (nodes cached now) and ``maxsize``."""
        return {"hits": self.hits, "misses": self.misses, "size": len(self._cache), "maxsize": self.cache_size}

    def clear_cache(self) -> None:
        self._cache.clear()

    def _store(self, node: int, value: tuple[Tensor, Tensor]) -> None:
        if self.cache_size == 0:
            return
        self._cache[node] = value
        self._cache.move_to_end(node)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _lookup(self, node: int) -> tuple[Tensor, Tensor] | None:
        value = self._cache.get(node)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self._cache.move_to_end(node)
        return value

    def _generate(self, nodes: Sequence[int], stream: int = _STREAM_SPLIT) -> dict[int, tuple[Tensor, Tensor]]:
        """The normals of several nodes."""
        z1, z2 = node_normals(self.seeds, self._numel, nodes, stream, self.compute_device)
        return {node: (z1[j], z2[j]) for j, node in enumerate(nodes)}

    def _prefetch(self, steps: Sequence[tuple[int, bool]]) -> dict[int, tuple[Tensor, Tensor]]:
        """The normals of the splits along ``steps`` whose children are not cached."""
        need = dict.fromkeys(n for n, _ in steps if 2 * n not in self._cache or 2 * n + 1 not in self._cache)
        return self._generate(list(need))

    def _root(self) -> tuple[Tensor, Tensor]:
        (z1, z2), *_ = self._generate([1], _STREAM_ROOT).values()
        return z1, z2 * math.sqrt(1.0 / 12.0)

    def _split(
        self, node: int, value: tuple[Tensor, Tensor], normals: tuple[Tensor, Tensor]
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """The two halves of ``node`` given its ``(W, H)`` (normalised time) and its normals."""
        w, h_area = value
        z1, z2 = normals
        length = 2.0 ** -(node.bit_length() - 1)
        root_h = math.sqrt(length)
        w_left = torch.add(w.mul(0.5), h_area, alpha=1.5).add_(z1, alpha=0.25 * root_h)
        common = torch.add(h_area.mul(0.25), z1, alpha=-0.125 * root_h)
        spread = 0.5 * math.sqrt(length / 12.0)
        h_left = torch.add(common, z2, alpha=spread)
        return (w_left, h_left), (w - w_left, common.sub_(z2, alpha=spread))

    def _child(
        self, node: int, value: tuple[Tensor, Tensor], right: bool, normals: dict[int, tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        child = 2 * node + int(right)
        cached = self._lookup(child)
        if cached is not None:
            return cached
        z = normals.get(node)
        if z is None:  # not prefetched (evicted meanwhile): generate it alone, the same numbers
            z = self._generate([node])[node]
        left_value, right_value = self._split(node, value, z)
        self._store(2 * node, left_value)
        self._store(2 * node + 1, right_value)
        return right_value if right else left_value

    def _start(self, node: int) -> tuple[int, tuple[Tensor, Tensor] | None, list[tuple[int, bool]]]:
        """The nearest cached ancestor of ``node`` (else the root, uncomputed) and the steps from it to ``node``."""
        depth = node.bit_length() - 1
        start, value = 1, None
        for up in range(1, depth + 1):
            value = self._cache.get(node >> up)
            if value is not None:
                start = node >> up
                self._cache.move_to_end(start)
                break
        steps: list[tuple[int, bool]] = []
        for level in range(start.bit_length() - 1, depth):
            steps.append((node >> (depth - level), bool((node >> (depth - level - 1)) & 1)))
        return start, value, steps

    def _steps(self, node: int, u: float) -> list[tuple[int, bool]]:
        """The splits (node, goes right) a descent from ``node`` to time ``u`` goes through."""
        steps: list[tuple[int, bool]] = []
        while True:
            depth = node.bit_length() - 1
            length = 2.0**-depth
            a = (node - (1 << depth)) * length
            if u == a or u == a + length or depth >= self.depth:
                return steps
            right = u > a + 0.5 * length
            steps.append((node, right))
            node = 2 * node + int(right)

    # ------------------------------------------------------------------ queries

    def _frame(self, u: float, v: float) -> int:
        """The deepest node (of depth <= the tree's) whose interval contains ``[u, v]``."""
        node, depth, j = 1, 0, 0
        while depth < self.depth:
            mid = (2 * j + 1) * 2.0 ** -(depth + 1)
            if v <= mid:
                j = 2 * j
            elif u >= mid:
                j = 2 * j + 1
            else:
                break
            depth += 1
            node = 2 * node + (j & 1)
        return node

    def _point(
        self,
        node: int,
        value: tuple[Tensor, Tensor],
        u: float,
        steps: Sequence[tuple[int, bool]],
        normals: dict[int, tuple[Tensor, Tensor]],
    ) -> tuple[Tensor | float, Tensor | float]:
        """``W(u) - W(a)`` and ``int_a^u (W(r) - W(a)) dr`` (normalised time), ``a`` the left end of ``node``."""
        acc_w: Tensor | float = 0.0
        acc_k: Tensor | float = 0.0
        for step, right in steps:
            if right:  # K += half (H_left + W_left / 2) + half W_acc;  W_acc += W_left  (accumulators owned: in place)
                w_left, h_left = self._child(step, value, False, normals)
                half = 2.0 ** -step.bit_length()
                if isinstance(acc_w, Tensor) and isinstance(acc_k, Tensor):
                    acc_k.add_(h_left, alpha=half).add_(w_left, alpha=0.5 * half).add_(acc_w, alpha=half)
                    acc_w.add_(w_left)
                else:
                    acc_k = torch.add(h_left, w_left, alpha=0.5).mul_(half)
                    acc_w = w_left.clone()
            value = self._child(step, value, right, normals)
            node = 2 * step + int(right)
        depth = node.bit_length() - 1
        length = 2.0**-depth
        a = (node - (1 << depth)) * length
        if u == a:
            return acc_w, acc_k
        # u is the right end, or inside a leaf: the parabola W_a + s W + 6 s (1 - s) H and its integral
        w, h_area = value
        s = 1.0 if u == a + length else (u - a) / length
        local_w = torch.add(w.mul(s), h_area, alpha=6.0 * s * (1.0 - s))
        local_k = torch.add(w.mul(length * 0.5 * s * s), h_area, alpha=length * s * s * (3.0 - 2.0 * s))
        if isinstance(acc_w, Tensor) and isinstance(acc_k, Tensor):
            return local_w.add_(acc_w), local_k.add_(acc_k).add_(acc_w, alpha=u - a)
        return local_w, local_k

    def _normalised(self, t: float | Tensor, name: str) -> float:
        time = _as_time(t, name)
        if not self.t0 <= time <= self.t1:
            # Times a float32 rounding outside (e.g. float32 sigmas against float64 ends) are the ends.
            slack = _END_SLACK * max(abs(self.t0), abs(self.t1))
            if not self.t0 - slack <= time <= self.t1 + slack:
                raise ValueError(f"{name}: {time} is outside the path's interval [{self.t0}, {self.t1}]")
            time = min(max(time, self.t0), self.t1)
        return (time - self.t0) / (self.t1 - self.t0)

    def _out(self, x: Tensor | float) -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.zeros(self.batch_size, *self.shape, dtype=torch.float64, device=self.compute_device)
        x = (x * self._scale).reshape(self.batch_size, *self.shape)
        return x.to(device=self.device, dtype=self.dtype)

    @overload
    def increment(self, s: float | Tensor, t: float | Tensor, levy_area: Literal[False] = ...) -> Tensor: ...

    @overload
    def increment(self, s: float | Tensor, t: float | Tensor, levy_area: Literal[True]) -> tuple[Tensor, Tensor]: ...

    @overload
    def increment(self, s: float | Tensor, t: float | Tensor, levy_area: bool) -> Tensor | tuple[Tensor, Tensor]: ...

    def increment(
        self, s: float | Tensor, t: float | Tensor, levy_area: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``W(t) - W(s)``, shape ``(B, *shape)``; with ``levy_area=True`` also the space-time Lévy area

        ``H(s, t) = 1/(t - s) int_s^t (W(r) - W(s) - (r - s)/(t - s) (W(t) - W(s))) dr``,

        which is independent of the increment with variance ``|t - s| / 12``. For ``s > t`` the increment
        changes sign and ``H`` stays the same (it is symmetric in ``s`` and ``t``); for ``s == t`` both are zero.
        """
        u = self._normalised(s, "s")
        v = self._normalised(t, "t")
        sign = 1.0
        if u > v:
            u, v, sign = v, u, -1.0
        if u == v:
            zero = self._out(0.0)
            return (zero, zero.clone()) if levy_area else zero
        frame = self._frame(u, v)
        value = self._lookup(frame)
        _, start_value, walk = (frame, value, []) if value is not None else self._start(frame)
        steps_u, steps_v = self._steps(frame, u), self._steps(frame, v)
        normals = self._prefetch([*walk, *steps_u, *steps_v])  # one generation for the whole query
        if start_value is None:
            start_value = self._root()
            self._store(1, start_value)
        value = start_value
        for node, right in walk:
            value = self._child(node, value, right, normals)
        w_u, k_u = self._point(frame, value, u, steps_u, normals)
        w_v, k_v = self._point(frame, value, v, steps_v, normals)
        dw = w_v - w_u
        increment = self._out(dw if sign > 0 else -dw)
        if not levy_area:
            return increment
        h_area = (k_v - k_u) / (v - u) - 0.5 * (w_u + w_v)
        return increment, self._out(h_area)

    def __call__(self, t: float | Tensor) -> Tensor:
        """``W(t) - W(t0)``, shape ``(B, *shape)``."""
        return self.increment(self.t0, t)

    def __repr__(self) -> str:
        return (
            f"BrownianPath(shape={self.shape}, batch_size={self.batch_size}, t0={self.t0}, t1={self.t1}, "
            f"tol={self.tol:.3g}, depth={self.depth}, dtype={self.dtype}, device={self.device})"
        )


def brownian_noise_sampler(path: BrownianPath, transform: Callable[[float], float] | None = None) -> NoiseSampler:
    """k-diffusion's ``BrownianTreeNoiseSampler`` convention: ``noise(s, t) = (W(t) - W(s)) / sqrt(|t - s|)``.

    Each call is a standard normal of shape ``(B, *shape)``, and the calls of a run are the normalised
    increments of one Brownian path, so a sampler's noise depends on the seeds, not on its step sizes'
    history. ``transform`` maps the sampler's times (e.g. sigmas) to the path's times first.
    """

    def noise(s: float | Tensor, t: float | Tensor) -> Tensor:
        a = _as_time(s, "s")
        b = _as_time(t, "t")
        if transform is not None:
            a, b = float(transform(a)), float(transform(b))
        if a == b:
            raise ValueError(f"t: equals s ({a}); the normalised increment over an empty interval is undefined")
        return path.increment(a, b) / math.sqrt(abs(b - a))

    return noise
