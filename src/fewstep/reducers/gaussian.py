"""``GaussianFit``: the Gaussian approximation of the data, its exact denoiser and its exact probability-flow ODE.

Wang & Vastola 2024, "The Hidden Linear Structure in Score-Based Models and its Application": at high noise the
score of a trained model is close to that of the Gaussian ``N(mu, Sigma)`` with the data's mean and covariance.
For that Gaussian, with ``x_t = alpha_t x0 + sigma_t eps`` and ``Sigma = U diag(s) U^T``:

- the denoiser is linear: ``E[x0 | x_t] = mu + U diag(alpha s_k / (alpha^2 s_k + sigma^2)) U^T (x_t - alpha mu)``;
- the marginal is ``N(alpha mu, alpha^2 Sigma + sigma^2 I)``, and the probability-flow ODE keeps each standardised
  eigen-coordinate constant, so its exact solution from ``(alpha_0, sigma_0)`` to ``(alpha_1, sigma_1)`` is, for any
  schedule,

      U^T (x_1 - alpha_1 mu) = diag(sqrt((alpha_1^2 s_k + sigma_1^2) / (alpha_0^2 s_k + sigma_0^2))) U^T (x_0 - alpha_0 mu).

The fit comes from data samples (:meth:`GaussianFit.from_samples`) or from the model itself
(:meth:`GaussianFit.from_model`): the model's ``x0`` predictions at one high-noise time, regressed on their inputs,
give the linear denoiser above, from which ``mu`` and ``Sigma`` are solved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..model import Denoiser
from ..schedules import NoiseSchedule


@dataclass(frozen=True)
class GaussianFit:
    """``N(mean, cov)`` over the flattened data (``mean`` (D,), ``cov`` (D, D), float64), with ``calls`` the network
    calls its estimation spent (0 from data). The eigen-decomposition is computed once."""

    mean: Tensor
    cov: Tensor
    calls: int = 0
    eigenvalues: Tensor = field(init=False, repr=False)
    eigenvectors: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mean = torch.as_tensor(self.mean, dtype=torch.float64).detach().cpu()
        cov = torch.as_tensor(self.cov, dtype=torch.float64).detach().cpu()
        if mean.ndim != 1 or mean.numel() < 1:
            raise ValueError(f"mean: need a (D,) vector, got shape {tuple(mean.shape)}")
        d = mean.numel()
        if cov.shape != (d, d):
            raise ValueError(f"cov: need a ({d}, {d}) matrix for a mean of {d} values, got {tuple(cov.shape)}")
        if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(cov).all())):
            raise ValueError("mean, cov: must be finite")
        values, vectors = torch.linalg.eigh(0.5 * (cov + cov.T))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)
        object.__setattr__(self, "eigenvalues", values.clamp_min(0.0))
        object.__setattr__(self, "eigenvectors", vectors)

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    @classmethod
    def from_samples(cls, data: Tensor) -> GaussianFit:
        """The sample mean and covariance of ``data`` (N, ...) with N >= 2."""
        x = torch.as_tensor(data).detach().to(device="cpu", dtype=torch.float64)
        if x.ndim < 2 or x.shape[0] < 2:
            raise ValueError(f"data: need a batch (N, ...) with N >= 2 samples, got shape {tuple(x.shape)}")
        x = x.reshape(x.shape[0], -1)
        return cls(x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1]))

    @classmethod
    def from_model(
        cls,
        denoiser: Denoiser,
        shape: tuple[int, ...],
        *,
        lam: float = -2.0,
        samples: int | None = None,
        scale: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> GaussianFit:
        """The Gaussian whose linear denoiser best matches the model's at ``lambda = lam`` (one batched network call).

        Inputs ``x ~ N(0, (alpha^2 scale^2 + sigma^2) I)`` (``scale``: the data's scale) of ``shape`` (one sample's
        shape) are denoised by the model; the least-squares fit ``x0_hat ~ c + K x`` gives ``K = alpha Sigma
        (alpha^2 Sigma + sigma^2 I)^-1`` and ``c = (I - alpha K) mu``, hence ``mu = (I - alpha K)^-1 c`` and
        ``Sigma = (sigma^2 / alpha) (I - alpha K)^-1 K``; exact when the data are Gaussian, the data's mean and
        covariance up to ``O(alpha^2 / sigma^2)`` otherwise. ``samples`` (default ``4 (D + 1)``, at least ``D + 2``)
        is the batch of the call.
        """
        if not isinstance(denoiser, Denoiser):
            raise TypeError(f"denoiser: must be a fewstep.Denoiser, got {type(denoiser).__name__}")
        d = 1
        for n in shape:
            d *= int(n)
        n_samples = 4 * (d + 1) if samples is None else int(samples)
        if n_samples < d + 2:
            raise ValueError(f"samples: need at least D + 2 = {d + 2} for the regression, got {n_samples}")
        schedule = denoiser.schedule
        t = float(schedule.t_of_lambda(torch.tensor(float(lam), dtype=torch.float64)))
        t = min(max(t, schedule.t_min), schedule.t_max)
        point = denoiser.point(t, n_samples, torch.device(device), dtype)
        a, s = point.alpha, point.sigma
        x = torch.randn(n_samples, d, generator=generator, dtype=torch.float64) * (a * a * scale * scale + s * s) ** 0.5
        x0 = denoiser(x.reshape(n_samples, *shape).to(device=device, dtype=dtype), point, eps=False)[0]
        y = x0.detach().to(device="cpu", dtype=torch.float64).reshape(n_samples, d)
        design = torch.cat([torch.ones(n_samples, 1, dtype=torch.float64), x], dim=1)
        coef = torch.linalg.lstsq(design, y).solution  # y ~ design @ coef: row 0 the intercept, then K^T
        c, k = coef[0], coef[1:].T
        k = 0.5 * (k + k.T)
        inv = torch.linalg.inv(torch.eye(d, dtype=torch.float64) - a * k)
        cov = (s * s / a) * inv @ k
        return cls(inv @ c, 0.5 * (cov + cov.T), calls=1)

    def _flat(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x[0].numel() != self.dim:
            raise ValueError(f"x: need shape (B, ...) with {self.dim} values per sample, got {tuple(x.shape)}")
        return x.detach().to(device="cpu", dtype=torch.float64).reshape(x.shape[0], self.dim)

    def denoise(self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor]:
        """The Gaussian's exact ``(E[x0 | x_t = x], E[eps | x_t = x])`` (float64, shaped like ``x``, on its device);
        ``alpha``, ``sigma`` numbers or one value per sample."""
        xf = self._flat(x)
        a = torch.as_tensor(alpha, dtype=torch.float64).detach().cpu().reshape(-1, 1)
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().reshape(-1, 1)
        u, ev = self.eigenvectors, self.eigenvalues
        gain = a * ev / (a * a * ev + s * s)
        x0 = self.mean + ((xf - a * self.mean) @ u * gain) @ u.T
        eps = (xf - a * x0) / s
        return x0.reshape(x.shape).to(x.device), eps.reshape(x.shape).to(x.device)

    def denoiser(self, schedule: NoiseSchedule) -> Denoiser:
        """The Gaussian's exact denoiser as a model on ``schedule`` (predicting x0 from the schedule time): a stand-in
        at almost no cost, e.g. the early model of :class:`~fewstep.reducers.TStitch`."""

        def model(x: Tensor, time: Tensor) -> Tensor:
            t = torch.as_tensor(time, dtype=torch.float64)
            return self.denoise(x, schedule.alpha(t), schedule.sigma(t))[0].to(x.dtype)

        return Denoiser(model, schedule, "sample", time_input="t")

    def flow(self, x: Tensor, alpha0: float, sigma0: float, alpha1: float, sigma1: float) -> Tensor:
        """The exact probability-flow ODE image at ``(alpha1, sigma1)`` of the state ``x`` at ``(alpha0, sigma0)``
        (module docstring), float64 shaped like ``x`` on its device."""
        if alpha0 == 0.0 and sigma0 == 0.0:
            raise ValueError("alpha0, sigma0: not both 0")
        xf = self._flat(x)
        u, ev = self.eigenvectors, self.eigenvalues
        ratio = torch.sqrt((alpha1 * alpha1 * ev + sigma1 * sigma1) / (alpha0 * alpha0 * ev + sigma0 * sigma0))
        out = alpha1 * self.mean + ((xf - alpha0 * self.mean) @ u * ratio) @ u.T
        return out.reshape(x.shape).to(x.device)

    def flow_times(self, x: Tensor, schedule: NoiseSchedule, t0: float, t1: float) -> Tensor:
        """:meth:`flow` from schedule time ``t0`` to ``t1``."""
        t = torch.tensor([float(t0), float(t1)], dtype=torch.float64)
        a, s = schedule.alpha(t).tolist(), schedule.sigma(t).tolist()
        return self.flow(x, a[0], s[0], a[1], s[1])
