"""Exact posteriors and reward tilts of Gaussian mixtures against brute force (grids, importance sampling)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from fewstep.bench.targets import (
    FullCovarianceMixture,
    GaussianMixture,
    as_full_covariance,
    mixture_2d,
    mixture_posterior,
    reward_tilt,
)
from fewstep.posterior import Linear, Mask, Nonlinear, Operator

F64 = torch.float64


def _grid_density_1d(mix: FullCovarianceMixture, grid: torch.Tensor) -> torch.Tensor:
    var = mix.covariances[:, 0, 0]
    comp = torch.exp(-((grid[:, None] - mix.means[:, 0]) ** 2) / (2 * var)) / torch.sqrt(2 * math.pi * var)
    return comp @ mix.weights


def _prior_1d() -> GaussianMixture:
    return GaussianMixture([[-2.0], [0.5], [3.0]], [0.4, 0.8, 0.3], [0.5, 0.2, 0.3])


def test_linear_posterior_matches_a_grid_in_1d():
    prior = _prior_1d()
    y, a, s = 1.2, 0.7, 0.5
    post = mixture_posterior(prior, Linear(y=torch.tensor([[y]]), noise_std=s, A=torch.tensor([[a]])))
    grid = torch.linspace(-8, 8, 40001, dtype=F64)
    dx = float(grid[1] - grid[0])
    prior_pdf = _grid_density_1d(as_full_covariance(prior), grid)
    brute = prior_pdf * torch.exp(-((y - a * grid) ** 2) / (2 * s**2))
    brute = brute / (brute.sum() * dx)
    torch.testing.assert_close(_grid_density_1d(post, grid), brute, atol=1e-6, rtol=1e-5)


def test_reward_tilt_matches_a_grid_in_1d():
    prior = _prior_1d()
    q, b, c = 0.6, 1.5, 0.8
    tilt = reward_tilt(prior, torch.tensor([[q]]), torch.tensor([b]), scale=c)
    grid = torch.linspace(-8, 8, 40001, dtype=F64)
    dx = float(grid[1] - grid[0])
    brute = _grid_density_1d(as_full_covariance(prior), grid) * torch.exp(c * (-0.5 * q * grid**2 + b * grid))
    brute = brute / (brute.sum() * dx)
    torch.testing.assert_close(_grid_density_1d(tilt, grid), brute, atol=1e-6, rtol=1e-5)


def _labelled_prior_samples(prior: GaussianMixture, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(prior.weights, n, replacement=True, generator=g)
    x = prior.means[k] + prior.stds[k, None] * torch.randn(n, prior.dim, generator=g, dtype=F64)
    return x, k


def _check_weighted(post: FullCovarianceMixture, x, k, log_w, num_components: int) -> None:
    w = torch.softmax(log_w, 0)
    weights = torch.zeros(num_components, dtype=F64).index_add_(0, k, w)
    torch.testing.assert_close(post.weights, weights, atol=0.01, rtol=0)
    mean = w @ x
    torch.testing.assert_close(post.mean(), mean, atol=0.02, rtol=0)
    cov = (x - mean).T @ ((x - mean) * w[:, None])
    torch.testing.assert_close(post.covariance(), cov, atol=0.03, rtol=0)


def test_linear_posterior_matches_importance_sampling_in_2d():
    prior = mixture_2d()
    a = torch.tensor([[1.0, 0.6]], dtype=F64)
    y, s = 1.1, 0.3
    post = mixture_posterior(prior, Linear(y=torch.tensor([[y]]), noise_std=s, A=a))
    x, k = _labelled_prior_samples(prior, 400_000, 0)
    log_w = -((y - x @ a[0]) ** 2) / (2 * s**2)
    _check_weighted(post, x, k, log_w, prior.num_components)


def test_reward_tilt_matches_importance_sampling_in_2d():
    prior = mixture_2d()
    q = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64)
    b = torch.tensor([1.0, -0.5], dtype=F64)
    tilt = reward_tilt(prior, q, b, scale=1.5)
    x, k = _labelled_prior_samples(prior, 400_000, 1)
    log_w = 1.5 * (-0.5 * ((x @ q) * x).sum(1) + x @ b)
    _check_weighted(tilt, x, k, log_w, prior.num_components)


def test_noisy_posterior_is_the_tilt_by_the_log_likelihood():
    prior = mixture_2d("wide")
    a = torch.tensor([[1.0, -0.4], [0.3, 0.8], [0.5, 0.5]], dtype=F64)
    y, s = torch.tensor([0.3, -0.7, 0.2], dtype=F64), 0.4
    post = mixture_posterior(prior, Linear(y=y[None], noise_std=s, A=a))
    tilt = reward_tilt(prior, a.T @ a / s**2, a.T @ y / s**2)
    torch.testing.assert_close(post.weights, tilt.weights)
    torch.testing.assert_close(post.means, tilt.means)
    torch.testing.assert_close(post.covariances, tilt.covariances)


def test_noiseless_mask_is_the_conditional_on_the_observed_coordinates():
    prior = GaussianMixture(
        torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=F64), [0.3, 0.5, 0.4, 0.6, 0.2]
    )
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    y = torch.tensor([[0.2, 9.0, -0.4, 9.0]], dtype=F64)  # unobserved entries are ignored
    post = mixture_posterior(prior, Mask(y=y, mask=mask))
    obs, hid = [0, 2], [1, 3]
    torch.testing.assert_close(post.means[:, obs], y[0, obs].expand(5, 2))
    torch.testing.assert_close(post.means[:, hid], prior.means[:, hid])
    expect_cov = torch.zeros(5, 4, 4, dtype=F64)
    expect_cov[:, 1, 1] = expect_cov[:, 3, 3] = prior.stds**2
    torch.testing.assert_close(post.covariances, expect_cov, atol=1e-12, rtol=0)
    v = prior.stds**2
    log_w = torch.log(prior.weights) - ((y[0, obs] - prior.means[:, obs]) ** 2).sum(1) / (2 * v) - torch.log(v)
    torch.testing.assert_close(post.weights, torch.softmax(log_w, 0))
    samples = post.sample(100, torch.Generator().manual_seed(1))
    torch.testing.assert_close(samples[:, obs], y[0, obs].expand(100, 2), atol=1e-12, rtol=0)


def test_operator_is_materialised_as_its_matrix():
    prior = mixture_2d("wide")
    a = torch.tensor([[0.5, 1.0]], dtype=F64)
    y = torch.tensor([[0.8]], dtype=F64)
    op = Operator(y=y, noise_std=0.2, forward_fn=lambda x: x @ a.T, adjoint_fn=lambda r: r @ a)
    p1, p2 = mixture_posterior(prior, op), mixture_posterior(prior, Linear(y=y, noise_std=0.2, A=a))
    torch.testing.assert_close(p1.means, p2.means)
    torch.testing.assert_close(p1.weights, p2.weights)


def test_sampling_moments_and_responsibilities():
    post = reward_tilt(mixture_2d(), torch.eye(2, dtype=F64) * 0.3, torch.tensor([0.5, 1.0], dtype=F64))
    x = post.sample(200_000, torch.Generator().manual_seed(2))
    torch.testing.assert_close(x.mean(0), post.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), post.covariance(), atol=0.02, rtol=0)
    # E[p(k | X)] = w_k for exact samples
    torch.testing.assert_close(post.responsibilities(x).mean(0), post.weights, atol=0.005, rtol=0)


def _denoise_by_hand(mix: FullCovarianceMixture, x: torch.Tensor, a: float, s: float) -> torch.Tensor:
    eye = torch.eye(mix.dim, dtype=F64)
    logp, x0k = [], []
    for mu, cov, w in zip(mix.means, mix.covariances, mix.weights, strict=True):
        marg = a**2 * cov + s**2 * eye
        logp.append(torch.log(w) + MultivariateNormal(a * mu, marg).log_prob(x))
        x0k.append(mu + (a * cov @ torch.linalg.solve(marg, (x - a * mu).T)).T)
    r = torch.softmax(torch.stack(logp, 1), 1)
    return (r[..., None] * torch.stack(x0k, 1)).sum(1)


@pytest.mark.parametrize("a, s", [(0.9, 0.3), (0.4, 1.2), (0.0, 1.0)])
def test_full_covariance_denoiser_is_exact(a, s):
    post = mixture_posterior(mixture_2d(), Linear(y=torch.tensor([[0.5]]), noise_std=0.4, A=torch.tensor([[1.0, 1.0]])))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=F64) * 2
    x0, eps = post.denoise(x, a, s)
    torch.testing.assert_close(x0, _denoise_by_hand(post, x, a, s))
    torch.testing.assert_close(a * x0 + s * eps, x)


def test_isotropic_mixture_denoises_the_same_as_full_covariance():
    prior = mixture_2d()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    for got, want in zip(as_full_covariance(prior).denoise(x, 0.7, 0.5), prior.denoise(x, 0.7, 0.5), strict=True):
        torch.testing.assert_close(got, want)


def test_errors_name_the_argument():
    prior = mixture_2d()
    with pytest.raises(TypeError, match="Nonlinear"):
        mixture_posterior(prior, Nonlinear(y=torch.zeros(1, 2), noise_std=0.1, forward_fn=torch.tanh))
    with pytest.raises(ValueError, match="one observation"):
        mixture_posterior(prior, Linear(y=torch.zeros(2, 1), noise_std=0.1, A=torch.ones(1, 2)))
    with pytest.raises(ValueError, match="A: need 2 columns"):
        mixture_posterior(prior, Linear(y=torch.zeros(1, 1), noise_std=0.1, A=torch.ones(1, 3)))
    with pytest.raises(ValueError, match="Q: must be positive semi-definite"):
        reward_tilt(prior, -torch.eye(2), torch.zeros(2))
    with pytest.raises(ValueError, match="scale"):
        reward_tilt(prior, torch.eye(2), torch.zeros(2), scale=0.0)
    with pytest.raises(ValueError, match="b: need 2"):
        reward_tilt(prior, torch.eye(2), torch.zeros(3))
    with pytest.raises(TypeError, match="mixture"):
        as_full_covariance("not a mixture")  # type: ignore[arg-type]


def test_diagonal_and_rotated_denoisers_agree():
    prior = GaussianMixture(
        torch.randn(6, 3, generator=torch.Generator().manual_seed(5), dtype=F64), [0.3, 0.5, 0.4, 0.6, 0.2, 0.7]
    )
    post = mixture_posterior(
        prior, Mask(y=torch.tensor([[0.5, 0.0, -0.2]]), noise_std=0.3, mask=torch.tensor([1.0, 0.0, 1.0]))
    )
    assert post.diagonal
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    alpha, sigma = torch.linspace(0.2, 0.9, 16, dtype=F64), torch.linspace(1.0, 0.3, 16, dtype=F64)
    general = post.denoise(x, alpha, sigma)  # distinct per-sample levels: the rotated path
    for i in range(16):  # one level each: the diagonal path
        fast = post.denoise(x[i : i + 1], float(alpha[i]), float(sigma[i]))
        for got, want in zip(fast, general, strict=True):
            torch.testing.assert_close(got[0], want[i])


def test_denoiser_jacobian_of_one_gaussian():
    cov = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64)
    mix = FullCovarianceMixture(torch.tensor([[0.3, -0.1]], dtype=F64), cov[None], torch.ones(1))
    a, s = 0.7, 0.5
    x = torch.tensor([[0.2, 0.4]], dtype=F64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda z: mix.denoise(z, a, s)[0][0], x)[:, 0]
    torch.testing.assert_close(jac, a * cov @ torch.linalg.inv(a**2 * cov + s**2 * torch.eye(2, dtype=F64)))


def test_denoiser_level_errors():
    noiseless = mixture_posterior(mixture_2d(), Mask(y=torch.tensor([[1.0, 0.0]]), mask=torch.tensor([1.0, 0.0])))
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="sigma: must be > 0"):
        noiseless.denoise(x, 1.0, 0.0)
    with pytest.raises(ValueError, match="alpha, sigma: not both 0"):
        as_full_covariance(mixture_2d()).denoise(x, 0.0, 0.0)
    with pytest.raises(ValueError, match="x: need shape"):
        noiseless.denoise(torch.zeros(2, 3), 1.0, 0.5)
