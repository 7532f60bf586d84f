"""Isotropic Gaussian mixtures: data distributions whose denoiser is known exactly.

For data ``x0 ~ sum_k w_k N(mu_k, s_k^2 I)`` in D dimensions and ``x_t = alpha x0 + sigma eps``,
``x_t | k ~ N(alpha mu_k, v_k I)`` with ``v_k = alpha^2 s_k^2 + sigma^2``, and the posterior means are

    r_k(x)        = softmax_k( log w_k - D/2 log v_k - |x - alpha mu_k|^2 / (2 v_k) )
    E[x0  | x, k] = mu_k + alpha s_k^2 / v_k (x - alpha mu_k)
    E[eps | x, k] = sigma / v_k (x - alpha mu_k)
    E[.   | x]    = sum_k r_k(x) E[. | x, k].

Both are finite at alpha = 0 (pure noise) and at sigma = 0 (clean data). All arithmetic is float64.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...predictions import check_prediction, output_from
from ...schedules import DiscreteVP, NoiseSchedule

ArrayLike = Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]] | float
TIME_INPUTS = ("t", "sigma", "index")
CHUNK_ELEMENTS = 50_000_000  # largest batch x components (x dim) block held in memory at once
DIRECT_MAX = 4096  # up to this many components x dims, form the differences x - alpha mu_k explicitly


def _f64(value: ArrayLike, name: str) -> Tensor:
    try:
        out = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(value, Tensor) else value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: must be numeric, got {type(value).__name__}") from err
    out = out.detach().to(device="cpu", dtype=torch.float64).clone()
    if not torch.isfinite(out).all():
        raise ValueError(f"{name}: must be finite")
    return out


def _compute_device(device: torch.device) -> torch.device:
    """Where to do float64 work: on the input's device when it has float64 arithmetic, else on the CPU."""
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


