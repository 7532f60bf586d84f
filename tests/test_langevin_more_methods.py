"""Mirror / Bregman proximal Langevin, multiscale annealed Langevin ("sampling by averaging") and dropout-style
structured SG-MCMC: each reaches an answer computed here, independently of the sampler, within Monte Carlo error,
and refuses bad options.

The answers: a Dirichlet's mean and variance; the exponential law whose rate is that of the entropic Bregman–Moreau
envelope of ``w x`` (``log(1 + lambda w) / lambda``); a truncated exponential smoothed by the entropic envelope of
its constraint (by quadrature); the Gaussian ``N(mu, S)`` and its smoothing ``N(mu, S + s^2 I)``; the Gaussian
``N(mu, (D + rho (Lambda - D))^-1)`` of the averaged dropout dynamics and ULA's biased covariance.
"""

from __future__ import annotations

import math

import pytest
import torch

import fewstep.langevin as L
from fewstep.bench.mcmc_compare import check_samplers
from fewstep.langevin import Box, EntropicL1, Target, sample
from fewstep.noise.brownian import BrownianPath

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def z_scores(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The errors of the sample mean of independent draws ``x`` [n, d] in standard errors."""
    return (x.mean(0) - mean) / (x.std(0) / math.sqrt(x.shape[0]))


def gaussian(mean: torch.Tensor, precision: torch.Tensor) -> Target:
    return Target.from_log_prob(lambda x: -0.5 * (((x - mean) @ precision) * (x - mean)).sum(-1))


# ------------------------------------------------------------------------------------------------ registration


def test_registered_and_known_to_the_mcmc_command():
    names = ["mirror_langevin", "multiscale_annealed", "dropout_sgmcmc"]
    assert all(n in L.SAMPLERS for n in names)
    assert check_samplers(names) == names


# ---------------------------------------------------------------------------------------------- mirror Langevin

ALPHA = torch.tensor([2.0, 3.0, 5.0], dtype=F64)


def dirichlet() -> Target:
    return Target.from_log_prob(lambda x: ((ALPHA - 1.0) * x.log()).sum(-1))


def test_mirror_langevin_samples_a_dirichlet_on_the_simplex():
    n = 4000
    x0 = torch.full((n, 3), 1.0 / 3.0, dtype=F64)
    run = sample(dirichlet(), "mirror_langevin", x0, draws=1, warmup=200, step_size=0.01, mirror="simplex",
                 generator=gen(1))  # fmt: skip
    x = run.draws[:, 0]
    assert bool((x > 0).all()) and torch.allclose(x.sum(-1), torch.ones(n, dtype=F64))
    a0 = ALPHA.sum()
    mean, var = ALPHA / a0, ALPHA * (a0 - ALPHA) / (a0**2 * (a0 + 1.0))
    assert z_scores(x, mean).abs().max() < 4.0
    ratio = x.var(0) / var  # sd of a variance estimate of a near-Gaussian: sqrt(2 / n) = 0.022
    assert (ratio - 1.0).abs().max() < 4.0 * math.sqrt(2.0 / n) + 0.02, ratio
    assert run.gradient_evaluations == 201 and run.acceptance is None


@pytest.mark.parametrize("scheme", ["dual", "mla"])
def test_entropic_bregman_prox_samples_the_smoothed_target(scheme):
    # Gamma(a) shape on the orthant times exp(-w x): the envelope of w x is x log(1 + lam w) / lam, an exponential
    a, w, lam, n = 3.0, 2.0, 0.5, 2000
    target = Target.from_log_prob(lambda x: ((a - 1.0) * x.log()).sum(-1))
    x0 = torch.ones(n, 1, dtype=F64)
    run = sample(target, "mirror_langevin", x0, draws=1, warmup=300, step_size=0.01, mirror="orthant",
                 scheme=scheme, prox=EntropicL1(w), smoothing=lam, generator=gen(2))  # fmt: skip
    x = run.draws[:, 0]
    rate = math.log(1.0 + lam * w) / lam
    assert abs(float(z_scores(x, torch.tensor([a / rate], dtype=F64)))) < 4.0
    assert abs(float(z_scores(x, torch.tensor([a / w], dtype=F64)))) > 20.0  # the unsmoothed law is far
    assert abs(float(x.var()) / (a / rate**2) - 1.0) < 4.0 * math.sqrt(2.0 / n) + 0.02


def test_box_constraint_with_the_entropic_mirror():
    # exp(-x) on [0, b]: the entropic right envelope of the constraint is (x log(x / b) - x + b) / lam for x > b
    b, lam, n = 1.0, 0.05, 2000
    target = Target.from_log_prob(lambda x: -x.sum(-1))
    run = sample(target, "mirror_langevin", torch.full((n, 1), 0.5, dtype=F64), draws=1, warmup=400,
                 step_size=0.01, mirror="orthant", prox=Box(0.0, b), smoothing=lam, generator=gen(3))  # fmt: skip
    grid = torch.linspace(1e-6, 4.0, 40_001, dtype=F64)
    envelope = torch.where(grid > b, (grid * (grid / b).log() - grid + b) / lam, torch.zeros_like(grid))
    density = torch.exp(-grid - envelope)
    mass = torch.trapezoid(density, grid)
    mean = torch.trapezoid(grid * density, grid) / mass
    beyond = float(torch.trapezoid(torch.where(grid > b, density, 0.0), grid) / mass)  # about 0.08
    x = run.draws[:, 0]
    assert abs(float(z_scores(x, mean.reshape(1)))) < 4.0
    frac = float((x > b).double().mean())
    assert abs(frac - beyond) < 4.0 * math.sqrt(beyond * (1.0 - beyond) / n), (frac, beyond)


def test_euclidean_mirror_is_ula():
    target = gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    x0 = torch.randn(16, 2, generator=gen(0), dtype=F64)
    ula = sample(target, "ula", x0, draws=20, step_size=0.1, generator=gen(4))
    for scheme in ("dual", "mla"):
        run = sample(target, "mirror_langevin", x0, draws=20, step_size=0.1, mirror="euclidean", scheme=scheme,
                     generator=gen(4))  # fmt: skip
        torch.testing.assert_close(run.draws, ula.draws)


def test_brownian_path_drives_mirror_langevin_and_myula():
    # on one Brownian path, the Euclidean mirror and MYULA with a vacuous constraint take ULA's steps exactly
    target = gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    x0 = torch.randn(8, 2, generator=gen(0), dtype=F64)
    path = BrownianPath((2,), 7, 0.0, 1.0, batch_size=8, dtype=F64)
    ula = sample(target, "ula", x0, draws=16, step_size=1 / 16, brownian=path)
    mirror = sample(target, "mirror_langevin", x0, draws=16, step_size=1 / 16, mirror="euclidean", brownian=path)
    box = Box(-math.inf, math.inf)
    myula = sample(target, "myula", x0, draws=16, step_size=1 / 16, prox=box, brownian=path)
    torch.testing.assert_close(mirror.draws, ula.draws)
    torch.testing.assert_close(myula.draws, ula.draws)
    other = sample(target, "ula", x0, draws=16, step_size=1 / 16, generator=gen(1))
    assert not torch.allclose(other.draws, ula.draws)
    # a refinement of the step on the same path ends close by (the simplex, the dual scheme)
    simplex = torch.full((8, 3), 1.0 / 3.0, dtype=F64)
    path3 = BrownianPath((3,), 8, 0.0, 1.0, batch_size=8, dtype=F64)
    ends = [
        sample(
            dirichlet(), "mirror_langevin", simplex, draws=n, step_size=1 / n, mirror="simplex", brownian=path3
        ).draws[:, -1]
        for n in (64, 128)
    ]
    assert float((ends[0] - ends[1]).abs().max()) < 0.05


def test_mirror_langevin_errors():
    x0 = torch.full((4, 3), 1.0 / 3.0, dtype=F64)
    target = dirichlet()
    with pytest.raises(ValueError, match="mirror of 'mirror_langevin' must be one of .*simplex"):
        sample(target, "mirror_langevin", x0, draws=1, step_size=0.01, mirror="simplx")
    with pytest.raises(ValueError, match="mirror of 'mirror_langevin'"):
        sample(target, "mirror_langevin", x0, draws=1, step_size=0.01)
    with pytest.raises(ValueError, match="rows summing to 1"):
        sample(target, "mirror_langevin", 2 * x0, draws=1, step_size=0.01, mirror="simplex")
    with pytest.raises(ValueError, match="every coordinate > 0"):
        sample(target, "mirror_langevin", x0 - 0.5, draws=1, step_size=0.01, mirror="orthant")
    with pytest.raises(ValueError, match="scheme of 'mirror_langevin'"):
        sample(target, "mirror_langevin", x0, draws=1, step_size=0.01, mirror="simplex", scheme="euler")
    with pytest.raises(ValueError, match="must be <= smoothing"):
        sample(target, "mirror_langevin", x0, draws=1, step_size=0.1, mirror="orthant", prox=Box(), smoothing=0.05)
    with pytest.raises(ValueError, match="step_size of 'mirror_langevin' is required"):
        sample(target, "mirror_langevin", x0, draws=1, mirror="simplex")
    with pytest.raises(ValueError, match="brownian must have batch_size"):
        path = BrownianPath((3,), 0, batch_size=2, dtype=F64)
        sample(target, "mirror_langevin", x0, draws=1, step_size=0.01, mirror="simplex", brownian=path)
    with pytest.raises(TypeError, match="prox of 'mirror_langevin'"):
        sample(target, "mirror_langevin", x0, draws=1, step_size=0.01, mirror="simplex", prox=1.0)
    assert target.gradient_evaluations == 0


# ---------------------------------------------------------------------------------- multiscale annealed Langevin

MU = torch.tensor([1.0, -2.0], dtype=F64)
PRECISION = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=F64)


@pytest.mark.parametrize("output", ["slow", "fast"])
def test_multiscale_annealed_reaches_the_smoothed_and_the_exact_gaussian(output):
    n, s_min = 2000, 0.7
    x0 = 5.0 * torch.randn(n, 2, generator=gen(0), dtype=F64)
    run = sample(gaussian(MU, PRECISION), "multiscale_annealed", x0, draws=1, warmup=300, sigma_max=5.0,
                 sigma_min=s_min, levels=6, steps_per_level=100, step_size=0.05, fast_step=0.02, output=output,
                 generator=gen(1))  # fmt: skip
    assert run.gradient_evaluations == 6 * 100 + 300 + 1 and run.warmup == 900
    cov = torch.linalg.inv(PRECISION) + (s_min**2 * torch.eye(2, dtype=F64) if output == "slow" else 0.0)
    x = run.draws[:, 0]
    assert z_scores(x, MU).abs().max() < 4.0
    sd = cov.diagonal().sqrt()
    allowed = 4.0 * torch.outer(sd, sd) * math.sqrt(2.0 / n) + 0.04 * torch.outer(sd, sd)  # + an O(step) bias
    assert bool(((torch.cov(x.T) - cov).abs() <= allowed).all()), (torch.cov(x.T), cov)


def test_multiscale_annealed_errors():
    target = gaussian(MU, PRECISION)
    x0 = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="fast_step of 'multiscale_annealed' is required"):
        sample(target, "multiscale_annealed", x0, draws=1)
    with pytest.raises(ValueError, match="must be <= epsilon"):
        sample(target, "multiscale_annealed", x0, draws=1, fast_step=0.1, step_size=0.5, epsilon=0.1)
    with pytest.raises(ValueError, match="must decrease strictly"):
        sample(target, "multiscale_annealed", x0, draws=1, fast_step=0.1, sigmas=[1.0, 2.0])
    with pytest.raises(ValueError, match="output of 'multiscale_annealed'"):
        sample(target, "multiscale_annealed", x0, draws=1, fast_step=0.1, output="both")
    with pytest.raises(ValueError, match="epsilon of 'multiscale_annealed'"):
        sample(target, "multiscale_annealed", x0, draws=1, fast_step=0.1, epsilon=2.0)
    with pytest.raises(TypeError, match="unknown option 'sigma'"):
        sample(target, "multiscale_annealed", x0, draws=1, fast_step=0.1, sigma=1.0)
    assert target.gradient_evaluations == 0


# ------------------------------------------------------------------------------------------- dropout SG-MCMC

LAMBDA = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64)  # posterior covariance 2.78, mean field 1


def test_dropout_sgmcmc_keep_one_is_sgld():
    h, n = 0.1, 1000
    run = sample(gaussian(torch.zeros(2, dtype=F64), LAMBDA), "dropout_sgmcmc", torch.zeros(n, 2, dtype=F64),
                 draws=1, warmup=400, step_size=h, groups=2, keep=1.0, generator=gen(5))  # fmt: skip
    assert run.gradient_evaluations == 401  # one per step, whatever the number of groups
    cov = torch.linalg.inv(LAMBDA - h * LAMBDA @ LAMBDA / 2.0)  # ULA's stationary covariance
    sd = cov.diagonal().sqrt()
    err = (torch.cov(run.draws[:, 0].T) - cov).abs()
    assert bool((err <= 4.0 * torch.outer(sd, sd) * math.sqrt(2.0 / n)).all()), (torch.cov(run.draws[:, 0].T), cov)


def test_dropout_sgmcmc_samples_the_averaged_gaussian():
    h, rho, n = 0.1, 0.5, 500
    run = sample(gaussian(torch.zeros(2, dtype=F64), LAMBDA), "dropout_sgmcmc", torch.zeros(n, 2, dtype=F64),
                 draws=300, warmup=3000, step_size=h, groups=[[0], [1]], keep=rho, history=3000,
                 generator=gen(6))  # fmt: skip
    d = torch.diag(LAMBDA.diagonal())
    a = d + rho * (LAMBDA - d)
    want = torch.linalg.inv(a - h * a @ a / 2.0)  # variance 1.24, covariance -0.48
    got = torch.cov(run.draws.reshape(-1, 2).T)
    # within 10% (the finite history's correlated partners inflate it slightly), far from the posterior (2.78)
    # and from the mean field (1.05)
    assert bool(((got - want).abs() <= 0.1 * want.diagonal().max()).all()), (got, want)
    assert float(got[0, 1]) < -0.3


def test_dropout_sgmcmc_errors():
    target = gaussian(torch.zeros(2, dtype=F64), LAMBDA)
    x0 = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="keep of 'dropout_sgmcmc' must be a probability"):
        sample(target, "dropout_sgmcmc", x0, draws=1, step_size=0.1, groups=2, keep=0.0)
    with pytest.raises(ValueError, match="keep of 'dropout_sgmcmc'"):
        sample(target, "dropout_sgmcmc", x0, draws=1, step_size=0.1, groups=2, keep=1.5)
    with pytest.raises(TypeError, match="'dropout_sgmcmc' needs groups="):
        sample(target, "dropout_sgmcmc", x0, draws=1, step_size=0.1)
    with pytest.raises(ValueError, match="groups of 'dropout_sgmcmc' must partition"):
        sample(target, "dropout_sgmcmc", x0, draws=1, step_size=0.1, groups=[[0], [0]])
    with pytest.raises(ValueError, match="step_size of 'dropout_sgmcmc' is required"):
        sample(target, "dropout_sgmcmc", x0, draws=1, groups=2)
    assert target.gradient_evaluations == 0
