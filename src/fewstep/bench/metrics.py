"""Sample-quality metrics, all computed in float64 on the CPU.

Samples are tensors (or arrays) of shape (N, ...), flattened to (N, D).

* :func:`rmse` -- ``sqrt(mean((x - ref)^2))`` over all elements: the error of a solver against the exact
  solution from the same noise (paired samples).
* :func:`sliced_wasserstein2` -- ``SW2(P, Q) = sqrt(E_u W2^2(<u, X>, <u, Y>))`` over unit directions u:
  unpaired, a distance between the two empirical distributions.
* :func:`mmd` -- squared maximum mean discrepancy with a (multi-bandwidth) Gaussian kernel.
* :func:`mode_coverage` -- which components of a :class:`~fewstep.bench.targets.GaussianMixture` the samples
  reach, and with which weights.
* :func:`component_weight_error` -- the component weights recovered from samples by responsibility against a
  mixture's (an exact posterior's) weights; :func:`exact_spread` -- a metric between independent exact sample
  sets, the floor a sampler's value is judged against (:class:`Spread`, :func:`within_spread`).
* :func:`frechet_distance` -- the Frechet (2-Wasserstein) distance between Gaussians fitted to two
  feature sets; with :class:`DigitsFeatures` this is "FD-digits", a small-scale analogue of FID.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..cache import cache_dir, load_cached, save_atomic
from .targets import FullCovarianceMixture, GaussianMixture, as_full_covariance
from .targets.learned import single_thread

__all__ = [
    "rmse",
    "sliced_wasserstein2",
    "mmd",
    "median_bandwidth",
    "ModeCoverage",
    "assign_components",
    "mode_coverage",
    "ComponentWeightError",
    "component_weight_error",
    "Spread",
    "spread",
    "exact_spread",
    "within_spread",
    "gaussian_frechet_distance",
    "frechet_distance",
    "DigitsFeatures",
    "fd_digits",
]

F64 = torch.float64
BLOCK = 1 << 22  # largest number of float64 elements of a pairwise block held at once (32 MiB)

TensorLike = Tensor | np.ndarray | Sequence[Sequence[float]]


def _flat(x: TensorLike, name: str, min_rows: int = 1) -> Tensor:
    """``x`` as a float64 CPU tensor of shape (N, D) (N = first dimension), checked to be finite."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float64) if not isinstance(x, Tensor) else x)
    if t.ndim < 1:
        raise ValueError(f"{name}: need shape (N, ...), got a scalar")
    t = t.detach().to(device="cpu", dtype=F64)
    t = t.reshape(t.shape[0], -1) if t.ndim > 1 else t.reshape(-1, 1)
    if t.shape[0] < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} samples, got {t.shape[0]}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: must be finite")
    return t


def _pair(x: TensorLike, y: TensorLike, min_rows: int = 1) -> tuple[Tensor, Tensor]:
    a, b = _flat(x, "x", min_rows), _flat(y, "y", min_rows)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x, y: need the same dimension per sample, got {a.shape[1]} and {b.shape[1]}")
    return a, b


# --- RMSE --------------------------------------------------------------------------------------------------