class GaussianMixture:
    """``x0 ~ sum_k w_k N(mu_k, s_k^2 I)``: ``means`` (K, D), ``stds`` (K,) or a scalar, ``weights`` (K,).

    Weights are normalised (uniform by default). ``image_shape`` (optional, prod = D) records how a data
    vector is laid out as an image; :meth:`denoise` and :meth:`model` accept inputs of shape (B, D) or
    (B, *shape) with prod(shape) = D.
    """

    def __init__(
        self,
        means: ArrayLike,
        stds: ArrayLike,
        weights: ArrayLike | None = None,
        *,
        image_shape: tuple[int, ...] | None = None,
    ):
        mu = _f64(means, "means")
        if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
            raise ValueError(f"means: need a (K, D) array with K, D >= 1, got shape {tuple(mu.shape)}")
        k, d = mu.shape
        s = _f64(stds, "stds")
        if s.ndim == 0:
            s = s.expand(k).clone()
        if s.shape != (k,) or not torch.all(s > 0):
            raise ValueError(f"stds: need {k} positive values (or one scalar), got shape {tuple(s.shape)}")
        if weights is None:
            w = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:
            w = _f64(weights, "weights")
            if w.shape != (k,) or not torch.all(w > 0):
                raise ValueError(f"weights: need {k} positive values, got shape {tuple(w.shape)}")
            w = w / w.sum()
        if image_shape is not None:
            image_shape = tuple(int(n) for n in image_shape)
            if math.prod(image_shape) != d or any(n < 1 for n in image_shape):
                raise ValueError(f"image_shape: product must equal the dimension {d}, got {image_shape}")
        self.means, self.stds, self.weights, self.image_shape = mu, s, w, image_shape
        self._cache: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    @classmethod
    def single(cls, dim: int, mean: ArrayLike = 0.0, std: float = 1.0) -> GaussianMixture:
        """One Gaussian ``N(mean, std^2 I)`` in ``dim`` dimensions (``mean`` a scalar or a (dim,) vector)."""
        if not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"dim: must be a positive integer, got {dim!r}")
        m = _f64(mean, "mean")
        if m.ndim == 0:
            m = m.expand(dim)
        if m.shape != (dim,):
            raise ValueError(f"mean: need a scalar or {dim} values, got shape {tuple(m.shape)}")
        return cls(m.reshape(1, dim), [std])

    @property
    def _direct(self) -> bool:
        return self.num_components * self.dim <= DIRECT_MAX

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    def mean(self) -> Tensor:
        """``E[x0] = sum_k w_k mu_k``, shape (D,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """``Cov[x0] = sum_k w_k (s_k^2 I + mu_k mu_k^T) - m m^T``, shape (D, D)."""
        m = self.mean()
        spread = float(self.weights @ self.stds**2) * torch.eye(self.dim, dtype=torch.float64)
        return (self.means.T * self.weights) @ self.means + spread - torch.outer(m, m)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples, shape (n, D), float64 (reproducible with a CPU ``torch.Generator``)."""
        if not (isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0):
            raise ValueError(f"n: must be a non-negative integer, got {n!r}")
        n = int(n)
        if n == 0:
            return torch.empty(0, self.dim, dtype=torch.float64)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * noise

    def _params(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if device not in self._cache:
            self._cache[device] = (
                self.means.to(device),
                self.stds.to(device),
                torch.log(self.weights).to(device),
            )
        return self._cache[device]

    def denoise(
        self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor, *, differentiable: bool = False
    ) -> tuple[Tensor, Tensor]:
        """The exact ``(E[x0 | x_t = x], E[eps | x_t = x])`` for ``x_t = alpha x0 + sigma eps``.

        ``x`` has shape (B, D) or (B, *shape) with prod(shape) = D; ``alpha``, ``sigma`` are numbers or
        tensors with 1 or B elements (alpha, sigma >= 0, not both 0). Returns float64 tensors shaped like
        ``x``, on ``x``'s device (computed there when it supports float64, else on the CPU). The answers are
        detached from ``x``, ``alpha`` and ``sigma`` unless ``differentiable``: then autograd follows them.
        """
        x = torch.as_tensor(x)
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x: need shape (B, D) or (B, *shape) with D = {self.dim}, got {tuple(x.shape)}")
        dev = _compute_device(x.device)
        b = x.shape[0]
        xf = (x if differentiable else x.detach()).to(device=dev, dtype=torch.float64).reshape(b, self.dim)
        a, s = self._level(alpha, "alpha", b, dev), self._level(sigma, "sigma", b, dev)
        if not differentiable:
            a, s = a.detach(), s.detach()
        if bool(torch.any((a == 0) & (s == 0))):
            raise ValueError("alpha, sigma: not both 0 (x_t would carry no information and no noise)")
        mu, std, log_w = self._params(dev)
        rows = max(1, CHUNK_ELEMENTS // (self.num_components * (self.dim if self._direct else 4)))
        blocks = []  # concatenated, not written into a buffer: autograd follows them when differentiable
        for i in range(0, max(b, 1), rows):
            j = slice(i, i + rows)
            aj = a if a.shape[0] == 1 else a[j]
            sj = s if s.shape[0] == 1 else s[j]
            blocks.append(self._denoise_block(xf[j], aj, sj, mu, std, log_w))
        x0, eps = (torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*blocks, strict=True))
        return x0.reshape(x.shape).to(x.device), eps.reshape(x.shape).to(x.device)

    def _level(self, value: float | Tensor, name: str, batch: int, device: torch.device) -> Tensor:
        v = torch.as_tensor(value, dtype=torch.float64).to(device).reshape(-1, 1)
        if v.shape[0] not in (1, batch):
            raise ValueError(f"{name}: need a number or {batch} values (one per sample), got {v.shape[0]}")
        if not bool(torch.all(torch.isfinite(v) & (v >= 0))):
            raise ValueError(f"{name}: must be finite and >= 0")
        return v

    def _denoise_block(
        self, x: Tensor, a: Tensor, s: Tensor, mu: Tensor, std: Tensor, log_w: Tensor
    ) -> tuple[Tensor, Tensor]:
        # x (b, D); a, s (b or 1, 1); mu (K, D); std, log_w (K,)
        v = a**2 * std**2 + s**2  # (b, K)
        if self._direct:  # few components: form x - alpha mu_k, the most accurate
            diff = x[:, None, :] - a[:, :, None] * mu[None]  # (b, K, D)
            sq = diff.square().sum(-1)
        else:  # many components: |x - a mu|^2 = |x|^2 - 2 a x.mu + a^2 |mu|^2, no (b, K, D) tensor
            sq = (x.square().sum(1, keepdim=True) - 2.0 * a * (x @ mu.T) + a**2 * mu.square().sum(1)).clamp(min=0)
        r = torch.softmax(log_w - 0.5 * self.dim * torch.log(v) - sq / (2.0 * v), dim=1)  # (b, K)
        c, e = r * std**2 / v, r / v
        if self._direct:
            x0 = r @ mu + a * torch.bmm(c[:, None, :], diff)[:, 0]
            eps = s * torch.bmm(e[:, None, :], diff)[:, 0]
        else:
            # r - a^2 c = s^2 e, so one product with mu serves both: x0 = s^2 e@mu + a sum(c) x
            e_mu = e @ mu
            x0 = s**2 * e_mu + a * c.sum(1, keepdim=True) * x
            eps = s * (e.sum(1, keepdim=True) * x - a * e_mu)
        return x0, eps

    def model(
        self,
        schedule: NoiseSchedule,
        prediction: str = "epsilon",
        dtype: torch.dtype | None = None,
        *,
        time_input: str | None = None,
        differentiable: bool = False,
    ) -> MixtureModel:
        """This mixture's exact denoiser as a network ``model(x, time)`` predicting ``prediction``.

        ``time`` is a scalar or a (B,) tensor in the ``time_input`` convention (default: the schedule's
        ``default_time_input``, what fewstep passes with ``time_input="auto"``): ``"t"`` the schedule time,
        ``"sigma"`` = sigma/alpha = exp(-lambda), ``"index"`` a DiscreteVP's fractional training index.
        The output is cast to ``dtype`` (default: ``x``'s dtype) on ``x``'s device. It is detached from ``x``
        and ``time`` unless ``differentiable``: then autograd follows it into both, as through a trained network.
        """
        check_prediction(prediction)
        time_input = schedule.default_time_input if time_input is None else time_input
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input: choose one of {', '.join(TIME_INPUTS)}, got {time_input!r}")
        if time_input == "index" and not isinstance(schedule, DiscreteVP):
            raise ValueError("time_input: 'index' needs a DiscreteVP schedule")
        return MixtureModel(self, schedule, prediction, time_input, dtype, differentiable)

    def __repr__(self) -> str:
        s_lo, s_hi = float(self.stds.min()), float(self.stds.max())
        stds = f"{s_lo:.4g}" if s_lo == s_hi else f"{s_lo:.4g}..{s_hi:.4g}"
        shape = f", image_shape={self.image_shape}" if self.image_shape else ""
        return f"GaussianMixture(num_components={self.num_components}, dim={self.dim}, stds={stds}{shape})"


@dataclass(frozen=True)
class MixtureModel:
    """A :class:`GaussianMixture`'s exact denoiser acting as a network: ``model(x, time) -> output``."""

    target: GaussianMixture
    schedule: NoiseSchedule
    prediction: str
    time_input: str
    dtype: torch.dtype | None = None
    #: autograd follows the output into ``x`` and ``time`` (else both are detached)
    differentiable: bool = False

    def schedule_time(self, time: Tensor | float) -> Tensor:
        """Schedule time t (float64, CPU) of the model's time input."""
        u = torch.as_tensor(time)
        u = (u if self.differentiable else u.detach()).to(device="cpu", dtype=torch.float64)
        if self.time_input == "sigma":
            return self.schedule.t_of_lambda(-torch.log(u))
        if self.time_input == "index":
            assert isinstance(self.schedule, DiscreteVP)
            return self.schedule.t_of_index(u)
        return u

    def __call__(self, x: Tensor, time: Tensor | float) -> Tensor:
        sched = self.schedule
        t = self.schedule_time(time).reshape(-1)
        if t.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"time: need a scalar or {x.shape[0]} values, got {t.shape[0]}")
        a, s, da, ds = sched.alpha(t), sched.sigma(t), sched.dalpha(t), sched.dsigma(t)
        # (other targets reuse this class with a denoise of the detached signature only)
        x0, eps = (
            self.target.denoise(x, a, s, differentiable=True) if self.differentiable else self.target.denoise(x, a, s)
        )
        shape = (-1,) + (1,) * (x.ndim - 1)
        a, s, da, ds = (v.to(x0.device).reshape(shape) for v in (a, s, da, ds))
        out = output_from(self.prediction, x0, eps, a, s, da, ds)  # type: ignore[arg-type]  # tensors broadcast
        return out.to(dtype=self.dtype or x.dtype)


