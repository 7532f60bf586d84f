"""The samplers beyond ULA/MALA/kinetic Langevin (annealed Langevin, walk-jump, SGLD, structured SG-MCMC, ALDI,
MYULA): each reaches a known answer within Monte Carlo error on a small problem, and refuses bad options.

The answers are computed here, independently of the samplers: exact mixture samples and moments (the mixture's
closed-form denoiser), the conjugate posterior of Bayesian linear regression, the moments of a Gaussian, and the
moments of the Moreau-Yosida-smoothed Laplace density by quadrature.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import GaussianMixture, mixture_2d
from fewstep.langevin import L1, Box, DiffusionTarget, MinibatchTarget, Target, sample

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, k: float = 4.0, rel: float = 0.0) -> None:
    """Independent samples ``x`` [n, d] have ``mean`` within ``k`` standard errors and each covariance entry within
    ``k`` standard errors (``rel``: an extra relative allowance for a known O(step) bias)."""
    n = x.shape[0]
    sd = cov.diagonal().sqrt()
    torch.testing.assert_close(x.mean(0), mean, atol=float(k * sd.max() / math.sqrt(n)), rtol=0.0)
    se_cov = k * torch.outer(sd, sd) * math.sqrt(2.0 / n) + rel * torch.outer(sd, sd)
    err = (torch.cov(x.T) - cov).abs()
    assert bool((err <= se_cov).all()), f"covariance {torch.cov(x.T)} vs {cov} (allowed {se_cov})"


# ----------------------------------------------------------------------------------------- diffusion-model targets


@pytest.fixture(scope="module")
def wide() -> tuple[GaussianMixture, DiffusionTarget]:
    mix = mixture_2d("wide")
    schedule = fewstep.VE(0.01, 20.0)
    return mix, DiffusionTarget(fewstep.Denoiser(mix.model(schedule, "epsilon"), schedule, "epsilon"), 0.5)


def test_annealed_langevin_matches_the_exact_mixture(wide):
    mix, target = wide
    x0 = 3.0 * torch.randn(2000, 2, generator=gen(0), dtype=F64)
    chains = sample(
        target, "annealed_langevin", x0, draws=1, generator=gen(1), sigma_max=3.0, sigma_min=0.1, levels=6,
        steps_per_level=50, step_size=1.0,
    )  # fmt: skip
    assert chains.draws.shape == (2000, 1, 2) and chains.gradient_evaluations == 6 * 50 + 1 + 1  # + denoising
    assert chains.warmup == 300
    assert_moments(chains.draws[:, 0], mix.mean(), mix.covariance(), rel=0.05)
    # a plain Langevin chain at the smallest level from the same start stays far from the target
    plain = sample(target, "annealed_langevin", x0, draws=1, generator=gen(1), sigmas=[0.01], steps_per_level=100)
    assert (torch.cov(plain.draws[:, 0].T) - mix.covariance()).abs().max() > 1.0


def test_walk_jump_walks_on_the_smoothed_density_and_jumps_to_its_posterior_means(wide):
    mix, target = wide
    sigma = 0.5
    smoothed = GaussianMixture(mix.means, (mix.stds**2 + sigma**2).sqrt(), mix.weights)
    x0 = torch.randn(2000, 2, generator=gen(0), dtype=F64)
    walk = sample(target, "walk_jump", x0, draws=1, warmup=60, generator=gen(1), step_size=0.3, jump=False)
    assert walk.gradient_evaluations == 61
    assert_moments(walk.draws[:, 0], smoothed.mean(), smoothed.covariance(), rel=0.05)
    jumps = sample(target, "walk_jump", x0, draws=1, warmup=60, generator=gen(1), step_size=0.3)
    assert jumps.gradient_evaluations == 62
    exact = mix.denoise(smoothed.sample(50_000, gen(2)), 1.0, sigma)[0]  # E[x | y] of exact measurements
    assert_moments(jumps.draws[:, 0], exact.mean(0), torch.cov(exact.T), rel=0.05)
    assert torch.cov(exact.T).trace() < 0.9 * mix.covariance().trace()  # the jumps are smoother than the data


def test_chain_of_log_concave_markov_chains_accumulates_measurements(wide):
    mix, target = wide
    m, sigma = 4, 0.5
    smoothed = GaussianMixture(mix.means, (mix.stds**2 + sigma**2 / m).sqrt(), mix.weights)
    x0 = torch.randn(2000, 2, generator=gen(0), dtype=F64)
    chains = sample(
        target, "walk_jump", x0, draws=2, warmup=20, generator=gen(1), step_size=0.3, measurements=m,
        steps_per_measurement=20, jump=False,
    )  # fmt: skip
    assert chains.draws.shape == (2000, 2, 2) and chains.gradient_evaluations == 3 * 20 + 22
    assert chains.warmup == 3 * 20 + 20
    assert_moments(chains.draws[:, -1], smoothed.mean(), smoothed.covariance(), rel=0.05)


def test_diffusion_target_passes_images_to_the_model_in_their_shape(wide):
    mix, flat = wide
    seen = []

    def model(x, t):
        seen.append(tuple(x.shape))
        return flat.denoiser.model(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    image = DiffusionTarget(fewstep.Denoiser(model, flat.denoiser.schedule, "epsilon"), 0.5, shape=(1, 1, 2))
    x0 = torch.randn(16, 2, generator=gen(0), dtype=F64)
    a = sample(image, "walk_jump", x0, draws=3, generator=gen(1))
    b = sample(flat, "walk_jump", x0, draws=3, generator=gen(1))
    assert seen[0] == (16, 1, 1, 2) and a.draws.shape == (16, 3, 2)
    torch.testing.assert_close(a.draws, b.draws)


def test_annealed_langevin_counts_and_keeps_the_undenoised_states(wide):
    _, target = wide
    x0 = torch.randn(8, 2, generator=gen(0), dtype=F64)
    run = sample(target, "annealed_langevin", x0, draws=4, warmup=3, sigmas=[2.0, 1.0, 0.5], steps_per_level=5,
                 denoise=False, generator=gen(1))  # fmt: skip
    assert run.draws.shape == (8, 4, 2) and run.gradient_evaluations == 3 * 5 + 3 + 4 and run.warmup == 18
    denoised = sample(target, "annealed_langevin", x0, draws=4, warmup=3, sigmas=[2.0, 1.0, 0.5], steps_per_level=5,
                      generator=gen(1))  # fmt: skip
    # the same chain (same noise), each kept state replaced by its Tweedie denoising E[x0 | y] at the last level
    mix, _ = wide
    torch.testing.assert_close(denoised.draws, mix.denoise(run.draws.reshape(-1, 2), 1.0, 0.5)[0].reshape(8, 4, 2))


def test_diffusion_samplers_refuse_bad_targets_and_options(wide):
    _, target = wide
    calls = target.calls.network
    x0 = torch.zeros(4, 2, dtype=F64)
    plain = Target.from_score(lambda x: -x)
    with pytest.raises(TypeError, match="DiffusionTarget"):
        sample(plain, "annealed_langevin", x0, draws=1)
    with pytest.raises(TypeError, match="DiffusionTarget"):
        sample(plain, "walk_jump", x0, draws=1)
    with pytest.raises(ValueError, match="decrease"):
        sample(target, "annealed_langevin", x0, draws=1, sigmas=[0.1, 1.0])
    with pytest.raises(ValueError, match="within the schedule"):
        sample(target, "annealed_langevin", x0, draws=1, sigmas=[100.0, 1.0])
    with pytest.raises(TypeError, match="did you mean 'steps_per_level'"):
        sample(target, "annealed_langevin", x0, draws=1, step_per_level=3)
    with pytest.raises(ValueError, match="measurements"):
        sample(target, "walk_jump", x0, draws=1, measurements=0)
    with pytest.raises(ValueError, match="step_size of 'annealed_langevin'"):
        sample(target, "annealed_langevin", x0, draws=1, step_size=3.0)
    with pytest.raises(ValueError, match="measurements"):  # sigma / sqrt(m) below the schedule's smallest level
        sample(target, "walk_jump", x0, draws=1, measurements=10_000)
    with pytest.raises(ValueError, match="shape"):
        DiffusionTarget(target.denoiser, shape=[2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fewstep.Denoiser"):
        DiffusionTarget(lambda x, t: x)  # type: ignore[arg-type]
    assert target.calls.network == calls  # every refusal comes before a model call


# --------------------------------------------------------------------------------- stochastic-gradient samplers


def regression(batch_size: int):
    """Bayesian linear regression y = X w + noise with a N(0, tau^2 I) prior: the exact Gaussian posterior."""
    n, noise, tau = 60, 1.0, 3.0
    g = gen(5)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    x = z @ torch.tensor([[1.0, 0.5], [0.0, 0.87]], dtype=F64)  # correlated features: a correlated posterior
    y = x @ torch.tensor([0.7, -0.4], dtype=F64) + noise * torch.randn(n, generator=g, dtype=F64)
    precision = x.T @ x / noise**2 + torch.eye(2, dtype=F64) / tau**2
    cov = torch.linalg.inv(precision)
    mean = cov @ x.T @ y / noise**2

    def log_likelihood(theta, batch):
        xb, yb = batch
        return (-0.5 * (yb - torch.einsum("cnd,cd->cn", xb, theta)) ** 2 / noise**2).sum(-1)

    def log_prior(theta):
        return -0.5 * theta.square().sum(-1) / tau**2

    target = MinibatchTarget(log_likelihood, (x, y), batch_size=batch_size, log_prior=log_prior)
    return target, mean, cov, precision


def test_sgld_samples_the_conjugate_posterior():
    target, mean, cov, precision = regression(batch_size=20)
    h = 0.02 / float(torch.linalg.eigvalsh(precision).max())  # the slowest direction relaxes in ~250 steps
    x0 = mean + torch.randn(1000, 2, generator=gen(0), dtype=F64) @ torch.linalg.cholesky(cov).T * 2.0
    chains = sample(target, "sgld", x0, draws=1, warmup=800, step_size=h, generator=gen(1))
    assert chains.gradient_evaluations == 801 and target.datum_gradients == 801 * 1000 * 20
    assert_moments(chains.draws[:, 0], mean, cov, rel=0.08)
    # full-data log-density: the Target's own, so ULA/MALA sample the same posterior
    lp = target.log_prob(mean[None] + torch.zeros(3, 2, dtype=F64))
    assert lp.shape == (3,)


def test_structured_sgmcmc_samples_the_mean_field_posterior():
    rho, h = 0.8, 0.1
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=F64)
    lam, mean = torch.linalg.inv(cov), torch.tensor([1.0, -1.0], dtype=F64)
    target = Target.from_score(lambda x: -(x - mean) @ lam)
    x0 = mean + 0.1 * torch.randn(2000, 2, generator=gen(0), dtype=F64)
    chains = sample(
        target, "structured_sgmcmc", x0, draws=1, warmup=1500, step_size=h, generator=gen(1), groups=2, history=1000
    )
    assert chains.gradient_evaluations == 2 * 1501
    # Mean field q_g = N(mu_g, 1/Lambda_gg); Euler-Maruyama with the partner drawn from q adds h Lambda_gj theta~_j:
    # v_g (2 h Lambda_gg - h^2 Lambda_gg^2) = 2 h + h^2 Lambda_gj^2 v_j, here symmetric in g, j
    v = 2.0 / (2.0 * lam[0, 0] - h * (lam[0, 0] ** 2 + lam[0, 1] ** 2))
    assert v < 0.5 * cov[0, 0]  # far from the posterior's own variance
    assert_moments(chains.draws[:, 0], mean, torch.eye(2, dtype=F64) * v, rel=0.05)
    one = sample(target, "structured_sgmcmc", x0, draws=1, warmup=300, step_size=h, generator=gen(1), groups=1)
    ula_cov = torch.linalg.inv(lam - h * lam @ lam / 2.0)  # one group is ULA: its stationary covariance
    assert_moments(one.draws[:, 0], mean, ula_cov, rel=0.03)


def test_sgld_decays_its_step_as_welling_and_teh():
    target, mean, _, _ = regression(batch_size=10)
    x0 = mean.expand(4, 2).clone()
    run = sample(target, "sgld", x0, draws=5, warmup=5, step_size=1e-3, decay=0.55, decay_offset=10.0)
    assert run.step_size == pytest.approx(1e-3 * (10.0 / (10.0 + 9)) ** 0.55)


def test_stochastic_gradient_samplers_refuse_bad_options():
    target, mean, _, _ = regression(batch_size=10)
    x0 = mean.expand(4, 2).clone()
    with pytest.raises(ValueError, match="step_size of 'sgld' is required"):
        sample(target, "sgld", x0, draws=1)
    with pytest.raises(ValueError, match="decay"):
        sample(target, "sgld", x0, draws=1, step_size=1e-3, decay=2.0)
    with pytest.raises(TypeError, match="needs groups="):
        sample(target, "structured_sgmcmc", x0, draws=1, step_size=1e-3)
    with pytest.raises(ValueError, match="partition"):
        sample(target, "structured_sgmcmc", x0, draws=1, step_size=1e-3, groups=[[0], [0]])
    with pytest.raises(ValueError, match="batch_size"):
        MinibatchTarget(lambda t, b: t.sum(-1), torch.zeros(5, 2), batch_size=6)
    bad = MinibatchTarget(lambda t, b: t, torch.zeros(5, 2), batch_size=2)
    with pytest.raises(ValueError, match="shape \\[chains\\]"):
        sample(bad, "sgld", x0, draws=1, step_size=1e-3)
    assert target.gradient_evaluations == 0


# ------------------------------------------------------------------------------------------------------- ALDI


def ill_conditioned(d: int = 4, condition: float = 1e4):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(3), dtype=F64))
    cov = q @ torch.diag(torch.logspace(0, math.log10(condition), d, dtype=F64) / 100.0) @ q.T
    precision, mean = torch.linalg.inv(cov), torch.arange(d, dtype=F64)
    target = Target.from_log_prob(lambda x: -0.5 * ((x - mean) @ precision * (x - mean)).sum(-1))
    return target, mean, cov


def test_aldi_is_affine_invariant_on_an_ill_conditioned_gaussian():
    target, mean, cov = ill_conditioned()
    h = 0.05
    x0 = torch.randn(200, 4, generator=gen(0), dtype=F64)  # far wider than the target in its narrow directions
    chains = sample(target, "aldi", x0, draws=400, warmup=300, step_size=h, generator=gen(1), ensemble_size=50)
    assert chains.gradient_evaluations == 700 and chains.draws.shape == (200, 400, 4)
    white = (chains.draws.reshape(-1, 4) - mean) @ torch.linalg.cholesky(torch.linalg.inv(cov))
    torch.testing.assert_close(white.mean(0), torch.zeros(4, dtype=F64), atol=0.1, rtol=0)
    expected = torch.eye(4, dtype=F64) / (1.0 - h / 2.0)  # Euler-Maruyama's inflation with C = Sigma
    torch.testing.assert_close(torch.cov(white.T), expected, atol=0.08, rtol=0)


def test_aldi_refuses_degenerate_ensembles():
    target, _, _ = ill_conditioned()
    with pytest.raises(ValueError, match="exceed d \\+ 1"):
        sample(target, "aldi", torch.zeros(10, 4, dtype=F64), draws=1, ensemble_size=5)
    with pytest.raises(ValueError, match="divide"):
        sample(target, "aldi", torch.zeros(12, 4, dtype=F64), draws=1, ensemble_size=8)
    with pytest.raises(TypeError, match="unknown option"):
        sample(target, "aldi", torch.zeros(12, 4, dtype=F64), draws=1, ensembles=2)
    assert target.gradient_evaluations == 0


# ------------------------------------------------------------------------------------------------------ MYULA


def envelope_moments(envelope, gaussian: bool) -> tuple[float, float, float]:
    """E x, E|x| and E x^2 of exp(-x^2/2 [if gaussian] - envelope(x)) by quadrature."""
    x = np.linspace(-60.0, 60.0, 600_001)
    p = np.exp(-envelope(x) - (x * x / 2 if gaussian else 0.0))
    p = p / p.sum()  # a uniform grid of spacing 2e-4: the Riemann sums are exact to far below the tolerances
    return float((x * p).sum()), float((np.abs(x) * p).sum()), float((x * x * p).sum())


def huber_moments(weight: float, lam: float, gaussian: bool) -> tuple[float, float]:
    """E|x| and E x^2 under the Moreau envelope of weight |x|: x^2/(2 lam) for |x| <= lam weight, else
    weight |x| - lam weight^2 / 2."""

    def envelope(x):
        a = np.abs(x)
        return np.where(a <= lam * weight, x * x / (2 * lam), weight * a - lam * weight**2 / 2)

    return envelope_moments(envelope, gaussian)[1:]


def test_myula_samples_the_smoothed_laplace_density():
    h, lam = 0.02, 0.05
    target = Target.from_score(lambda x: torch.zeros_like(x))  # f = 0: the density is exp(-|x|) alone
    x0 = torch.randn(2000, 1, generator=gen(0), dtype=F64)
    chains = sample(target, "myula", x0, draws=1, warmup=1500, step_size=h, generator=gen(1), prox=L1(1.0),
                    smoothing=lam)  # fmt: skip
    x = chains.draws[:, 0, 0]
    m1, m2 = huber_moments(1.0, lam, gaussian=False)
    assert abs(m2 - 2.0) < 0.05  # the envelope's bias is small at this lambda (Laplace: E x^2 = 2)
    se = math.sqrt(20.0 / 2000)
    assert abs(float(x.abs().mean()) - m1) < 4 * math.sqrt(1.0 / 2000) + 0.02 * m1
    assert abs(float(x.square().mean()) - m2) < 4 * se + 0.03 * m2


def test_myula_with_a_gaussian_part_and_a_diagonal_metric():
    h, lam = 0.02, 0.04
    target = Target.from_log_prob(lambda x: -0.5 * x.square().sum(-1))
    x0 = torch.randn(2000, 2, generator=gen(0), dtype=F64)
    mass = torch.tensor([1.0, 2.0], dtype=F64)
    chains = sample(target, "myula", x0, draws=1, warmup=600, step_size=h, generator=gen(1), prox=L1(2.0),
                    smoothing=lam, inverse_mass=mass)  # fmt: skip
    assert chains.gradient_evaluations == 601 and torch.equal(chains.inverse_mass, mass)
    for i in range(2):  # the Bregman-Moreau envelope in metric M is coordinate i's Huber function at lambda m_i
        m1, m2 = huber_moments(2.0, lam * float(mass[i]), gaussian=True)
        x = chains.draws[:, 0, i]
        assert abs(float(x.abs().mean()) - m1) < 4 * math.sqrt(m2 / 2000) + 0.03 * m1
        assert abs(float(x.square().mean()) - m2) < 4 * math.sqrt(3 * m2 * m2 / 2000) + 0.04 * m2


def test_myula_box_keeps_the_chains_near_the_box_and_refuses_bad_options():
    target = Target.from_log_prob(lambda x: -0.5 * x.square().sum(-1))
    x0 = torch.ones(500, 1, dtype=F64)
    chains = sample(target, "myula", x0, draws=1, warmup=600, step_size=0.005, generator=gen(1), prox=Box(0.0))
    x = chains.draws[:, 0, 0]
    # the half-normal on x >= 0, smoothed: the envelope of the box's indicator is dist(x, box)^2 / (2 lambda)
    m, _, m2 = envelope_moments(lambda v: np.minimum(v, 0.0) ** 2 / (2 * 0.01), gaussian=True)
    assert abs(m - math.sqrt(2 / math.pi)) < 0.1  # near the half-normal's mean
    assert abs(float(x.mean()) - m) < 4 * math.sqrt(m2 / 500) + 0.02
    with pytest.raises(TypeError, match="prox of 'myula'"):
        sample(target, "myula", x0, draws=1, step_size=0.01)
    with pytest.raises(ValueError, match="smoothing"):
        sample(target, "myula", x0, draws=1, step_size=0.1, prox=L1(), smoothing=0.05)
    with pytest.raises(ValueError, match="step_size of 'myula' is required"):
        sample(target, "myula", x0, draws=1, prox=L1())
    with pytest.raises(ValueError, match="inverse_mass"):
        sample(target, "myula", x0, draws=1, step_size=0.01, prox=L1(), inverse_mass=torch.tensor([-1.0]))
