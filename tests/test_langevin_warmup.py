"""Warm-up mass estimates: the Fisher-divergence diagonal ``sqrt(Var x / Var g)`` against its closed form, its
independence of the draws' spread on a diagonal Gaussian (where the draws' variance keeps a start transient), and
kinetic Langevin's warm-up with it recovering the variances of an ill-conditioned Gaussian from a far start."""

from __future__ import annotations

import pytest
import torch

import fewstep.langevin as L
from fewstep.langevin.adaptation import Warmup, WelfordVariance, fisher_inverse_mass, shrink


def _welford(draws: torch.Tensor) -> WelfordVariance:
    acc = WelfordVariance.like(draws[0])
    for x in draws:
        acc.add(x)
    return acc


def test_fisher_inverse_mass_is_the_ratio_of_the_variances() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, 4, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 2.0, 3.0, 4.0], dtype=torch.float64
    )
    s = torch.randn(50, 3, 4, generator=g, dtype=torch.float64) * 0.5
    n = 150
    expected = shrink((x.reshape(n, 4).var(0) / s.reshape(n, 4).var(0)).sqrt(), n)
    torch.testing.assert_close(fisher_inverse_mass(_welford(x), _welford(s), pooled=True), expected)
    per_chain = (x.var(0) / s.var(0)).sqrt()
    torch.testing.assert_close(fisher_inverse_mass(_welford(x), _welford(s)), shrink(per_chain, 50))


def test_fisher_inverse_mass_ignores_the_spread_on_a_diagonal_gaussian() -> None:
    """Draws 30 times too wide in the stiff coordinates (a start not yet shed): the draws' variance is 900 times
    off there, the Fisher estimate (scores ``-x / sigma^2``) is the variance up to the shrinkage."""
    variances = torch.tensor([1e-3, 1e-2, 1.0], dtype=torch.float64)
    spread = torch.tensor([30.0, 3.0, 1.0], dtype=torch.float64)
    x = torch.randn(200, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x * variances.sqrt() * spread
    fisher = fisher_inverse_mass(_welford(x), _welford(-x / variances), pooled=True)
    torch.testing.assert_close(fisher, shrink(variances, 800), rtol=1e-9, atol=0)
    plain = _welford(x).regularised(pooled=True)
    assert float(plain[0] / variances[0]) > 500


@pytest.mark.parametrize("scheme", ["baoab", "randomized_midpoint"])
def test_fisher_warmup_recovers_an_ill_conditioned_diagonal_gaussian(scheme: str) -> None:
    """Variances from 1e-3 to 1, chains started at N(0, I): after a 200-iteration warm-up the Fisher mass is within
    a factor 1.5 of the variances everywhere, the draws' variance (Stan's) more than 5 times off somewhere."""
    variances = torch.logspace(-3, 0, 50, dtype=torch.float64)
    target = L.Target.from_log_prob(lambda x: -0.5 * (x * x / variances).sum(-1))
    x0 = torch.randn(4, 50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ratio = {}
    for estimate in ("fisher", "variance"):
        run = L.sample(target, scheme, x0, draws=10, warmup=200, mass_estimate=estimate,
                       generator=torch.Generator().manual_seed(3))  # fmt: skip
        assert run.inverse_mass is not None
        r = run.inverse_mass / variances
        ratio[estimate] = float(torch.maximum(r, 1 / r).max())
    assert ratio["fisher"] < 1.5, ratio
    assert ratio["variance"] > 5.0, ratio


def test_mass_estimate_is_checked() -> None:
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="mass_estimate must be one of 'variance', 'fisher'"):
        Warmup(x0, 100, step_size=0.1, target_accept=0.8, adapt_step=True, adapt_mass=True, mass_estimate="fish")
    warm = Warmup(x0, 100, step_size=0.1, target_accept=0.8, adapt_step=True, adapt_mass=True, mass_estimate="fisher")
    with pytest.raises(ValueError, match="needs the score"):
        warm.observe(0, x0, torch.ones(2))
