"""Kinetic Langevin's friction adaptation and divergence guard: the adapted friction is one over the longest
standard deviation of the preconditioned target (checked against an eigendecomposition and the exact covariance),
it mixes a correlated Gaussian faster than a fixed friction, and the guard keeps unadjusted chains finite and in
the target's bulk where an unguarded run overflows, while leaving a well-tuned run untouched."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep.langevin as L
from fewstep.langevin.adaptation import largest_whitened_variance
from fewstep.langevin.backoff import CHECK_EVERY, divergent

RHO = 0.95
COV = torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=torch.float64) * torch.tensor([4.0, 0.25]).sqrt().outer(
    torch.tensor([4.0, 0.25]).sqrt()
).to(torch.float64)
PREC = torch.linalg.inv(COV)


def correlated() -> L.Target:
    return L.Target.from_log_prob(lambda x: -0.5 * ((x @ PREC) * x).sum(-1))


def quartic() -> L.Target:
    """``p(x) ∝ exp(-|x|^4 / 4)``: curvature ``3 x^2`` grows without bound in the tails."""
    return L.Target.from_log_prob(lambda x: -0.25 * x.pow(4).sum(-1))


def test_largest_whitened_variance_matches_eigendecomposition() -> None:
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(5, 5, generator=g, dtype=torch.float64)
    draws = torch.randn(300, 3, 5, generator=g, dtype=torch.float64) @ mix.T + 2.0  # [n, chains, d]
    mass = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    flat = (draws.reshape(-1, 5) / mass.sqrt()).T
    expected = torch.linalg.eigvalsh(torch.cov(flat))[-1]
    torch.testing.assert_close(largest_whitened_variance(draws, mass, iterations=200), expected, rtol=1e-6, atol=0)
    per_chain = mass.expand(3, 5)  # a per-chain mass whitens the same way
    torch.testing.assert_close(largest_whitened_variance(draws, per_chain, iterations=200), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mass_estimate", ["variance", "fisher"])
def test_auto_friction_is_one_over_the_longest_whitened_scale(mass_estimate: str) -> None:
    """Whitened by the variances (Stan's mass), the correlated Gaussian has the correlation matrix, eigenvalues
    ``1 +- rho``: the adapted friction is ``1 / sqrt(1 + rho)``. The Fisher mass ``sqrt(Var x / Var g)`` is
    ``sigma_i^2 sqrt(1 - rho^2)`` (``Var g_i = 1 / (sigma_i^2 (1 - rho^2))``), the whitened covariance
    ``R / sqrt(1 - rho^2)`` with largest eigenvalue ``sqrt((1 + rho) / (1 - rho))``: the friction is
    ``((1 - rho) / (1 + rho))^(1/4)``. Both up to the warm-up's Monte Carlo error."""
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    run = L.sample(correlated(), "baoab", x0, draws=10, warmup=400, mass_estimate=mass_estimate,
                   generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert run.friction is not None
    expected = 1.0 / math.sqrt(1.0 + RHO) if mass_estimate == "variance" else ((1 - RHO) / (1 + RHO)) ** 0.25
    assert abs(run.friction / expected - 1.0) < 0.15, (run.friction, expected)
    fixed = L.sample(correlated(), "baoab", x0, draws=10, warmup=400, friction=2.0)
    assert fixed.friction == 2.0
    short = L.sample(correlated(), "obabo", x0, draws=10, step_size=0.1)  # no warm-up: the warm-up's friction
    assert short.friction == 1.0


def test_auto_friction_mixes_a_correlated_gaussian_faster() -> None:
    """Same warm-up, same budget: on a 10-D Gaussian whose diagonal mass leaves a correlation of 0.98 between
    two coordinates, the adapted friction's smallest bulk ESS is well above a friction of 2 (the overdamped
    regime, where the autocorrelation time of the slow direction grows with the friction)."""
    cov = torch.eye(10, dtype=torch.float64)
    cov[0, 1] = cov[1, 0] = 0.98
    prec = torch.linalg.inv(cov)
    target = L.Target.from_log_prob(lambda x: -0.5 * ((x @ prec) * x).sum(-1))
    x0 = torch.randn(4, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ess = {}
    for friction in ("auto", 2.0):
        run = L.sample(target, "baoab", x0, draws=3000, warmup=300, friction=friction,
                       generator=torch.Generator().manual_seed(4))  # fmt: skip
        ess[friction] = float(run.diagnostics().ess_bulk.min())
    assert ess["auto"] > 2.0 * ess[2.0], ess


@pytest.mark.parametrize("scheme", ["baoab", "obabo", "randomized_midpoint"])
def test_guard_keeps_chains_finite_in_growing_curvature(scheme: str) -> None:
    """Started in the tail of ``exp(-x^4 / 4)`` (curvature 75 at |x| = 5) with a step of 0.5, leapfrog is unstable
    (``h^2 * 75 > 4``): unguarded, the draws overflow; guarded, the chains reject the blow-up, back off the step and
    end in the bulk."""
    x0 = torch.full((4, 3), 5.0, dtype=torch.float64)
    bare = L.sample(quartic(), scheme, x0, draws=200, step_size=0.5, friction=1.0, max_energy_error=math.inf,
                    step_backoff=1.0, generator=torch.Generator().manual_seed(5))  # fmt: skip
    # guarded against non-finite states only: the chains still leave for astronomically large values
    bare_max = bare.draws.abs().amax()
    assert bare_max > 1e6, bare_max
    run = L.sample(quartic(), scheme, x0, draws=400, step_size=0.5, friction=1.0,
                   generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert bool(torch.isfinite(run.draws).all())
    assert run.divergences is not None and bool((run.divergences > 0).all())
    assert isinstance(run.step_size, torch.Tensor) and bool((run.step_size < 0.5).all())
    tail = run.draws[:, -200:]
    assert float(tail.abs().amax()) < 4.0  # P(|x| > 4) under exp(-x^4/4) is about 1e-27
    assert abs(float(tail.square().mean()) - 0.676) < 0.15  # E x^2 = 2 Gamma(3/4) / Gamma(1/4) = 0.676


def test_guard_leaves_a_well_tuned_run_alone() -> None:
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for scheme in ("baoab", "randomized_midpoint"):
        run = L.sample(correlated(), scheme, x0, draws=300, warmup=200, generator=torch.Generator().manual_seed(7))
        assert run.divergences is not None and int(run.divergences.sum()) == 0
        assert isinstance(run.step_size, torch.Tensor)
        guarded_off = L.sample(correlated(), scheme, x0, draws=300, warmup=200, max_energy_error=math.inf,
                               step_backoff=1.0, generator=torch.Generator().manual_seed(7))  # fmt: skip
        torch.testing.assert_close(run.draws, guarded_off.draws, rtol=0, atol=0)


def test_guard_on_a_score_only_target_rejects_non_finite_states() -> None:
    flat_score = L.Target.from_score(lambda x: torch.where(x.abs() > 3.0, x.new_tensor(math.nan), -x))
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    run = L.sample(flat_score, "obabo", x0, draws=300, step_size=0.3, generator=torch.Generator().manual_seed(8))
    assert bool(torch.isfinite(run.draws).all()) and float(run.draws.abs().amax()) <= 3.0


def test_divergent_flags() -> None:
    x = torch.tensor([[0.0, 1.0], [math.inf, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    score = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [math.nan, 0.0]])
    err = torch.tensor([0.0, 0.0, 2000.0, math.nan, 0.0])
    assert divergent(x, score, err, 1000.0).tolist() == [False, True, True, True, True]
    assert divergent(x, score, None, 1000.0).tolist() == [False, True, False, False, True]
    assert CHECK_EVERY >= 1


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"friction": "fast"}, "friction must be 'auto' or a positive float"),
        ({"friction": -1.0}, "friction must be 'auto' or a positive float"),
        ({"max_energy_error": -1.0}, "max_energy_error must be positive"),
        ({"step_backoff": 0.0}, r"step_backoff must be in \(0, 1\]"),
        ({"step_backoff": 2.0}, r"step_backoff must be in \(0, 1\]"),
    ],
)
def test_option_errors(option: dict[str, object], match: str) -> None:
    target = correlated()
    with pytest.raises(ValueError, match=match):
        L.sample(target, "baoab", torch.zeros(2, 2, dtype=torch.float64), draws=5, step_size=0.1, **option)
    assert target.gradient_evaluations == 0
