"""Unnormalised densities with known answers, for the Langevin samplers (``fewstep.langevin``) and their peers.

Each target gives its log-density on a batch of chains, ``log_prob(x: [chains, d]) -> [chains]`` (up to a constant,
differentiable by autograd, in ``x``'s dtype and on its device), the same density as a JAX function of one point
(:meth:`DensityTarget.jax_log_prob`, for blackjax; JAX is imported only there), its exact mean and per-coordinate
variance, and exact samples where they can be drawn:

- ``gaussian``: ``N(m, Q diag(lam) Q^T)``, variances ``lam`` log-spaced over ``[1 / condition, 1]`` and a random
  rotation ``Q`` (or none: ``rotate=False``), up to 1,000 dimensions (:func:`ill_conditioned_gaussian`);
- ``mixture``: a :class:`~fewstep.bench.targets.GaussianMixture`'s density
  ``log sum_k w_k N(x; mu_k, s_k^2 I)`` (:class:`MixtureDensity`);
- ``funnel``: Neal's funnel (Neal 2003, "Slice sampling", section 8): ``v ~ N(0, 3^2)``, ``x_i | v ~ N(0, e^v)``;
- ``banana``: the twisted Gaussian of Haario, Saksman and Tamminen (1999): ``y ~ N(0, diag(a^2, 1, ..., 1))``,
  ``x_2 = y_2 + b (y_1^2 - a^2)``, so ``E x = 0``, ``Var x_1 = a^2``, ``Var x_2 = 1 + 2 a^4 b^2``;
- ``logistic_regression``: Bayesian logistic regression on scikit-learn's breast-cancer data (569 x 30,
  standardised, with an intercept) with a ``N(0, prior_scale^2 I)`` prior; its moments come from a stored
  reference run (:func:`load_reference`; ``benchmarks/langevin_reference.py`` writes it).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .mixture import GaussianMixture

__all__ = [
    "DENSITY_TARGETS",
    "Banana",
    "DensityTarget",
    "GaussianDensity",
    "LogisticRegression",
    "MixtureDensity",
    "Moments",
    "NealsFunnel",
    "density_target",
    "ill_conditioned_gaussian",
    "load_reference",
]

LOG_2PI = math.log(2.0 * math.pi)


#: The breast-cancer regression's reference moments (8 x 20,000 draws of Laplace-whitened HMC, shipped with the
#: package; ``python benchmarks/langevin_reference.py`` writes them again).
BREAST_CANCER_REFERENCE = Path(__file__).parents[1] / "data" / "langevin_logistic_reference.json"


@dataclass(frozen=True)
class Moments:
    """Reference moments of a target: ``mean`` and per-coordinate ``variance`` (float64, shape (d,)), with the Monte
    Carlo standard error of the mean where they were estimated (``mean_error``; None where exact)."""

    mean: Tensor
    variance: Tensor
    mean_error: Tensor | None = None


def _float64(array: np.ndarray | Tensor) -> Tensor:
    return torch.as_tensor(np.asarray(array), dtype=torch.float64)


def _check_points(x: Tensor, dim: int, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: target {name!r} needs a tensor of shape [chains, {dim}], got {shape}")


class DensityTarget(ABC):
    """An unnormalised density with known answers (module docstring). Subclasses give :meth:`_log_prob` in torch
    and in JAX (:meth:`_jax_log_prob`), :meth:`moments`, and :meth:`sample` where exact samples exist."""

    name: str = ""
    dim: int = 0

    def __init__(self) -> None:
        self._device_params: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}

    # ----------------------------------------------------------------------------------------- what subclasses give
    @abstractmethod
    def _params(self) -> dict[str, Tensor]:
        """The float64 CPU tensors :meth:`_log_prob` reads (moved once per device and dtype)."""

    @abstractmethod
    def _log_prob(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        """log-density (up to a constant) of ``x`` [chains, d] with parameters ``p`` in ``x``'s dtype."""

    @abstractmethod
    def _jax_log_prob(self, jnp: Any, p: dict[str, Any]) -> Callable[[Any], Any]:
        """The same density for one point (d,) -> scalar, with ``jnp`` = ``jax.numpy`` and ``p`` as jnp arrays."""

    @abstractmethod
    def moments(self) -> Moments | None:
        """The exact (or reference) mean and variance; None when unknown."""

    @property
    def has_exact_samples(self) -> bool:
        return False

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples, (n, d) float64 (only where :attr:`has_exact_samples`)."""
        raise ValueError(f"target {self.name!r} has no exact sampler; compare its moments instead")

    # ------------------------------------------------------------------------------------------------- public API
    def log_prob(self, x: Tensor) -> Tensor:
        """The log-density (up to a constant) at ``x`` [chains, d]: [chains], in ``x``'s dtype and device."""
        _check_points(x, self.dim, self.name)
        key = (x.device, x.dtype)
        if key not in self._device_params:
            self._device_params[key] = {k: v.to(device=x.device, dtype=x.dtype) for k, v in self._params().items()}
        return self._log_prob(x, self._device_params[key])

    def jax_log_prob(self, dtype: Any = None) -> Callable[[Any], Any]:
        """This density as a JAX function of one point, ``logdensity(x: (d,)) -> scalar`` (what blackjax takes);
        ``dtype`` (default float64 when ``jax_enable_x64`` is on, else float32) for the parameters."""
        import jax.numpy as jnp

        dtype = dtype or (jnp.float64 if _x64() else jnp.float32)
        params = {k: jnp.asarray(v.numpy(), dtype=dtype) for k, v in self._params().items()}
        return self._jax_log_prob(jnp, params)

    def target(self) -> Any:
        """This density as a ``fewstep.langevin.Target`` (score by autograd)."""
        from ...langevin import Target

        return Target.from_log_prob(self.log_prob, name=self.name)

    def initial(self, chains: int, generator: torch.Generator | None = None) -> Tensor:
        """Starting points shared by every sampler of a comparison: ``N(0, I)`` draws, (chains, d) float64."""
        return torch.randn(chains, self.dim, generator=generator, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def _x64() -> bool:
    import jax

    return bool(jax.config.read("jax_enable_x64"))


class GaussianDensity(DensityTarget):
    """``N(mean, Q diag(variances) Q^T)``: ``rotation`` Q orthogonal (d, d), or None for a diagonal covariance.

    ``log p(x) = -1/2 |diag(variances)^{-1/2} Q^T (x - mean)|^2``; exact samples ``mean + Q (sqrt(variances) z)``.
    """

    def __init__(
        self,
        mean: Tensor | np.ndarray,
        variances: Tensor | np.ndarray,
        rotation: Tensor | np.ndarray | None = None,
        name: str = "gaussian",
    ):
        super().__init__()
        self.mean, self.variances = _float64(mean), _float64(variances)
        self.rotation = None if rotation is None else _float64(rotation)
        self.dim, self.name = int(self.mean.shape[0]), name
        if self.variances.shape != (self.dim,) or not bool((self.variances > 0).all()):
            raise ValueError(f"variances: need {self.dim} positive values, got shape {tuple(self.variances.shape)}")
        if self.rotation is not None and self.rotation.shape != (self.dim, self.dim):
            raise ValueError(f"rotation: need a ({self.dim}, {self.dim}) orthogonal matrix")

    def _params(self) -> dict[str, Tensor]:
        p = {"mean": self.mean, "inv_std": self.variances.rsqrt()}
        if self.rotation is not None:
            p["rotation"] = self.rotation
        return p

    def _log_prob(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        r = x - p["mean"]
        if "rotation" in p:
            r = r @ p["rotation"]
        return -0.5 * (r * p["inv_std"]).square().sum(-1)

    def _jax_log_prob(self, jnp: Any, p: dict[str, Any]) -> Callable[[Any], Any]:
        def logdensity(x: Any) -> Any:
            r = x - p["mean"]
            if "rotation" in p:
                r = r @ p["rotation"]
            return -0.5 * jnp.sum(jnp.square(r * p["inv_std"]))

        return logdensity

    def covariance(self) -> Tensor:
        """The exact covariance, (d, d)."""
        if self.rotation is None:
            return torch.diag(self.variances)
        return (self.rotation * self.variances) @ self.rotation.T

    def moments(self) -> Moments:
        return Moments(self.mean.clone(), torch.diagonal(self.covariance()).clone())

    @property
    def has_exact_samples(self) -> bool:
        return True

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64) * self.variances.sqrt()
        return self.mean + (z if self.rotation is None else z @ self.rotation.T)


def ill_conditioned_gaussian(
    dim: int = 100, condition: float = 1000.0, rotate: bool = True, seed: int = 0
) -> GaussianDensity:
    """A zero-mean Gaussian whose variances are log-spaced over ``[1 / condition, 1]`` (so the covariance's condition
    number is ``condition``), rotated by a Haar-random orthogonal matrix made from ``seed`` (``rotate=False``: axis
    aligned, where a diagonal mass matrix removes the ill-conditioning)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 10_000:
        raise ValueError(f"dim: need an integer in [1, 10000], got {dim!r}")
    if not (isinstance(condition, int | float) and condition >= 1.0):
        raise ValueError(f"condition: need a number >= 1, got {condition!r}")
    variances = np.logspace(-math.log10(condition), 0.0, dim) if dim > 1 else np.ones(1)
    rotation = None
    if rotate:
        a = np.random.default_rng(seed).standard_normal((dim, dim))
        q, r = np.linalg.qr(a)
        rotation = q * np.sign(np.diag(r))  # Haar-distributed (Mezzadri 2007)
    name = f"gaussian_{dim}d_cond{condition:g}" + ("" if rotate else "_diag")
    return GaussianDensity(np.zeros(dim), variances, rotation, name=name)


class MixtureDensity(DensityTarget):
    """The density of a :class:`GaussianMixture`, ``log p(x) = logsumexp_k (log w_k - D/2 log(2 pi s_k^2)
    - |x - mu_k|^2 / (2 s_k^2))``: normalised, with exact samples and moments from the mixture."""

    def __init__(self, mixture: GaussianMixture, name: str = "mixture"):
        super().__init__()
        self.mixture, self.dim, self.name = mixture, mixture.dim, name

    def _params(self) -> dict[str, Tensor]:
        m = self.mixture
        log_norm = torch.log(m.weights) - 0.5 * m.dim * (LOG_2PI + 2.0 * torch.log(m.stds))
        return {"means": m.means, "inv_var": m.stds**-2, "log_norm": log_norm}

    def _log_prob(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        sq = (x[:, None, :] - p["means"]).square().sum(-1)  # (chains, K)
        return torch.logsumexp(p["log_norm"] - 0.5 * p["inv_var"] * sq, dim=-1)

    def _jax_log_prob(self, jnp: Any, p: dict[str, Any]) -> Callable[[Any], Any]:
        from jax.scipy.special import logsumexp

        def logdensity(x: Any) -> Any:
            sq = jnp.sum(jnp.square(x - p["means"]), axis=-1)
            return logsumexp(p["log_norm"] - 0.5 * p["inv_var"] * sq)

        return logdensity

    def moments(self) -> Moments:
        return Moments(self.mixture.mean(), torch.diagonal(self.mixture.covariance()).clone())

    @property
    def has_exact_samples(self) -> bool:
        return True

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.mixture.sample(n, generator)


class NealsFunnel(DensityTarget):
    """Neal's funnel in ``dim`` dimensions: ``v = x_1 ~ N(0, scale^2)``, ``x_i | v ~ N(0, e^v)`` (i >= 2):

    ``log p(x) = -v^2 / (2 scale^2) - (dim - 1) v / 2 - e^{-v} sum_{i >= 2} x_i^2 / 2``,

    ``Var v = scale^2``, ``Var x_i = E e^v = e^{scale^2 / 2}`` (Neal 2003)."""

    def __init__(self, dim: int = 10, scale: float = 3.0):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim: need an integer >= 2 (v and at least one x), got {dim!r}")
        self.dim, self.scale, self.name = dim, float(scale), f"funnel_{dim}d"

    def _params(self) -> dict[str, Tensor]:
        return {}

    def _log_prob(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        v, rest = x[:, 0], x[:, 1:]
        return (
            -0.5 * v.square() / self.scale**2 - 0.5 * (self.dim - 1) * v - 0.5 * torch.exp(-v) * rest.square().sum(-1)
        )

    def _jax_log_prob(self, jnp: Any, p: dict[str, Any]) -> Callable[[Any], Any]:
        scale, dim = self.scale, self.dim

        def logdensity(x: Any) -> Any:
            v = x[0]
            return -0.5 * v**2 / scale**2 - 0.5 * (dim - 1) * v - 0.5 * jnp.exp(-v) * jnp.sum(jnp.square(x[1:]))

        return logdensity

    def moments(self) -> Moments:
        var = torch.full((self.dim,), math.exp(0.5 * self.scale**2), dtype=torch.float64)
        var[0] = self.scale**2
        return Moments(torch.zeros(self.dim, dtype=torch.float64), var)

    @property
    def has_exact_samples(self) -> bool:
        return True

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        v = self.scale * z[:, :1]
        return torch.cat([v, torch.exp(0.5 * v) * z[:, 1:]], dim=1)


class Banana(DensityTarget):
    """The twisted Gaussian (Haario et al. 1999) in ``dim`` >= 2 dimensions:

    ``log p(x) = -x_1^2 / (2 a^2) - (x_2 - b x_1^2 + a^2 b)^2 / 2 - sum_{i >= 3} x_i^2 / 2``,

    exact samples ``x_1 = a z_1``, ``x_2 = z_2 + b (x_1^2 - a^2)``; ``E x = 0``, ``Var x_1 = a^2``,
    ``Var x_2 = 1 + 2 a^4 b^2``, the others 1."""

    def __init__(self, dim: int = 2, a: float = 10.0, b: float = 0.03):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim: need an integer >= 2, got {dim!r}")
        self.dim, self.a, self.b, self.name = dim, float(a), float(b), f"banana_{dim}d"

    def _params(self) -> dict[str, Tensor]:
        return {}

    def _log_prob(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        a, b = self.a, self.b
        x1, x2 = x[:, 0], x[:, 1]
        out = -0.5 * x1.square() / a**2 - 0.5 * (x2 - b * x1.square() + a**2 * b).square()
        return out - 0.5 * x[:, 2:].square().sum(-1)

    def _jax_log_prob(self, jnp: Any, p: dict[str, Any]) -> Callable[[Any], Any]:
        a, b = self.a, self.b

        def logdensity(x: Any) -> Any:
            out = -0.5 * x[0] ** 2 / a**2 - 0.5 * (x[1] - b * x[0] ** 2 + a**2 * b) ** 2
            return out - 0.5 * jnp.sum(jnp.square(x[2:]))

        return logdensity

    def moments(self) -> Moments:
        var = torch.ones(self.dim, dtype=torch.float64)
        var[0], var[1] = self.a**2, 1.0 + 2.0 * self.a**4 * self.b**2
        return Moments(torch.zeros(self.dim, dtype=torch.float64), var)

    @property
    def has_exact_samples(self) -> bool:
        return True

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x1 = self.a * z[:, 0]
        return torch.cat([x1[:, None], (z[:, 1] + self.b * (x1.square() - self.a**2))[:, None], z[:, 2:]], dim=1)


class LogisticRegression(DensityTarget):
    """Bayesian logistic regression: ``log p(beta) = sum_i (y_i z_i - softplus(z_i)) - |beta|^2 / (2 prior_scale^2)``
    with ``z = X beta``; ``X`` (n, p) the standardised features with a leading column of ones, ``y`` in {0, 1}.

    The moments are those of ``reference`` (:func:`load_reference`), or unknown (None); :meth:`breast_cancer` at the
    default prior carries the stored reference (:data:`BREAST_CANCER_REFERENCE`)."""

    def __init__(
        self, features: np.ndarray, labels: np.ndarray, prior_scale: float = 1.0, name: str = "logistic_regression"
    ):
        super().__init__()
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if x.ndim != 2 or y.shape != (x.shape[0],) or not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("features, labels: need an (n, p) array and n labels in {0, 1}")
        if not prior_scale > 0:
            raise ValueError(f"prior_scale: need a positive number, got {prior_scale!r}")
        self.features, self.labels, self.prior_scale = _float64(x), _float64(y), float(prior_scale)
        self.dim, self.name = int(x.shape[1]), name
        self.reference: Moments | None = None

    @classmethod
    def breast_cancer(cls, prior_scale: float = 1.0) -> LogisticRegression:
        """scikit-learn's breast-cancer data (569 tumours, 30 features, standardised), an intercept: d = 31."""
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        x = (x - x.mean(axis=0)) / x.std(axis=0)
        target = cls(np.hstack([np.ones((x.shape[0], 1)), x]), y, prior_scale, name="logistic_breast_cancer")
        if prior_scale == json.loads(BREAST_CANCER_REFERENCE.read_text(encoding="utf-8"))["prior_scale"]:
            target.with_reference(BREAST_CANCER_REFERENCE)  # the stored long run at this prior
        return target

    def _params(self) -> dict[str, Tensor]:
        return {"features": self.features, "labels": self.labels}

    def _log_prob(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        z = x @ p["features"].T  # (chains, n)
        loglik = (p["labels"] * z - torch.nn.functional.softplus(z)).sum(-1)
        return loglik - 0.5 * x.square().sum(-1) / self.prior_scale**2

    def _jax_log_prob(self, jnp: Any, p: dict[str, Any]) -> Callable[[Any], Any]:
        from jax.nn import softplus

        prior_scale = self.prior_scale

        def logdensity(x: Any) -> Any:
            z = p["features"] @ x
            return jnp.sum(p["labels"] * z - softplus(z)) - 0.5 * jnp.sum(jnp.square(x)) / prior_scale**2

        return logdensity

    def moments(self) -> Moments | None:
        return self.reference

    def with_reference(self, path: str | Path) -> LogisticRegression:
        """Attach the reference moments stored at ``path`` (:func:`load_reference`); returns ``self``."""
        ref = load_reference(path)
        if ref.mean.shape != (self.dim,):
            raise ValueError(f"path: the reference has {ref.mean.shape[0]} coordinates, the target {self.dim}")
        self.reference = ref
        return self

    def initial(self, chains: int, generator: torch.Generator | None = None) -> Tensor:
        """``N(0, 0.1^2 I)`` draws: near the prior's centre, where the likelihood is not yet saturated."""
        return 0.1 * torch.randn(chains, self.dim, generator=generator, dtype=torch.float64)


def load_reference(path: str | Path) -> Moments:
    """Reference moments from a JSON file with lists ``mean``, ``variance`` and (optional) ``mean_error``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    try:
        err = data.get("mean_error")
        return Moments(_float64(data["mean"]), _float64(data["variance"]), None if err is None else _float64(err))
    except KeyError as missing:
        raise ValueError(f"path: {path} has no {missing} list; expected keys mean, variance (mean_error)") from None


def _gaussian(dim: int | None, seed: int) -> DensityTarget:
    return ill_conditioned_gaussian(dim or 100, 1000.0, rotate=True, seed=seed)


def _gaussian_diag(dim: int | None, seed: int) -> DensityTarget:
    return ill_conditioned_gaussian(dim or 100, 1000.0, rotate=False, seed=seed)


def _mixture(dim: int | None, seed: int) -> DensityTarget:
    from .mixture import mixture_2d

    if dim not in (None, 2):
        raise ValueError(f"dim: the mixture target is 2-D, got {dim}")
    return MixtureDensity(mixture_2d("wide"), name="mixture_2d_wide")


def _funnel(dim: int | None, seed: int) -> DensityTarget:
    return NealsFunnel(dim or 10)


def _banana(dim: int | None, seed: int) -> DensityTarget:
    return Banana(dim or 2)


def _logistic(dim: int | None, seed: int) -> DensityTarget:
    if dim not in (None, 31):
        raise ValueError(f"dim: the breast-cancer regression has 31 coefficients, got {dim}")
    return LogisticRegression.breast_cancer()


#: name -> ``factory(dim, seed)`` of the targets ``fewstep mcmc`` runs on (``dim`` None: the default).
DENSITY_TARGETS: dict[str, Callable[[int | None, int], DensityTarget]] = {
    "gaussian": _gaussian,
    "gaussian_diag": _gaussian_diag,
    "mixture": _mixture,
    "funnel": _funnel,
    "banana": _banana,
    "logistic_regression": _logistic,
}


def density_target(name: str, dim: int | None = None, seed: int = 0) -> DensityTarget:
    """The target ``name`` of :data:`DENSITY_TARGETS` (``dim``: its dimension where it has a choice)."""
    if name not in DENSITY_TARGETS:
        from ...options import suggestion

        raise ValueError(
            f"name: unknown target {name!r}{suggestion(name, list(DENSITY_TARGETS))}; "
            f"choose one of {', '.join(DENSITY_TARGETS)}"
        )
    return DENSITY_TARGETS[name](dim, seed)
