"""The Langevin front end's core: Target (evaluation, counting, errors), the registry and sample(), Chains, the
warm-up adaptation, and the samplers' stationary laws against exact answers: MALA is exact where ULA is visibly
biased, and ULA's bias falls at first order in the step."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fewstep
import fewstep.langevin as L
from fewstep.langevin.adaptation import DualAveraging, mass_windows
from fewstep.langevin.noise import ou_integrals

COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
PREC = torch.linalg.inv(COV)


def gaussian_target() -> L.Target:
    return L.Target.from_log_prob(lambda x: -0.5 * ((x @ PREC) * x).sum(-1))


def exact_draws(chains: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(chains, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(COV).T


# ----------------------------------------------------------------------------------------------------------- Target


def test_log_prob_and_score_by_autograd_and_counting() -> None:
    t = gaussian_target()
    x = exact_draws(5, 0)
    lp, score = t.log_prob_and_score(x)
    assert lp.shape == (5,) and score.shape == (5, 2)
    torch.testing.assert_close(score, -x @ PREC)
    torch.testing.assert_close(lp, -0.5 * ((x @ PREC) * x).sum(-1))
    torch.testing.assert_close(t.score(x), -x @ PREC)
    t.log_prob(x)
    assert t.gradient_evaluations == 2 and t.density_evaluations == 1
    assert t.has_log_prob and not lp.requires_grad and not score.requires_grad


def test_score_only_target() -> None:
    t = L.Target.from_score(lambda x: -x)
    assert not t.has_log_prob
    x = torch.randn(3, 4)
    torch.testing.assert_close(t.score(x), -x)
    assert t.gradient_evaluations == 1
    with pytest.raises(ValueError, match="from_log_prob"):
        t.log_prob(x)


@pytest.mark.parametrize(
    ("log_prob", "match"),
    [
        (lambda x: -(x**2).sum(), r"shape \[chains\].*sum over the chains"),
        (lambda x: -(x**2), r"shape \[chains\]"),
        (lambda x: x.sum(-1) * float("nan"), "NaN"),
        (lambda x: torch.from_numpy(-(x.detach().numpy() ** 2).sum(-1)), "not differentiable"),
        (lambda x: torch.zeros(x.shape[0]), "not differentiable"),
        (lambda x: x.detach().sum(-1) * 0 + torch.zeros(x.shape[0], requires_grad=True), "does not depend on x"),
    ],
)
def test_target_errors_at_first_call(log_prob, match) -> None:  # type: ignore[no-untyped-def]
    t = L.Target.from_log_prob(log_prob)
    with pytest.raises(ValueError, match=match):
        t.log_prob_and_score(torch.randn(4, 2))


def test_score_errors() -> None:
    with pytest.raises(ValueError, match=r"shape \[chains, d\]"):
        L.Target.from_score(lambda x: x.sum(-1)).score(torch.randn(3, 2))
    with pytest.raises(TypeError, match="callable"):
        L.Target.from_log_prob(3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \[chains, d\]"):
        gaussian_target().score(torch.randn(2))


def test_mala_refuses_a_score_only_target_before_evaluating_it() -> None:
    t = L.Target.from_score(lambda x: -x)
    with pytest.raises(ValueError, match="'mala' needs the target's log-density.*from_log_prob"):
        L.sample(t, "mala", torch.zeros(2, 2), draws=3, step_size=0.1)
    assert t.gradient_evaluations == 0


# --------------------------------------------------------------------------------------------------------- registry


def test_sample_dispatch_and_errors() -> None:
    assert {"ula", "mala", "kinetic", "baoab", "obabo", "randomized_midpoint"} <= set(L.SAMPLERS)
    with pytest.raises(ValueError, match=r"did you mean 'mala'.*the samplers are:.*ula"):
        L.sample(gaussian_target(), "mlaa", torch.zeros(2, 2), draws=3)
    t = gaussian_target()
    with pytest.raises(ValueError, match=r"x0 must have shape \[chains, d\].*x0\[None\]"):
        L.sample(t, "ula", torch.zeros(2), draws=3, step_size=0.1)
    with pytest.raises(ValueError, match="draws must be a positive int"):
        L.sample(t, "ula", torch.zeros(2, 2), draws=0, step_size=0.1)
    with pytest.raises(ValueError, match="step_size"):
        L.sample(t, "mala", torch.zeros(2, 2), draws=3, step_size=-1.0)
    with pytest.raises(ValueError, match="ula needs a step_size"):
        L.sample(t, "ula", torch.zeros(2, 2), draws=3)
    with pytest.raises(TypeError, match="unexpected options"):
        L.sample(t, "mala", torch.zeros(2, 2), draws=3, step_size=0.1, stepsize=0.1)
    with pytest.raises(ValueError, match="scheme must be one of"):
        L.sample(t, "kinetic", torch.zeros(2, 2), draws=3, step_size=0.1, scheme="leapfrog")
    with pytest.raises(ValueError, match="needs the log-density.*give step_size"):
        L.sample(L.Target.from_score(lambda x: -x), "baoab", torch.zeros(2, 2), draws=3, warmup=10)
    assert t.gradient_evaluations == 0


def test_chains_shape_counts_and_diagnostics() -> None:
    t = gaussian_target()
    run = L.sample(t, "mala", exact_draws(4, 1), draws=50, warmup=30, generator=torch.Generator().manual_seed(0))
    assert run.draws.shape == (4, 50, 2) and run.warmup == 30 and run.sampler == "mala"
    assert run.gradient_evaluations == 81 == t.gradient_evaluations  # one per iteration and the start
    assert run.acceptance is not None and run.acceptance.shape == (4,)
    assert isinstance(run.step_size, torch.Tensor) and run.step_size.shape == (4,)
    diag = run.diagnostics()
    assert diag.ess_bulk.shape == (2,) and diag.split_rhat.shape == (2,) and diag.ess_tail.shape == (2,)
    assert diag.ess_per_gradient == pytest.approx(float(diag.ess_bulk.min()) / (4 * 81))  # per chain-gradient
    rmm = L.sample(t, "randomized_midpoint", exact_draws(4, 1), draws=10, warmup=20, generator=torch.Generator())
    assert rmm.gradient_evaluations == 1 + 20 + 2 * 10  # warm-up by OBABO steps, then two gradients per step


def test_score_only_target_runs_kinetic_with_a_given_step_and_brownian_checks() -> None:
    t = L.Target.from_score(lambda x: -x)
    x0 = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    run = L.sample(t, "baoab", x0, draws=300, warmup=200, step_size=0.3, generator=torch.Generator().manual_seed(1))
    assert run.acceptance is None and run.inverse_mass is not None and run.inverse_mass.shape == (3,)
    assert abs(float(run.draws.reshape(-1, 3).var(0).mean()) - 1.0) < 0.15
    from fewstep.noise.brownian import BrownianPath

    path = BrownianPath((3,), 0, 0.0, 1.0, batch_size=5)
    with pytest.raises(ValueError, match="batch_size = chains = 32"):
        L.sample(t, "ula", x0, draws=3, step_size=0.1, brownian=path)


# ------------------------------------------------------------------------------------------------------- adaptation


def test_mass_windows_follow_stan() -> None:
    ends = [(w[0], w[-1]) for w in mass_windows(1000)]
    assert ends == [(75, 99), (100, 149), (150, 249), (250, 449), (450, 949)]
    assert mass_windows(10) == []
    assert [(w[0], w[-1]) for w in mass_windows(100)] == [(15, 89)]


def test_dual_averaging_finds_the_step_of_a_known_acceptance_curve() -> None:
    """For an acceptance ``exp(-eps)`` the step with acceptance 0.8 is ``-log 0.8``."""
    da = DualAveraging(torch.tensor([1.0, 0.01]), 0.8)
    eps = torch.tensor([1.0, 0.01])
    for _ in range(2000):
        eps = da.update(torch.exp(-eps))
    torch.testing.assert_close(da.final(), torch.full((2,), -math.log(0.8)), rtol=0.02, atol=0.0)


def test_ou_integrals_have_the_exact_joint_law() -> None:
    g = torch.Generator().manual_seed(3)
    n, tau, gamma = 400_000, 0.7, 1.3
    xi = torch.randn(2, n, 1, generator=g, dtype=torch.float64)
    out = ou_integrals(xi[0], xi[1], tau, gamma)
    cov = torch.cov(torch.cat([out.dw, out.e], 1).T)
    expected = torch.tensor(
        [
            [tau, (1 - math.exp(-gamma * tau)) / gamma],
            [(1 - math.exp(-gamma * tau)) / gamma, (1 - math.exp(-2 * gamma * tau)) / (2 * gamma)],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(cov, expected, atol=6e-3, rtol=0.0)
    small = ou_integrals(xi[0][:10], xi[1][:10], 1e-4, 0.5)  # the series branch stays finite and close to dW
    assert torch.isfinite(small.e).all()
    torch.testing.assert_close(small.e, small.dw, atol=1e-6, rtol=0.0)


def test_mala_adapts_to_its_target_acceptance_and_mass() -> None:
    scales = torch.tensor([0.1, 3.0], dtype=torch.float64)
    t = L.Target.from_log_prob(lambda x: -0.5 * ((x / scales) ** 2).sum(-1))
    x0 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * scales
    run = L.sample(t, "mala", x0, draws=300, warmup=500, adapt_mass=True, generator=torch.Generator().manual_seed(2))
    assert abs(float(run.acceptance.mean()) - 0.574) < 0.08  # type: ignore[union-attr]
    assert run.inverse_mass is not None and run.inverse_mass.shape == (2,)  # pooled over the chains
    assert 600 < float(run.inverse_mass[1] / run.inverse_mass[0]) < 1300  # the variances' ratio is 900
    per_chain = L.sample(
        t, "mala", x0, draws=10, warmup=300, adapt_mass=True, pooled_mass=False, generator=torch.Generator()
    )
    assert per_chain.inverse_mass is not None and per_chain.inverse_mass.shape == (16, 2)
    assert 100 < float((per_chain.inverse_mass[:, 1] / per_chain.inverse_mass[:, 0]).median()) < 5000


# --------------------------------------------------------------------------------------------- stationary laws


def _chain_means(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chain time averages of (x1, x2, x1^2, x1 x2, x2^2) and their Monte Carlo standard errors from the
    spread over the independent chains."""
    x = draws
    stats = torch.stack([x[..., 0], x[..., 1], x[..., 0] ** 2, x[..., 0] * x[..., 1], x[..., 1] ** 2], -1)
    per_chain = stats.mean(1)
    return per_chain.mean(0), per_chain.std(0) / math.sqrt(per_chain.shape[0])


