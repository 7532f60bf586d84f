"""Exact posteriors and reward tilts of Gaussian mixtures: again Gaussian mixtures, in closed form.

For a prior ``p(x) = sum_k w_k N(x; mu_k, S_k)``:

**Linear-Gaussian measurement** ``y = A x + n``, ``n ~ N(0, s^2 I)`` (one observation ``y``). Each component's
posterior is the Kalman update (Kalman 1960; Bishop, *Pattern Recognition and Machine Learning*, eq. 2.116)::

    C_k   = A S_k A^T + s^2 I                 (the covariance of y under component k)
    G_k   = S_k A^T C_k^{-1}                  (the gain)
    mu_k' = mu_k + G_k (y - A mu_k),   S_k' = S_k - G_k A S_k
    w_k'  ∝ w_k N(y; A mu_k, C_k)             (the component's marginal likelihood)

It holds for ``s = 0`` as well (a noiseless measurement) as long as ``A S_k A^T`` is invertible: for an inpainting
mask the posterior is then the Gaussian conditional on the observed coordinates, with zero variance there
(``mu_k'`` equals ``y`` on them).

**Quadratic reward tilt** ``p(x) exp(c r(x)) / Z`` with ``r(x) = -1/2 x^T Q x + b^T x`` (Q symmetric PSD, c > 0).
With ``M = c Q``, ``f_k = c b - M mu_k`` and ``R_k = S_k^{1/2}``::

    S_k'  = R_k (I + R_k M R_k)^{-1} R_k      ( = (S_k^{-1} + M)^{-1} )
    mu_k' = mu_k + S_k' f_k
    w_k'  ∝ w_k exp( c r(mu_k) + 1/2 f_k^T S_k' f_k - 1/2 log det(I + R_k M R_k) )

(the Gaussian integral ``E_{N(mu_k, S_k)}[exp(c r(x))]``, written without ``S_k^{-1}`` so that degenerate components
are allowed). A noisy linear measurement is the tilt with ``Q = A^T A / s^2``, ``b = A^T y / s^2``, ``c = 1``.

The results are :class:`FullCovarianceMixture` instances: full covariances, exact sampling, responsibilities and an
exact denoiser (so a posterior can itself serve as a target).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from ...posterior.measurement import Linear, Mask, Measurement, Nonlinear, Operator
from ...predictions import check_prediction
from ...schedules import DiscreteVP, NoiseSchedule
from .mixture import TIME_INPUTS, GaussianMixture, MixtureModel, _compute_device

__all__ = [
    "FullCovarianceMixture",
    "QuadraticReward",
    "as_full_covariance",
    "measurement_matrix",
    "mixture_posterior",
    "reward_tilt",
]

F64 = torch.float64
CHUNK_ELEMENTS = 20_000_000  # largest batch x components x dim block held at once in the denoiser


def _sym(m: Tensor) -> Tensor:
    return 0.5 * (m + m.transpose(-1, -2))


class FullCovarianceMixture:
    """``x ~ sum_k w_k N(mu_k, S_k)`` with full (possibly singular) covariances ``S_k``.

    ``means`` (K, D), ``covariances`` (K, D, D) symmetric PSD, ``weights`` (K,) (normalised; zeros allowed) or
    ``log_weights`` (K,) (normalised in log space, for weights that would underflow). Every computation goes
    through the eigendecomposition ``S_k = U_k diag(l_k) U_k^T`` (eigenvalues clamped at 0). ``image_shape``
    as in :class:`~fewstep.bench.targets.GaussianMixture`.
    """

    def __init__(
        self,
        means: Tensor,
        covariances: Tensor,
        weights: Tensor | None = None,
        *,
        log_weights: Tensor | None = None,
        image_shape: tuple[int, ...] | None = None,
    ):
        mu = torch.as_tensor(means).detach().to(device="cpu", dtype=F64).clone()
        if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
            raise ValueError(f"means: need a (K, D) array with K, D >= 1, got shape {tuple(mu.shape)}")
        k, d = mu.shape
        cov = torch.as_tensor(covariances).detach().to(device="cpu", dtype=F64)
        if cov.shape != (k, d, d):
            raise ValueError(f"covariances: need shape ({k}, {d}, {d}), got {tuple(cov.shape)}")
        if (weights is None) == (log_weights is None):
            raise ValueError("weights, log_weights: give exactly one of them")
        if log_weights is None:
            w = torch.as_tensor(weights).detach().to(device="cpu", dtype=F64).reshape(-1)
            if w.shape != (k,) or not bool(torch.all(w >= 0)) or not float(w.sum()) > 0:
                raise ValueError(f"weights: need {k} non-negative values, not all 0, got shape {tuple(w.shape)}")
            log_w = torch.log(w)
        else:
            log_w = torch.as_tensor(log_weights).detach().to(device="cpu", dtype=F64).reshape(-1)
            if log_w.shape != (k,) or bool(torch.isnan(log_w).any()) or not bool(torch.isfinite(log_w).any()):
                raise ValueError(f"log_weights: need {k} values, at least one finite, got shape {tuple(log_w.shape)}")
        if not (bool(torch.isfinite(mu).all()) and bool(torch.isfinite(cov).all())):
            raise ValueError("means, covariances: must be finite")
        self.means = mu
        self.covariances = _sym(cov)
        self.log_weights = log_w - torch.logsumexp(log_w, 0)
        self.weights = torch.exp(self.log_weights)
        vals, vecs = torch.linalg.eigh(self.covariances)
        scale = vals.abs().amax(-1, keepdim=True).clamp(min=1.0)
        if bool(torch.any(vals < -1e-9 * scale)):
            raise ValueError("covariances: must be positive semi-definite")
        self.eigenvalues, self.eigenvectors = vals.clamp(min=0.0), vecs
        self.image_shape = image_shape
        off = self.covariances - torch.diag_embed(torch.diagonal(self.covariances, dim1=-2, dim2=-1))
        self._diagonal = not bool(torch.any(off != 0))
        self._cache: dict[torch.device, tuple[Tensor, ...]] = {}

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    def mean(self) -> Tensor:
        """``E[x] = sum_k w_k mu_k``, shape (D,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """``Cov[x] = sum_k w_k (S_k + mu_k mu_k^T) - m m^T``, shape (D, D)."""
        m = self.mean()
        within = torch.einsum("k,kij->ij", self.weights, self.covariances)
        return within + (self.means.T * self.weights) @ self.means - torch.outer(m, m)

    def sqrt_covariances(self) -> Tensor:
        """The symmetric square roots ``S_k^{1/2}``, shape (K, D, D)."""
        u, lam = self.eigenvectors, self.eigenvalues
        return (u * lam.sqrt()[:, None, :]) @ u.transpose(-1, -2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples, shape (n, D), float64 (reproducible with a CPU ``torch.Generator``)."""
        if not (isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0):
            raise ValueError(f"n: must be a non-negative integer, got {n!r}")
        if n == 0:
            return torch.empty(0, self.dim, dtype=F64)
        k = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        z = torch.randn(int(n), self.dim, generator=generator, dtype=F64)
        return self.means[k] + torch.einsum("nij,nj->ni", self.eigenvectors[k], self.eigenvalues[k].sqrt() * z)

    def responsibilities(self, x: Tensor) -> Tensor:
        """``p(k | x)`` for samples ``x`` (N, D) or (N, *shape), shape (N, K).

        Directions of zero variance of a component are left out of its density (the density on its support,
        with the pseudo-determinant): for a noiseless inpainting posterior, whose components all have zero
        variance on the observed coordinates, these are the responsibilities of the unobserved coordinates.
        """
        x = torch.as_tensor(x).detach().to(device="cpu", dtype=F64)
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x: need shape (N, D) or (N, *shape) with D = {self.dim}, got {tuple(x.shape)}")
        x = x.reshape(x.shape[0], self.dim)
        lam = self.eigenvalues
        tol = 1e-12 * lam.amax(-1, keepdim=True).clamp(min=1e-300)
        live = lam > tol
        inv = torch.where(live, 1.0 / torch.where(live, lam, torch.ones_like(lam)), torch.zeros_like(lam))
        log_det = torch.where(live, torch.log(torch.where(live, lam, torch.ones_like(lam))), torch.zeros_like(lam))
        mu_rot = torch.einsum("kd,kde->ke", self.means, self.eigenvectors)
        out = torch.empty(x.shape[0], self.num_components, dtype=F64)
        rows = max(1, CHUNK_ELEMENTS // (self.num_components * self.dim))
        for i in range(0, x.shape[0], rows):
            z = torch.einsum("bd,kde->bke", x[i : i + rows], self.eigenvectors) - mu_rot
            logp = self.log_weights - 0.5 * log_det.sum(-1) - 0.5 * (z.square() * inv).sum(-1)
            logp = logp - 0.5 * live.sum(-1) * math.log(2 * math.pi)
            out[i : i + rows] = torch.softmax(logp, dim=1)
        return out

    def _params(self, device: torch.device) -> tuple[Tensor, ...]:
        if device not in self._cache:
            u = self.eigenvectors.to(device)
            self._cache[device] = (
                u,
                self.eigenvalues.to(device),
                torch.einsum("kd,kde->ke", self.means, self.eigenvectors).to(device),
                self.log_weights.to(device),
            )
        return self._cache[device]

    @property
    def diagonal(self) -> bool:
        """Whether every covariance is diagonal (then the denoiser needs no rotation: a few matrix products)."""
        return self._diagonal

    def denoise(self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor]:
        """The exact ``(E[x0 | x_t = x], E[eps | x_t = x])`` for ``x_t = alpha x0 + sigma eps``.

        In the eigenbasis of component k, with ``z = U_k^T (x - alpha mu_k)`` and ``v = alpha^2 l_k + sigma^2``::

            r_k(x)        = softmax_k( log w_k - 1/2 sum log v - 1/2 sum z^2 / v )
            E[x0  | x, k] = mu_k + U_k (alpha l_k / v * z),   E[eps | x, k] = U_k (sigma / v * z)

        Shapes and levels as :meth:`GaussianMixture.denoise`; ``sigma`` must be > 0 where a component is
        degenerate (``v`` would vanish). Differentiable in ``x`` (an input that requires grad keeps its graph), so
        guidance through the network works on it.
        """
        x = torch.as_tensor(x)
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x: need shape (B, D) or (B, *shape) with D = {self.dim}, got {tuple(x.shape)}")
        dev = _compute_device(x.device)
        b = x.shape[0]
        xf = x.to(device=dev, dtype=F64).reshape(b, self.dim)
        a = torch.as_tensor(alpha, dtype=F64).to(dev).reshape(-1, 1, 1)
        s = torch.as_tensor(sigma, dtype=F64).to(dev).reshape(-1, 1, 1)
        for name, v in (("alpha", a), ("sigma", s)):
            if v.shape[0] not in (1, b):
                raise ValueError(f"{name}: need a number or {b} values (one per sample), got {v.shape[0]}")
            if not bool(torch.all(torch.isfinite(v) & (v >= 0))):
                raise ValueError(f"{name}: must be finite and >= 0")
        if bool(torch.any((a == 0) & (s == 0))):
            raise ValueError("alpha, sigma: not both 0 (x_t would carry no information and no noise)")
        if bool(torch.any(s == 0)) and bool(torch.any(self.eigenvalues == 0)):
            raise ValueError("sigma: must be > 0 for a mixture with degenerate (zero-variance) directions")
        if a.shape[0] > 1 and bool(torch.all(a == a[0])) and bool(torch.all(s == s[0])):
            a, s = a[:1], s[:1]  # one level for the whole batch (a sampler's call): the fast path applies
        if self.diagonal and a.shape[0] == 1 and s.shape[0] == 1:
            x0, eps = self._denoise_diagonal(xf, float(a), float(s))
        else:
            u, lam, mu_rot, log_w = self._params(dev)
            rows = max(1, CHUNK_ELEMENTS // (self.num_components * self.dim))
            parts = []
            for i in range(0, b, rows):
                j = slice(i, i + rows)
                aj = a if a.shape[0] == 1 else a[j]
                sj = s if s.shape[0] == 1 else s[j]
                v = aj**2 * lam + sj**2  # (b, K, D)
                z = torch.einsum("bd,kde->bke", xf[j], u) - aj * mu_rot
                r = torch.softmax(log_w - 0.5 * torch.log(v).sum(-1) - 0.5 * (z.square() / v).sum(-1), dim=1)
                x0_rot = r[..., None] * (aj * lam / v * z + mu_rot)  # (b, K, D) in each component's basis
                eps_rot = r[..., None] * (sj / v * z)
                parts.append((torch.einsum("bke,kde->bd", x0_rot, u), torch.einsum("bke,kde->bd", eps_rot, u)))
            x0, eps = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return x0.reshape(x.shape).to(x.device), eps.reshape(x.shape).to(x.device)

    def _denoise_diagonal(self, x: Tensor, a: float, s: float) -> tuple[Tensor, Tensor]:
        """:meth:`denoise` for diagonal covariances ``diag(l_k)`` at one level: every sum over the coordinates is a
        product with a (D, K) matrix, so no (B, K, D) tensor is formed."""
        dev = x.device
        lam = torch.diagonal(self.covariances, dim1=-2, dim2=-1).to(dev)  # (K, D)
        mu, log_w = self.means.to(dev), self.log_weights.to(dev)
        inv = 1.0 / (a * a * lam + s * s)  # (K, D)
        sq = x.square() @ inv.T - 2.0 * a * x @ (mu * inv).T + a * a * (mu.square() * inv).sum(1)
        r = torch.softmax(log_w + 0.5 * torch.log(inv).sum(1) - 0.5 * sq, dim=1)  # (B, K)
        gain = lam * inv  # alpha l / v, without alpha
        x0 = r @ mu + a * (x * (r @ gain) - a * r @ (gain * mu))
        eps = s * (x * (r @ inv) - a * r @ (inv * mu))
        return x0, eps

    def model(
        self,
        schedule: NoiseSchedule,
        prediction: str = "epsilon",
        dtype: torch.dtype | None = None,
        *,
        time_input: str | None = None,
    ) -> MixtureModel:
        """This mixture's exact denoiser as a network ``model(x, time)``, as :meth:`GaussianMixture.model`."""
        check_prediction(prediction)
        time_input = schedule.default_time_input if time_input is None else time_input
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input: choose one of {', '.join(TIME_INPUTS)}, got {time_input!r}")
        if time_input == "index" and not isinstance(schedule, DiscreteVP):
            raise ValueError("time_input: 'index' needs a DiscreteVP schedule")
        # MixtureModel only calls ``target.denoise``, which this class provides with the same signature
        return MixtureModel(cast(GaussianMixture, self), schedule, prediction, time_input, dtype)

    def __repr__(self) -> str:
        return f"FullCovarianceMixture(num_components={self.num_components}, dim={self.dim})"


def as_full_covariance(mixture: GaussianMixture | FullCovarianceMixture) -> FullCovarianceMixture:
    """The same mixture with explicit covariances ``s_k^2 I`` (a :class:`FullCovarianceMixture` is returned as is)."""
    if isinstance(mixture, FullCovarianceMixture):
        return mixture
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture: need a GaussianMixture or FullCovarianceMixture, got {type(mixture).__name__}")
    eye = torch.eye(mixture.dim, dtype=F64)
    cov = mixture.stds[:, None, None] ** 2 * eye
    return FullCovarianceMixture(mixture.means, cov, mixture.weights, image_shape=mixture.image_shape)


def measurement_matrix(measurement: Measurement, dim: int, shape: tuple[int, ...] | None = None) -> Linear:
    """A linear measurement as a :class:`Linear` one: its matrix ``A`` (m, D) and the observation as one row (1, m).

    ``Linear``: as is; ``Mask``: the rows of the identity at the observed entries (and ``y`` at those entries);
    ``Operator``: ``A`` materialised by applying ``forward`` to the D basis vectors (shaped ``shape``, the sample's
    shape, when given), so only for small D. ``y`` must hold one observation (a first dimension of 1).
    """
    if isinstance(measurement, Nonlinear):
        raise TypeError("measurement: a Nonlinear measurement has no Gaussian-mixture posterior; use a linear one")
    if not isinstance(measurement, Measurement):
        raise TypeError(f"measurement: need a Linear, Mask or Operator, got {type(measurement).__name__}")
    y = measurement.y.detach().to(device="cpu", dtype=F64)
    if y.ndim < 1 or y.shape[0] != 1:
        raise ValueError(
            f"measurement: the exact posterior is for one observation; y has shape {tuple(y.shape)}, "
            "pass one row (e.g. y[:1])"
        )
    y = y.reshape(1, -1)
    if isinstance(measurement, Linear):
        a = measurement.A.detach().to(device="cpu", dtype=F64)
        if a.shape[1] != dim:
            raise ValueError(f"A: need {dim} columns (the mixture's dimension), got shape {tuple(a.shape)}")
    elif isinstance(measurement, Mask):
        mask = measurement.mask.detach().to("cpu").reshape(-1)
        if mask.numel() != dim or y.shape[1] != dim:
            raise ValueError(f"mask, y: need {dim} entries per sample (the mixture's dimension), got {mask.numel()}")
        observed = torch.nonzero(mask != 0).reshape(-1)
        a, y = torch.eye(dim, dtype=F64)[observed], y[:, observed]
    elif isinstance(measurement, Operator):
        basis = torch.eye(dim, dtype=F64).reshape(dim, *(shape or (dim,)))
        a = measurement.forward(basis).detach().to(device="cpu", dtype=F64).reshape(dim, -1).T
    else:
        raise TypeError(f"measurement: need a Linear, Mask or Operator, got {type(measurement).__name__}")
    if a.shape[0] != y.shape[1]:
        raise ValueError(f"y: need {a.shape[0]} observed values (rows of A), got {y.shape[1]}")
    return Linear(y=y, noise_std=measurement.noise_std, A=a)


def mixture_posterior(
    mixture: GaussianMixture | FullCovarianceMixture, measurement: Measurement
) -> FullCovarianceMixture:
    """The exact posterior ``p(x | y)`` of a mixture prior under a linear-Gaussian measurement (module docstring).

    ``measurement``: :class:`~fewstep.posterior.Linear`, :class:`~fewstep.posterior.Mask` or
    :class:`~fewstep.posterior.Operator` (materialised: small D), noisy or noiseless, with one observation row.
    """
    prior = as_full_covariance(mixture)
    lin = measurement_matrix(measurement, prior.dim, prior.image_shape)
    a, y, s2 = lin.A, lin.y[0], lin.noise_std**2
    m = a.shape[0]
    cov = prior.covariances
    a_cov = a @ cov  # (K, m, D): A S_k
    c = _sym(a_cov @ a.T) + s2 * torch.eye(m, dtype=F64)  # (K, m, m)
    chol, info = torch.linalg.cholesky_ex(c)
    if bool(torch.any(info != 0)):
        raise ValueError(
            "measurement: A S_k A^T + noise_std^2 I is singular for some component (a noiseless measurement of "
            "directions the prior does not vary in); give noise_std > 0"
        )
    resid = y - prior.means @ a.T  # (K, m)
    white = torch.linalg.solve_triangular(chol, resid[..., None], upper=False)[..., 0]  # L^-1 r
    gain_t = torch.cholesky_solve(a_cov, chol)  # C^-1 A S_k = G_k^T, (K, m, D)
    means = prior.means + torch.einsum("kmd,km->kd", gain_t, resid)
    covs = _sym(cov - a_cov.transpose(-1, -2) @ gain_t)
    log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    log_lik = -0.5 * (white.square().sum(-1) + log_det)
    return FullCovarianceMixture(means, covs, log_weights=prior.log_weights + log_lik, image_shape=prior.image_shape)


def reward_tilt(
    mixture: GaussianMixture | FullCovarianceMixture, Q: Tensor, b: Tensor, scale: float = 1.0
) -> FullCovarianceMixture:
    """The exact tilt ``p(x) exp(scale r(x)) / Z`` for ``r(x) = -1/2 x^T Q x + b^T x`` (module docstring).

    ``Q`` (D, D) symmetric positive semi-definite, ``b`` (D,), ``scale`` > 0 (the inverse temperature).
    """
    prior = as_full_covariance(mixture)
    d = prior.dim
    q = torch.as_tensor(Q).detach().to(device="cpu", dtype=F64)
    bb = torch.as_tensor(b).detach().to(device="cpu", dtype=F64).reshape(-1)
    if q.shape != (d, d):
        raise ValueError(f"Q: need shape ({d}, {d}), got {tuple(q.shape)}")
    if bb.shape != (d,):
        raise ValueError(f"b: need {d} values, got shape {tuple(bb.shape)}")
    if not (isinstance(scale, int | float) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: must be a positive number, got {scale!r}")
    if not torch.allclose(q, q.T, atol=1e-10 * max(1.0, float(q.abs().max()))):
        raise ValueError("Q: must be symmetric")
    if float(torch.linalg.eigvalsh(_sym(q)).min()) < -1e-9 * max(1.0, float(q.abs().max())):
        raise ValueError("Q: must be positive semi-definite (the tilt of a Gaussian by a convex quadratic)")
    mq, g = scale * _sym(q), scale * bb
    root = prior.sqrt_covariances()  # (K, D, D)
    inner = _sym(torch.eye(d, dtype=F64) + root @ mq @ root)
    chol = torch.linalg.cholesky(inner)
    covs = _sym(root @ torch.cholesky_solve(root, chol))  # R (I + R M R)^-1 R
    f = g - prior.means @ mq  # (K, D)
    shift = torch.einsum("kij,kj->ki", covs, f)
    reward_at_mean = -0.5 * torch.einsum("ki,ij,kj->k", prior.means, mq, prior.means) + prior.means @ g
    log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    log_z = reward_at_mean + 0.5 * (f * shift).sum(-1) - 0.5 * log_det
    return FullCovarianceMixture(
        prior.means + shift, covs, log_weights=prior.log_weights + log_z, image_shape=prior.image_shape
    )


@dataclass(frozen=True)
class QuadraticReward:
    """``r(x) = -1/2 x^T Q x + b^T x`` as a callable ``r(x) -> (N,)`` on samples (N, D) or (N, *shape), with the
    inverse temperature ``scale`` of its tilt: :meth:`tilt` is ``reward_tilt(mixture, Q, b, scale)``."""

    Q: Tensor
    b: Tensor
    scale: float = 1.0

    def __call__(self, x: Tensor) -> Tensor:
        xf = x.flatten(1)
        q, b = self.Q.to(xf), self.b.to(xf)
        return -0.5 * ((xf @ q) * xf).sum(1) + xf @ b

    def tilt(self, mixture: GaussianMixture | FullCovarianceMixture) -> FullCovarianceMixture:
        """The exact tilt ``p(x) exp(scale r(x)) / Z`` of ``mixture``."""
        return reward_tilt(mixture, self.Q, self.b, self.scale)
