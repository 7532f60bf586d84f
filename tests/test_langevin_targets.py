"""fewstep.bench.targets.densities: log-densities against torch.distributions, exact samples against the
closed-form moments, and the two tied together by Stein's identities ``E[grad log p] = 0``, ``E[grad log p x^T] = -I``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from fewstep.bench.targets import mixture_2d
from fewstep.bench.targets.densities import (
    BREAST_CANCER_REFERENCE,
    DENSITY_TARGETS,
    Banana,
    LogisticRegression,
    MixtureDensity,
    NealsFunnel,
    density_target,
    ill_conditioned_gaussian,
    load_reference,
)
from fewstep.langevin import Target

REFERENCE = BREAST_CANCER_REFERENCE


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same_up_to_constant(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a - a[0], b - b[0], rtol=1e-10, atol=1e-9)


def test_gaussian_density_covariance_and_samples() -> None:
    g = ill_conditioned_gaussian(20, condition=1000.0, seed=3)
    cov = g.covariance()
    eig = torch.linalg.eigvalsh(cov)
    assert math.isclose(float(eig.max() / eig.min()), 1000.0, rel_tol=1e-8)
    x = torch.randn(7, 20, generator=gen(), dtype=torch.float64)
    same_up_to_constant(g.log_prob(x), D.MultivariateNormal(torch.zeros(20, dtype=torch.float64), cov).log_prob(x))
    xg = x.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(g.log_prob(xg).sum(), xg)
    torch.testing.assert_close(score, -x @ torch.linalg.inv(cov), rtol=1e-8, atol=1e-8)
    s = g.sample(40_000, gen(1))
    torch.testing.assert_close(torch.cov(s.T), cov, atol=0.03, rtol=0.05)
    big = ill_conditioned_gaussian(1000, rotate=False)
    assert big.dim == 1000 and big.log_prob(torch.zeros(2, 1000)).shape == (2,)
    assert big.log_prob(torch.zeros(2, 1000, dtype=torch.float32)).dtype == torch.float32


def test_mixture_density_is_the_mixture() -> None:
    mix = mixture_2d("wide")
    target = MixtureDensity(mix)
    comp = D.Independent(D.Normal(mix.means, mix.stds[:, None].expand_as(mix.means)), 1)
    ref = D.MixtureSameFamily(D.Categorical(probs=mix.weights), comp)
    x = 2.0 * torch.randn(9, 2, generator=gen(), dtype=torch.float64)
    torch.testing.assert_close(target.log_prob(x), ref.log_prob(x), rtol=1e-12, atol=1e-12)  # normalised
    m = target.moments()
    torch.testing.assert_close(m.mean, mix.mean())


def test_funnel_and_banana_densities() -> None:
    f = NealsFunnel(dim=5)
    x = torch.randn(6, 5, generator=gen(), dtype=torch.float64)
    v = x[:, 0]
    ref = D.Normal(0.0, 3.0).log_prob(v) + D.Normal(0.0, torch.exp(0.5 * v)[:, None]).log_prob(x[:, 1:]).sum(-1)
    same_up_to_constant(f.log_prob(x), ref)
    b = Banana(dim=3, a=2.0, b=0.5)
    y = torch.stack([x[:, 0] / 2.0, x[:, 1] - 0.5 * (x[:, 0].square() - 4.0), x[:, 2]], dim=1)  # unit Jacobian
    same_up_to_constant(b.log_prob(x[:, :3]), D.Normal(0.0, 1.0).log_prob(y).sum(-1))


@pytest.mark.parametrize("name", ["gaussian", "mixture", "funnel", "banana"])
def test_exact_samples_match_the_moments(name: str) -> None:
    target = density_target(name, dim=None if name in ("mixture", "banana") else 6)
    m = target.moments()
    assert m is not None and target.has_exact_samples
    n = 200_000
    s = target.sample(n, gen(2))
    mean_err = (m.variance / n).sqrt()
    assert bool(((s.mean(0) - m.mean).abs() < 5 * mean_err).all()), name
    tol = 0.03 if name != "funnel" else 0.35  # the funnel's x variance e^{9/2} has a heavy-tailed estimator
    torch.testing.assert_close(s.var(0), m.variance, rtol=tol, atol=0.0)


@pytest.mark.parametrize("name", ["gaussian", "mixture", "banana"])
def test_stein_identities_tie_the_density_to_the_samples(name: str) -> None:
    target = density_target(name, dim=None if name != "gaussian" else 4)
    x = target.sample(100_000, gen(4)).requires_grad_(True)
    (score,) = torch.autograd.grad(target.log_prob(x).sum(), x)
    n = x.shape[0]
    eye = torch.eye(target.dim, dtype=torch.float64)
    scale = (score.detach().square().mean(0).sqrt()[:, None] * x.detach().square().mean(0).sqrt()[None]) / n**0.5
    torch.testing.assert_close(score.mean(0), torch.zeros(target.dim, dtype=torch.float64), atol=0.05, rtol=0)
    assert bool(((score.T @ x.detach() / n + eye).abs() < 6 * scale + 1e-3).all()), name


def test_logistic_regression_density() -> None:
    target = LogisticRegression.breast_cancer(prior_scale=2.0)
    assert target.dim == 31 and target.features.shape == (569, 31)
    beta = 0.1 * torch.randn(4, 31, generator=gen(), dtype=torch.float64)
    logits = beta @ target.features.T
    ref = D.Bernoulli(logits=logits).log_prob(target.labels).sum(-1) + D.Normal(0.0, 2.0).log_prob(beta).sum(-1)
    same_up_to_constant(target.log_prob(beta), ref)
    assert target.moments() is None
    t = target.target()
    assert isinstance(t, Target)
    t.score(beta)
    assert t.gradient_evaluations == 1


def test_logistic_reference_is_stored_and_mixed() -> None:
    data = json.loads(REFERENCE.read_text())
    assert data["dim"] == 31 and data["max_split_rhat"] < 1.01 and data["min_ess_bulk"] > 1000
    ref = load_reference(REFERENCE)
    target = LogisticRegression.breast_cancer()  # the stored reference is attached at its prior scale
    assert torch.equal(target.moments().mean, ref.mean)  # type: ignore[union-attr]
    assert LogisticRegression.breast_cancer(prior_scale=2.0).moments() is None  # another posterior: no reference
    assert ref.mean_error is not None and bool((ref.mean_error < 0.05 * ref.variance.sqrt()).all())
    # the posterior mean is near the mode (the Laplace approximation) and the score averages to zero there
    assert float((ref.mean - torch.tensor(data["laplace_mode"])).abs().max()) < 0.5


def test_registry_and_errors() -> None:
    assert set(DENSITY_TARGETS) == {"gaussian", "gaussian_diag", "mixture", "funnel", "banana", "logistic_regression"}
    with pytest.raises(ValueError, match="unknown target 'funel'.*funnel"):
        density_target("funel")
    with pytest.raises(ValueError, match=r"x: target .* \[chains, 2\]"):
        density_target("banana").log_prob(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="dim"):
        density_target("mixture", dim=3)
    with pytest.raises(ValueError, match="no exact sampler"):
        density_target("logistic_regression").sample(3)
    with pytest.raises(ValueError, match="condition"):
        ill_conditioned_gaussian(4, condition=0.5)


@pytest.mark.blackjax
@pytest.mark.parametrize("name", sorted(DENSITY_TARGETS))
def test_jax_log_density_matches_torch(name: str) -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    target = density_target(name, dim=8 if name in ("gaussian", "gaussian_diag", "funnel") else None)
    x = target.initial(5, gen(5)) * 1.5
    logdensity = jax.vmap(target.jax_log_prob())
    got = torch.as_tensor(np.array(logdensity(jax.numpy.asarray(x.numpy()))))
    torch.testing.assert_close(got, target.log_prob(x), rtol=1e-10, atol=1e-10)