def test_mala_is_exact_where_ula_is_biased() -> None:
    """At h = 0.2 on a 2-D Gaussian with correlation 0.8, ULA's stationary covariance is
    ``(P - h P^2 / 2)^{-1}`` (``P`` the precision): more than 5 standard errors off; MALA at the same step matches
    the exact mean and covariance within 3."""
    chains, draws, h = 400, 400, 0.2
    exact = torch.tensor([0.0, 0.0, COV[0, 0], COV[0, 1], COV[1, 1]], dtype=torch.float64)
    ula_cov = torch.linalg.inv(PREC - 0.5 * h * PREC @ PREC)
    ula_exact = torch.tensor([0.0, 0.0, ula_cov[0, 0], ula_cov[0, 1], ula_cov[1, 1]], dtype=torch.float64)
    x0 = exact_draws(chains, 5)

    ula = L.sample(gaussian_target(), "ula", x0, draws=draws, warmup=100, step_size=h, generator=torch.Generator())
    mean, se = _chain_means(ula.draws)
    assert float(((mean - exact).abs() / se)[2:].max()) > 5.0  # ULA's bias is visible
    assert float(((mean - ula_exact).abs() / se).max()) < 3.0  # and is the bias theory predicts

    mala = L.sample(gaussian_target(), "mala", x0, draws=draws, step_size=h, generator=torch.Generator().manual_seed(1))
    mean, se = _chain_means(mala.draws)
    assert float(((mean - exact).abs() / se).max()) < 3.0