def rmse(x: TensorLike, reference: TensorLike) -> float:
    """``sqrt(mean((x - reference)^2))`` over all elements (same shapes): paired error against the reference."""
    a = torch.as_tensor(x).detach().to(device="cpu", dtype=F64)
    b = torch.as_tensor(reference).detach().to(device="cpu", dtype=F64)
    if a.shape != b.shape:
        raise ValueError(f"x, reference: need the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("x: empty")
    return float(torch.sqrt(torch.mean((a - b) ** 2)))


# --- sliced Wasserstein ------------------------------------------------------------------------------------


def _w2_sq_sorted(xs: Tensor, ys: Tensor) -> Tensor:
    """Squared 1-D W2 between the empirical measures of the sorted columns: xs (n, P), ys (m, P) -> (P,).

    ``W2^2 = int_0^1 (F^-1(q) - G^-1(q))^2 dq`` with the step quantile functions ``F^-1(q) = xs[floor(q n)]``;
    exact: the integrand is constant between the merged breakpoints ``i / n`` and ``j / m``.
    """
    n, m = xs.shape[0], ys.shape[0]
    if n == m:
        return torch.mean((xs - ys) ** 2, dim=0)
    # breakpoints on the integer grid q * n * m: multiples of m (from x) and of n (from y)
    edges = torch.unique(torch.cat([torch.arange(n + 1) * m, torch.arange(m + 1) * n]))  # sorted
    left, width = edges[:-1], (edges[1:] - edges[:-1]).to(F64) / (n * m)
    i, j = torch.div(left, m, rounding_mode="floor"), torch.div(left, n, rounding_mode="floor")
    return width @ (xs[i] - ys[j]) ** 2


def sliced_wasserstein2(
    x: TensorLike, y: TensorLike, projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced 2-Wasserstein distance between the empirical distributions of ``x`` (N, ...) and ``y`` (M, ...).

    ``SW2 = sqrt( (1/P) sum_p W2^2(<u_p, x>, <u_p, y>) )`` over ``P = projections`` directions
    ``u_p = g_p / |g_p|``, ``g_p ~ N(0, I_D)`` (uniform on the sphere). Each 1-D W2 comes from the sorted
    projections: ``mean_i (x_(i) - y_(i))^2`` when N = M, else the exact integral of the squared difference
    of the two step quantile functions (merged breakpoints i/N, j/M). The directions are drawn from
    ``generator``, by default a fresh generator seeded with 0, so repeated calls use the same directions
    (compare solvers on equal terms). Note ``E_u <u, v>^2 = |v|^2 / D``: a shift by v gives ``|v| / sqrt(D)``.
    """
    a, b = _pair(x, y)
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections: must be a positive integer, got {projections!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    d = a.shape[1]
    dirs = torch.randn(d, projections, generator=gen, dtype=F64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    per_chunk = max(1, BLOCK // max(a.shape[0], b.shape[0]))
    total = torch.zeros((), dtype=F64)
    for k in range(0, projections, per_chunk):
        u = dirs[:, k : k + per_chunk]
        xs, ys = torch.sort(a @ u, dim=0).values, torch.sort(b @ u, dim=0).values
        total = total + _w2_sq_sorted(xs, ys).sum()
    return math.sqrt(float(total) / projections)


# --- MMD ---------------------------------------------------------------------------------------------------


def median_bandwidth(y: TensorLike, max_points: int = 1000) -> float:
    """The median pairwise Euclidean distance within ``y`` (at most ``max_points`` evenly strided rows)."""
    b = _flat(y, "y", 2)
    b = b[:: max(1, math.ceil(b.shape[0] / max_points))]
    d = torch.pdist(b)
    return float(d.median()) if bool(torch.any(d > 0)) else 1.0


def _kernel_sum(a: Tensor, b: Tensor, inv2h2: Tensor, same: bool) -> Tensor:
    """``sum_{i,j} k(a_i, b_j)`` with ``k = mean_h exp(-|a-b|^2 / (2 h^2))``, in row blocks; the diagonal
    is left out when ``same`` (a is b)."""
    total = torch.zeros((), dtype=F64)
    b_sq = b.square().sum(1)
    rows = max(1, BLOCK // (b.shape[0] * inv2h2.numel()))
    for i in range(0, a.shape[0], rows):
        ai = a[i : i + rows]
        d2 = (ai.square().sum(1, keepdim=True) + b_sq - 2.0 * ai @ b.T).clamp(min=0)
        k = torch.exp(-d2[..., None] * inv2h2).mean(-1)
        if same:
            k[torch.arange(k.shape[0]), torch.arange(i, i + k.shape[0])] = 0.0
        total = total + k.sum()
    return total


def mmd(
    x: TensorLike, y: TensorLike, bandwidths: float | Sequence[float] | None = None, *, unbiased: bool = False
) -> float:
    """Squared maximum mean discrepancy between samples ``x`` (N, ...) and ``y`` (M, ...), ``y`` the reference.

    Kernel ``k(a, b) = (1/H) sum_h exp(-|a - b|^2 / (2 h^2))`` over the ``bandwidths`` h (default: the
    median pairwise distance h0 within ``y`` (:func:`median_bandwidth`) times 0.5, 1 and 2; fixed by the
    reference, so several ``x`` compared with one ``y`` share the kernel).

    Biased (default, the V-statistic; >= 0, exactly 0 for identical sets)::

        MMD_b^2 = mean_{i,j} k(x_i, x_j) + mean_{i,j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j)

    ``unbiased=True``: the U-statistic, the within-set means over ``i != j`` (may be slightly negative;
    its expectation is 0 when both samples come from one distribution). Computed in blocks of rows, so
    memory stays bounded for large N.
    """
    a, b = _pair(x, y, 2 if unbiased else 1)
    if bandwidths is None:
        h0 = median_bandwidth(b)
        hs = torch.tensor([0.5 * h0, h0, 2.0 * h0], dtype=F64)
    else:
        hs = torch.as_tensor(bandwidths, dtype=F64).reshape(-1)
        if hs.numel() < 1 or not bool(torch.all(torch.isfinite(hs) & (hs > 0))):
            raise ValueError(f"bandwidths: need positive numbers, got {bandwidths!r}")
    inv2h2 = 1.0 / (2.0 * hs**2)
    n, m = a.shape[0], b.shape[0]
    if unbiased:
        kxx = _kernel_sum(a, a, inv2h2, True) / (n * (n - 1))
        kyy = _kernel_sum(b, b, inv2h2, True) / (m * (m - 1))
    else:
        kxx = _kernel_sum(a, a, inv2h2, False) / (n * n)
        kyy = _kernel_sum(b, b, inv2h2, False) / (m * m)
    kxy = _kernel_sum(a, b, inv2h2, False) / (n * m)
    return float(kxx + kyy - 2.0 * kxy)


# --- mode coverage -----------------------------------------------------------------------------------------


def assign_components(samples: TensorLike, mixture: GaussianMixture) -> Tensor:
    """The most responsible component of each sample at sigma = 0 (the exact posterior over k), shape (N,).

    ``argmax_k  log w_k - D log s_k - |x - mu_k|^2 / (2 s_k^2)``: the nearest mean in the Mahalanobis sense of
    each (isotropic) component, offset by its log weight and normalisation.
    """
    x = _flat(samples, "samples")
    if x.shape[1] != mixture.dim:
        raise ValueError(f"samples: need {mixture.dim} values per sample, got {x.shape[1]}")
    mu, s, log_w = mixture.means, mixture.stds, torch.log(mixture.weights)
    offset = log_w - mixture.dim * torch.log(s)
    mu_sq, inv = mu.square().sum(1), 1.0 / (2.0 * s**2)
    out = torch.empty(x.shape[0], dtype=torch.long)
    rows = max(1, BLOCK // mixture.num_components)
    for i in range(0, x.shape[0], rows):
        xi = x[i : i + rows]
        d2 = (xi.square().sum(1, keepdim=True) + mu_sq - 2.0 * xi @ mu.T).clamp(min=0)
        out[i : i + rows] = torch.argmax(offset - d2 * inv, dim=1)
    return out


@dataclass(frozen=True)
class ModeCoverage:
    """Result of :func:`mode_coverage`.

    ``coverage``: fraction of components reached (``counts_k >= threshold * N * w_k``); ``weights``: the
    recovered weights ``counts / N``; ``tv``: total variation ``(1/2) sum_k |weights_k - w_k|`` to the true
    weights; ``counts``: samples per component; ``covered``: which components count as reached.
    """

    coverage: float
    weights: Tensor
    tv: float
    counts: Tensor
    covered: Tensor


def mode_coverage(samples: TensorLike, mixture: GaussianMixture, threshold: float = 0.2) -> ModeCoverage:
    """Assign each sample to its most responsible component (:func:`assign_components`) and compare.

    A component counts as covered when it received at least ``threshold`` times its expected count
    ``N w_k``. Exact samples of a mixture with well-separated components cover every component (for N large
    enough that ``threshold N w_k`` is several samples) and recover the weights to ``O(sqrt(w_k / N))``;
    when components overlap, hard assignment shifts weight towards the heavier or wider neighbour.
    """
    if not (isinstance(threshold, int | float) and 0 <= threshold):
        raise ValueError(f"threshold: must be a number >= 0, got {threshold!r}")
    k = assign_components(samples, mixture)
    n = k.shape[0]
    counts = torch.bincount(k, minlength=mixture.num_components).to(F64)
    weights = counts / n
    covered = counts >= threshold * n * mixture.weights
    tv = 0.5 * float((weights - mixture.weights).abs().sum())
    return ModeCoverage(float(covered.to(F64).mean()), weights, tv, counts.to(torch.long), covered)


# --- component weights and the exact-vs-exact spread --------------------------------------------------------


@dataclass(frozen=True)
class ComponentWeightError:
    """Result of :func:`component_weight_error`: ``l1 = sum_k |weights_k - w_k|``, ``max = max_k |weights_k - w_k|``
    and the recovered ``weights`` (K,)."""

    l1: float
    max: float
    weights: Tensor


def component_weight_error(
    samples: TensorLike, mixture: GaussianMixture | FullCovarianceMixture
) -> ComponentWeightError:
    """The mixture's component weights recovered from ``samples`` by responsibility, against its weights ``w``.

    ``weights_k = (1/N) sum_i p(k | x_i)`` (soft assignment, :meth:`FullCovarianceMixture.responsibilities`).
    For exact samples of the mixture ``E[p(k | X)] = w_k``, so the estimate is unbiased whatever the overlap of
    the components, and the error of exact samples is pure sampling noise, of order ``sqrt(w_k / N)``.
    """
    full = as_full_covariance(mixture)
    x = _flat(samples, "samples")
    if x.shape[1] != full.dim:
        raise ValueError(f"samples: need {full.dim} values per sample, got {x.shape[1]}")
    weights = full.responsibilities(x).mean(0)
    diff = (weights - full.weights).abs()
    return ComponentWeightError(float(diff.sum()), float(diff.max()), weights)


@dataclass(frozen=True)
class Spread:
    """A metric over replicates: ``mean``, ``stderr`` (the standard error of the mean, ``std / sqrt(n)``, 0 for
    one replicate) and the ``values``."""

    mean: float
    stderr: float
    values: tuple[float, ...]


def spread(values: Sequence[float]) -> Spread:
    """:class:`Spread` of ``values`` (at least one)."""
    v = torch.as_tensor([float(x) for x in values], dtype=F64)
    if v.numel() < 1:
        raise ValueError("values: need at least one value")
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else 0.0
    return Spread(float(v.mean()), se, tuple(float(x) for x in v))


def exact_spread(
    metric: Callable[[Tensor, Tensor], float],
    target: GaussianMixture | FullCovarianceMixture,
    n: int,
    replicates: int = 5,
    seed: int = 0,
) -> Spread:
    """``metric(X, Y)`` between two independent sets of ``n`` exact samples of ``target``, over ``replicates``.

    The value a perfect sampler would get from the same comparison (its own ``n`` samples against ``n`` fresh
    exact ones): a sampler is "as good as exact" when its value is within a few standard errors of this one
    (:func:`within_spread`). ``metric`` may ignore ``Y`` (e.g. the component-weight error against the exact
    weights). Seeded: replicate ``r`` uses a CPU generator seeded with ``seed + r``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be a positive integer, got {n!r}")
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"replicates: must be a positive integer, got {replicates!r}")
    values = []
    for r in range(replicates):
        gen = torch.Generator().manual_seed(seed + r)
        values.append(metric(target.sample(n, gen), target.sample(n, gen)))
    return spread(values)


def within_spread(result: Spread, reference: Spread, k: float = 3.0) -> bool:
    """Whether ``result.mean`` exceeds ``reference.mean`` by at most ``k`` combined standard errors
    ``sqrt(se_result^2 + se_reference^2)`` (metrics where lower is better)."""
    return result.mean - reference.mean <= k * math.hypot(result.stderr, reference.stderr)


# --- Frechet distance --------------------------------------------------------------------------------------


def _psd_sqrt(cov: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clamped to 0)."""
    vals, vecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def gaussian_frechet_distance(mu1: TensorLike, cov1: TensorLike, mu2: TensorLike, cov2: TensorLike) -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``: the squared 2-Wasserstein distance of two Gaussians.

    ``Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}`` (similar matrices), and the latter matrix is
    symmetric PSD, so its trace root is the sum of the square roots of its eigenvalues: a real, stable form
    (no complex ``sqrtm``). Clamped at 0 against rounding.
    """
    m1, m2 = torch.as_tensor(mu1, dtype=F64).reshape(-1), torch.as_tensor(mu2, dtype=F64).reshape(-1)
    s1, s2 = torch.as_tensor(cov1, dtype=F64), torch.as_tensor(cov2, dtype=F64)
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"need means of shape ({d},) and covariances of shape ({d}, {d})")
    root1 = _psd_sqrt(s1)
    inner = root1 @ (0.5 * (s2 + s2.T)) @ root1
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp(min=0).sqrt().sum()
    value = (m1 - m2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2.0 * tr_sqrt
    return max(float(value), 0.0)


def frechet_distance(features_x: TensorLike, features_y: TensorLike) -> float:
    """The Frechet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets (N, F).

    See :func:`gaussian_frechet_distance`. It is a squared distance (as FID). Two sets that differ by a
    constant shift v have equal covariances, so the value is exactly ``|v|^2`` up to rounding.
    """
    a, b = _pair(features_x, features_y, 2)
    return gaussian_frechet_distance(
        a.mean(0), torch.cov(a.T).reshape(a.shape[1], -1), b.mean(0), torch.cov(b.T).reshape(b.shape[1], -1)
    )


# --- FD-digits ---------------------------------------------------------------------------------------------

DIGITS_FEATURES_VERSION = "1"


class _DigitsNet(nn.Module):
    def __init__(self, hidden: int = 128, features: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.ReLU())
        self.head = nn.Linear(features, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class DigitsFeatures:
    """Features for "FD-digits": the penultimate-layer activations (64 ReLU units) of a small MLP classifier
    of the scikit-learn 8 x 8 digits, trained in-process (about a second on one CPU core).

    The classifier (64 -> 128 -> 64 -> 10, ReLU) is trained with Adam on a fixed 85% of the 1,797 images
    (seeded split), with Gaussian pixel noise of std 0.05 as augmentation (the width of
    :func:`~fewstep.bench.targets.digits_target`'s modes); ``accuracy`` is its accuracy on the other 15%.
    Weights are cached in :func:`~fewstep.cache.cache_dir` under a version string.

    ``scale`` is how the images to be featurised are scaled: ``"[-1,1]"`` (``pixel / 8 - 1``, the default
    of ``digits_target``) or ``"[0,1]"``. Call with (N, 64) or (N, 8, 8) samples; returns (N, 64) float64.

    FD-digits is *not* Inception FID: the features come from a tiny network trained on 1,500 images, so
    values are only comparable with other FD-digits values (same version and seed).
    """

    def __init__(
        self, scale: str = "[-1,1]", *, seed: int = 0, cache: bool = True, directory: str | Path | None = None
    ):
        if scale not in ("[-1,1]", "[0,1]"):
            raise ValueError(f"scale: choose '[-1,1]' or '[0,1]', got {scale!r}")
        self.scale, self.seed = scale, int(seed)
        name = f"digits-features-v{DIGITS_FEATURES_VERSION}-seed{self.seed}.pt"
        self.path = Path(directory if directory is not None else cache_dir()) / name if cache else None
        blob = load_cached(self.path, DIGITS_FEATURES_VERSION) if self.path is not None else None
        with torch.random.fork_rng(devices=[]):  # leave the global RNG alone
            self.net = _DigitsNet()
        if blob is not None:
            try:
                self.net.load_state_dict(blob["state_dict"])
            except (KeyError, RuntimeError):  # weights of another network under the same name: retrain
                blob = None
        if blob is not None:
            self.accuracy, self.train_seconds, self.from_cache = float(blob["accuracy"]), float(blob["seconds"]), True
        else:
            self.accuracy, self.train_seconds = self._train()
            self.from_cache = False
            if self.path is not None:
                state = {k: v.clone() for k, v in self.net.state_dict().items()}
                blob = {"version": DIGITS_FEATURES_VERSION, "state_dict": state, "accuracy": self.accuracy}
                save_atomic({**blob, "seconds": self.train_seconds}, self.path)
        self.net = self.net.double().eval().requires_grad_(False)

    def _train(self) -> tuple[float, float]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(np.asarray(digits.data, dtype=np.float32) / 8.0 - 1.0)
        y = torch.as_tensor(np.asarray(digits.target, dtype=np.int64))
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(x.shape[0], generator=gen)
        n_train = int(0.85 * x.shape[0])
        tr, te = order[:n_train], order[n_train:]
        start = time.perf_counter()
        with single_thread(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=gen)))
            self.net = _DigitsNet()
            opt = torch.optim.Adam(self.net.parameters(), lr=3e-3, weight_decay=1e-4)
            for _ in range(40):  # epochs of minibatches of 128
                perm = tr[torch.randperm(n_train, generator=gen)]
                for i in range(0, n_train, 128):
                    idx = perm[i : i + 128]
                    xb = x[idx] + 0.05 * torch.randn(len(idx), 64, generator=gen)
                    loss = nn.functional.cross_entropy(self.net(xb), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                accuracy = float((self.net(x[te]).argmax(1) == y[te]).float().mean())
        return accuracy, time.perf_counter() - start

    def _input(self, x: TensorLike) -> Tensor:
        t = _flat(x, "x")
        if t.shape[1] != 64:
            raise ValueError(f"x: need 64 pixels per sample (8 x 8 digits), got {t.shape[1]}")
        return t if self.scale == "[-1,1]" else 2.0 * t - 1.0

    def __call__(self, x: TensorLike) -> Tensor:
        """Penultimate-layer features of ``x``, shape (N, 64), float64."""
        return self.net.body(self._input(x))

    def predict(self, x: TensorLike) -> Tensor:
        """Predicted digit classes of ``x``, shape (N,)."""
        return self.net(self._input(x)).argmax(1)


def fd_digits(x: TensorLike, y: TensorLike, features: DigitsFeatures | None = None) -> float:
    """FD-digits: :func:`frechet_distance` between the :class:`DigitsFeatures` of ``x`` and of ``y``."""
    f = features or DigitsFeatures()
    return frechet_distance(f(x), f(y))
