"""Sample-quality metrics against known answers: closed forms, exact invariances, exact samples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import randn
from sklearn.datasets import load_digits

from fewstep.bench import metrics
from fewstep.bench.metrics import (
    DigitsFeatures,
    assign_components,
    fd_digits,
    frechet_distance,
    gaussian_frechet_distance,
    mmd,
    mode_coverage,
    rmse,
    sliced_wasserstein2,
)
from fewstep.bench.targets import digits_target, mixture_2d, mixture_nd

F64 = torch.float64


# --- RMSE ----------------------------------------------------------------------------------------------


def test_rmse() -> None:
    ref = randn(10, 3, 4)
    assert rmse(ref, ref) == 0.0
    assert rmse(ref + 0.25, ref) == pytest.approx(0.25, rel=1e-12)
    shift = torch.zeros_like(ref)
    shift[0, 0, 0] = 1.2  # one element of 120
    assert rmse(ref.float() + shift.float(), ref) == pytest.approx(1.2 / math.sqrt(120), rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        rmse(ref, ref[:5])


# --- sliced W2 -----------------------------------------------------------------------------------------


def test_sliced_w2_identical_permuted_and_repeated_sets() -> None:
    x = randn(300, 5)
    assert sliced_wasserstein2(x, x) == 0.0
    assert sliced_wasserstein2(x, x[torch.randperm(300)]) == 0.0
    # unequal sizes: each point repeated 3 times is the same empirical distribution
    assert sliced_wasserstein2(x, x.repeat(3, 1)) == pytest.approx(0.0, abs=1e-12)
    y = randn(200, 5, seed=1)
    assert sliced_wasserstein2(x, torch.cat([y, y])) == pytest.approx(sliced_wasserstein2(x, y), rel=1e-12)
    # the default directions are fixed (seed 0); another generator gives other directions
    assert sliced_wasserstein2(x, y) == sliced_wasserstein2(x, y)
    other = sliced_wasserstein2(x, y, generator=torch.Generator().manual_seed(5))
    assert other != sliced_wasserstein2(x, y) and other == pytest.approx(sliced_wasserstein2(x, y), rel=0.2)


def test_sliced_w2_one_dimension_is_w2_by_quantiles() -> None:
    # F^-1 = 0 | 1 at 1/2, G^-1 = 0 | 0.5 | 1 at 1/3, 2/3: the squared difference 1/4 on [1/3, 2/3]
    x, y = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.5], [1.0], [0.0]])
    assert sliced_wasserstein2(x, y, projections=3) == pytest.approx(math.sqrt(1 / 12), rel=1e-14)
    # equal sizes: sorted pairing
    a, b = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0.0, 10.0, 5.0])
    assert sliced_wasserstein2(a, b) == pytest.approx(math.sqrt((1 + 9 + 49) / 3), rel=1e-14)


def test_sliced_w2_of_a_shift() -> None:
    """Shifting a cloud by v shifts every projection by <u, v>: SW2^2 = mean_p <u_p, v>^2 -> |v|^2 / D."""
    d, p = 16, 2048
    x = randn(500, d)
    v = torch.linspace(-1.0, 2.0, d, dtype=F64)
    sw2 = sliced_wasserstein2(x, x + v, projections=p, generator=torch.Generator().manual_seed(3))
    # exactly the mean over the same directions
    dirs = torch.randn(d, p, generator=torch.Generator().manual_seed(3), dtype=F64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    assert sw2**2 == pytest.approx(float(((v @ dirs) ** 2).mean()), rel=1e-10)
    # and within a few standard errors of |v|^2 / D: u_1^2 ~ Beta(1/2, (D-1)/2), Var = 2 (D-1) / (D^2 (D+2))
    expected = float(v @ v) / d
    se = float(v @ v) * math.sqrt(2 * (d - 1) / (d * d * (d + 2)) / p)
    assert abs(sw2**2 - expected) < 4 * se


# --- MMD -----------------------------------------------------------------------------------------------


def _gaussian_mmd2(d: int, s: float, shift: float, h: float) -> float:
    """MMD^2 between N(0, s^2 I) and N(shift e, s^2 I) with the kernel exp(-|a-b|^2 / (2 h^2))."""
    c = (h * h / (h * h + 2 * s * s)) ** (d / 2)
    return 2.0 * c * (1.0 - math.exp(-(shift**2) / (2 * (h * h + 2 * s * s))))


def test_mmd_identical_different_and_closed_form() -> None:
    x = randn(400, 3)
    assert mmd(x, x) == 0.0
    assert mmd(x, x, bandwidths=[0.3, 3.0]) == 0.0
    d, s, shift, h = 2, 1.0, 1.0, 1.5
    a = s * randn(2000, d, seed=1)
    b = s * randn(2000, d, seed=2)
    b_shifted = b + torch.tensor([shift, 0.0], dtype=F64)
    exact = _gaussian_mmd2(d, s, shift, h)  # 0.1175
    same = mmd(a, b, h, unbiased=True)
    different = mmd(a, b_shifted, h, unbiased=True)
    assert abs(same) < 0.02 * exact  # the U-statistic has mean 0 here; std ~ 1e-4
    assert different == pytest.approx(exact, abs=0.03)  # its std is 0.0065 (simulated)
    biased = mmd(a, b_shifted, h)
    # the V-statistic adds the diagonal terms: (2 - mean_{i!=j} k(x_i, x_j) - mean_{i!=j} k(y_i, y_j)) / N
    within = (h * h / (h * h + 2 * s * s)) ** (d / 2)  # E k(x, x'), x, x' independent
    assert biased - different == pytest.approx((2 - 2 * within) / 2000, rel=0.05)
    # default bandwidths (median heuristic on y): positive for different, near 0 for the same distribution
    assert mmd(a, b_shifted) > 20 * abs(mmd(a, b, unbiased=True))


def test_mmd_blocks_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = randn(150, 4), randn(130, 4, seed=1) + 0.3
    whole = mmd(x, y), mmd(x, y, unbiased=True)
    monkeypatch.setattr(metrics, "BLOCK", 1000)  # a few rows at a time
    assert mmd(x, y) == pytest.approx(whole[0], rel=1e-12, abs=1e-15)
    assert mmd(x, y, unbiased=True) == pytest.approx(whole[1], rel=1e-12, abs=1e-15)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, y, bandwidths=[0.0])
    with pytest.raises(ValueError, match="dimension"):
        mmd(x, y[:, :3])


# --- mode coverage -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "unbalanced", "grid"])
def test_mode_coverage_of_exact_samples(name: str) -> None:
    target = mixture_2d(name)
    n = 20_000
    xs = target.sample(n, generator=torch.Generator().manual_seed(0))
    result = mode_coverage(xs, target)
    assert result.coverage == 1.0 and bool(result.covered.all())
    assert int(result.counts.sum()) == n and result.weights.sum() == pytest.approx(1.0)
    se = torch.sqrt(target.weights * (1 - target.weights) / n)
    assert torch.all((result.weights - target.weights).abs() < 4 * se + 1e-3)
    assert result.tv < 0.02


def test_mode_coverage_of_a_collapsed_sampler() -> None:
    target = mixture_2d("unbalanced")
    heaviest = int(torch.argmax(target.weights))
    xs = target.means[heaviest] + target.stds[heaviest] * randn(1000, 2)
    result = mode_coverage(xs, target)
    assert result.coverage == pytest.approx(1 / 8)
    assert result.weights[heaviest] == 1.0
    assert result.tv == pytest.approx(1 - float(target.weights[heaviest]), rel=1e-12)
    # dropping only the rarest mode (weight 1/255) also shows
    rare = int(torch.argmin(target.weights))
    exact = target.sample(20_000, generator=torch.Generator().manual_seed(1))
    kept = exact[assign_components(exact, target) != rare]
    assert mode_coverage(kept, target).coverage == pytest.approx(7 / 8)


def test_assign_components_recovers_labels_in_high_dimension() -> None:
    target = mixture_nd(dim=64, components=200, seed=0)
    gen = torch.Generator().manual_seed(0)
    k = torch.multinomial(target.weights, 3000, replacement=True, generator=gen)
    xs = target.means[k] + target.stds[k, None] * torch.randn(3000, 64, generator=gen, dtype=F64)
    assert torch.equal(assign_components(xs, target), k)
    with pytest.raises(ValueError, match="64 values"):
        assign_components(xs[:, :10], target)


# --- Frechet distance ----------------------------------------------------------------------------------


def test_gaussian_frechet_closed_forms() -> None:
    m1, m2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, -1.0, 2.5])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    # commuting (diagonal) covariances: |m1 - m2|^2 + sum (sqrt a - sqrt b)^2
    exact = float((m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert gaussian_frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(exact, rel=1e-13)
    # general SPD matrices: the textbook formula with scipy's sqrtm
    rng = np.random.default_rng(0)
    p, q = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = p @ p.T + 0.1 * np.eye(6), q @ q.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    cross = np.real(scipy.linalg.sqrtm(s1 @ s2))
    textbook = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * cross))
    assert gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(textbook, rel=1e-9)
    assert gaussian_frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)
    # singular covariances (rank 1) are handled
    assert gaussian_frechet_distance(m1, torch.outer(a, a), m1, torch.outer(a, a)) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_of_feature_sets() -> None:
    x = randn(500, 8)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    v = torch.linspace(-1.0, 1.0, 8, dtype=F64)
    assert frechet_distance(x, x + v) == pytest.approx(float(v @ v), rel=1e-10)  # equal covariances
    # two large Gaussian samples with known means and equal covariance: |m1 - m2|^2 + O(D / N)
    scale = torch.linspace(0.5, 2.0, 8, dtype=F64)
    a, b = scale * randn(20_000, 8, seed=1), scale * randn(20_000, 8, seed=2) + v
    # the error is dominated by 2 v.(mean error), std 2 sqrt(sum_i v_i^2 2 scale_i^2 / N) = 0.045
    se = 2 * math.sqrt(float((v**2 * 2 * scale**2).sum()) / 20_000)
    assert frechet_distance(a, b) == pytest.approx(float(v @ v), abs=4 * se)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


# --- FD-digits -----------------------------------------------------------------------------------------


def test_digits_features_train_cache_and_fd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    features = DigitsFeatures(directory=tmp_path)
    assert not features.from_cache and features.path is not None and features.path.is_file()
    assert features.accuracy > 0.93
    data = digits_target().means
    f = features(data[:100])
    assert f.shape == (100, 64) and f.dtype == F64
    assert torch.equal(features(data[:100].reshape(100, 8, 8)), f)

    def no_training(self: DigitsFeatures) -> tuple[float, float]:
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(DigitsFeatures, "_train", no_training)
    state = torch.random.get_rng_state()
    again = DigitsFeatures(directory=tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)  # loading leaves the global RNG alone
    assert again.from_cache and again.accuracy == features.accuracy
    assert torch.equal(again(data[:100]), f)
    unit = DigitsFeatures("[0,1]", directory=tmp_path)  # same weights, inputs in [0, 1]
    torch.testing.assert_close(unit((data[:100] + 1) / 2), f, rtol=1e-12, atol=1e-12)
    # FD-digits: two halves of the data are close; the data and blurred noise are far apart
    perm = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(0))
    half_a, half_b = data[perm[:800]], data[perm[800:1600]]
    noise = torch.tanh(randn(800, 64))
    near, far = fd_digits(half_a, half_b, features), fd_digits(half_a, noise, features)
    assert 0 <= near < 0.05 * far
    labels = torch.as_tensor(load_digits().target)
    assert float((features.predict(data) == labels).to(F64).mean()) > 0.95