def test_ula_bias_is_first_order_in_the_step() -> None:
    """On N(0, 1) ULA's stationary variance is ``1 / (1 - h/2)``: its bias, measured at four steps, falls with
    slope 1 in log-log and matches the formula."""
    t = L.Target.from_log_prob(lambda x: -0.5 * (x**2).sum(-1))
    steps = [0.4, 0.2, 0.1, 0.05]
    biases = []
    for h in steps:
        run = L.sample(
            t,
            "ula",
            torch.randn(100_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
            draws=int(8 / h),
            warmup=int(6 / h),
            step_size=h,
            generator=torch.Generator().manual_seed(1),
        )
        biases.append(float(run.draws.pow(2).mean()) - 1.0)
    for h, b in zip(steps, biases, strict=True):
        assert b == pytest.approx(1 / (1 - h / 2) - 1, rel=0.15)
    x = torch.tensor(steps).log()
    y = torch.tensor(biases).log()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    assert abs(slope - 1.0) < 0.15  # the exact curve's slope over these steps is 1.08


def test_kinetic_samplers_recover_a_gaussian() -> None:
    """With adapted step and mass, BAOAB (exact x-marginal for a Gaussian), OBABO and the randomized midpoint
    method land near the target's covariance (unadjusted: within their O(h^2) bias)."""
    scales = torch.tensor([0.1, 3.0], dtype=torch.float64)
    t = L.Target.from_log_prob(lambda x: -0.5 * ((x / scales) ** 2).sum(-1))
    for name, tol in [("baoab", 0.1), ("obabo", 0.25), ("randomized_midpoint", 0.1)]:
        x0 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * scales
        run = L.sample(t, name, x0, draws=400, warmup=400, generator=torch.Generator().manual_seed(2))
        var = run.draws.reshape(-1, 2).var(0) / scales**2
        assert float((var - 1).abs().max()) < tol, (name, var)
        assert run.inverse_mass is not None


def test_a_diverged_chain_is_reported() -> None:
    """ULA with a step far above 2 / L on N(0, 0.1^2 I) overflows: the run warns, naming the sampler and the step."""
    t = L.Target.from_log_prob(lambda x: -0.5 * x.square().sum(-1) / 0.01)
    with pytest.warns(fewstep.DivergenceWarning, match=r"sampler 'ula': 2 of 2 chains diverged.*step size 0\.5"):
        L.sample(t, "ula", torch.ones(2, 2, dtype=torch.float64), draws=400, step_size=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L.sample(t, "ula", torch.ones(2, 2, dtype=torch.float64), draws=50, step_size=0.005)