def _ring(n: int, radius: float) -> np.ndarray:
    angle = 2.0 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def mixture_2d(name: str = "default") -> GaussianMixture:
    """Embedded 2-D test distributions.

    ``"default"``: 8 components on a ring of radius 2 (stds 0.15-0.3, unequal weights) and a heavier
    centre component (std 0.3); ``"ring"``: 8 equal components on a ring of radius 2, std 0.15;
    ``"grid"``: 5 x 5 grid with spacing 1 on [-2, 2]^2, std 0.1; ``"wide"``: 3 wide (std 0.7-1.0),
    well-overlapping components, a smooth density for convergence-order tests; ``"unbalanced"``: 8
    components on a ring of radius 2, std 0.2, weights ``2^-e`` with ``e = 0, 4, 1, 5, 2, 6, 3, 7`` around
    the ring (50% down to 0.4%, each rare mode next to a heavy one), for mode-dropping tests.
    """
    if name == "default":
        means = np.concatenate([_ring(8, 2.0), [[0.0, 0.0]]])
        stds = [0.15, 0.2, 0.25, 0.3, 0.15, 0.2, 0.25, 0.3, 0.3]
        weights = [1.0, 1.5, 1.0, 2.0, 1.0, 1.5, 1.0, 2.0, 4.0]
        return GaussianMixture(means, stds, weights)
    if name == "ring":
        return GaussianMixture(_ring(8, 2.0), 0.15)
    if name == "grid":
        g = np.arange(-2.0, 3.0)
        return GaussianMixture(np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2), 0.1)
    if name == "wide":
        return GaussianMixture([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2]], [0.8, 1.0, 0.7], [0.3, 0.5, 0.2])
    if name == "unbalanced":
        return GaussianMixture(_ring(8, 2.0), 0.2, 0.5 ** np.array([0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]))
    raise ValueError(f"name: unknown 2-D mixture {name!r}; choose one of default, ring, grid, wide, unbalanced")
