"""TDS's twist variance and its 64-D mode choice, DriftLite (fewstep.posterior.smc.driftlite) against exact tilts,
its VCG least squares, weights, calls and errors."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep
from fewstep.bench.targets import GaussianMixture, mixture_2d, mixture_nd
from fewstep.bench.targets.posterior import as_full_covariance, mixture_posterior, reward_tilt
from fewstep.posterior import Linear
from fewstep.posterior.smc import TDS, driftlite, smc, vcg_coefficients
from fewstep.posterior.smc.twist import twisted_step

F64 = torch.float64
SCHED = fewstep.VP()
MIX = mixture_2d()
MODEL = as_full_covariance(MIX).model(SCHED, "epsilon")
B_VEC = torch.tensor([2.0, 0.0], dtype=F64)


def reward(x: torch.Tensor) -> torch.Tensor:
    """``r(x) = -|x|^2 / 2 + b^T x`` (Q = I): its Laplacian is -D."""
    return -0.5 * x.square().sum(1) + x @ B_VEC.to(x)


def noise(b: int, k: int, seed: int, d: int = 2) -> torch.Tensor:
    return torch.randn(b, k, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def refuse(*args: object, **kwargs: object) -> torch.Tensor:
    raise AssertionError("the model must not be called")


# TDS: the twist's variance


def test_tds_twist_variance_formulas() -> None:
    meas = Linear(y=torch.zeros(1, 1, dtype=F64), noise_std=0.3, A=torch.ones(1, 2, dtype=F64))
    alpha, sigma = 0.6, 0.8
    q = (sigma / alpha) ** 2
    assert TDS(meas, data_std=None).twist_variance(alpha, sigma) == pytest.approx(q)
    assert TDS(meas, data_std=None, twist_scale=0.5).twist_variance(alpha, sigma) == pytest.approx(0.5 * q)
    s2 = 1.5**2
    assert TDS(meas, data_std=1.5).twist_variance(alpha, sigma) == pytest.approx(s2 * q / (s2 + q))
    assert TDS(meas).twist_variance(alpha, sigma) == pytest.approx(q / (1 + q))  # default data_std = 1
    assert TDS(meas, twist_scale=0.0).twist_variance(alpha, sigma) == 0.0  # the paper's plug-in twist
    assert TDS(meas).twist_variance(1.0, 0.0) == 0.0  # the clean end: the exact likelihood
    assert TDS(meas).twist_variance(0.0, 1.0) == pytest.approx(1.0)  # pure noise: bounded by S^2
    assert math.isinf(TDS(meas, data_std=None).twist_variance(0.0, 1.0))
    x0 = torch.tensor([[1.0, 2.0]], dtype=F64)
    w = 0.09 + q / (1 + q)
    expected = -((0.0 - 3.0) ** 2) / (2 * w) - 0.5 * math.log(w)  # one measured number: m = 1
    assert float(TDS(meas).value(x0, alpha, sigma)[0]) == pytest.approx(expected)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="data_std"):
            TDS(meas, data_std=bad)


def test_tds_tweedie_variance_gradient_and_curvature_on_gaussian_data() -> None:
    """For data N(m, S^2 I) the denoiser's Jacobian is j I, j = alpha S^2 / (alpha^2 S^2 + sigma^2), so Tweedie's
    covariance along A is |a|^2 S^2 q / (S^2 + q): the value, its gradient (r held) and the curvature
    |B^T res|^2 / (w |res|^2), B = j a^T, against these hand formulas."""
    std, alpha, sigma, s = 1.3, 0.6, 0.8, 0.3
    prior = as_full_covariance(GaussianMixture.single(2, mean=0.2, std=std))
    a = torch.tensor([[0.6, -0.8]], dtype=F64)  # a unit row: |a|^2 = 1
    meas = Linear(y=torch.tensor([[0.7]], dtype=F64), noise_std=s, A=a)
    x = torch.tensor([[0.4, -1.1], [2.0, 0.3]], dtype=F64, requires_grad=True)
    x0, _ = prior.denoise(x, alpha, sigma)
    twist = TDS(meas, variance="tweedie").value_and_gradient(x, x0, alpha, sigma)
    q, s2 = (sigma / alpha) ** 2, std**2
    w = s**2 + float(a.square().sum()) * s2 * q / (s2 + q)
    j = alpha * s2 / (alpha**2 * s2 + sigma**2)
    x0h = 0.2 + j * (x.detach() - alpha * 0.2)
    res = 0.7 - x0h @ a[0]
    torch.testing.assert_close(twist.value, -res.square() / (2 * w) - 0.5 * math.log(w))
    torch.testing.assert_close(twist.grad, (j * res / w)[:, None] * a)
    assert twist.curvature is not None
    torch.testing.assert_close(twist.curvature, torch.full((2,), j * j * float(a.square().sum()) / w, dtype=F64))
    gauss = TDS(meas, data_std=std).value_and_gradient(x, prior.denoise(x, alpha, sigma)[0], alpha, sigma)
    torch.testing.assert_close(gauss.value, twist.value)  # |a| = 1: the Gaussian formula's r^2 is exact here
    with pytest.raises(ValueError, match="variance"):
        TDS(meas, variance="tweedy")
    with pytest.raises(ValueError, match="variance"):
        TDS(meas, variance="tweedie", twist=False)
    with pytest.raises(TypeError, match="optimal_proposal"):
        TDS(meas, optimal_proposal=1)  # type: ignore[arg-type]


def test_twisted_step_is_the_product_gaussian() -> None:
    """The proposal N(m + c^2 g / (1 + c^2 h), c^2 (I - rho g^ g^T)): its log ratio against the prior's step equals
    log N(x; m, c^2 I) - log q(x) from torch's multivariate normal, and its draws have that mean and covariance."""
    c, d = 0.7, 3
    mean = torch.tensor([[0.1, -0.2, 0.3]], dtype=F64)
    g = torch.tensor([[1.0, 2.0, -0.5]], dtype=F64)
    h = torch.tensor([3.0], dtype=F64)
    z = torch.randn(1, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    x, log_ratio = twisted_step(mean, c, g, h, z)
    ch = c * c * float(h)
    unit = g[0] / g[0].norm()
    cov = c * c * (torch.eye(d, dtype=F64) - ch / (1 + ch) * torch.outer(unit, unit))
    q = torch.distributions.MultivariateNormal(mean[0] + c * c * g[0] / (1 + ch), cov)
    p = torch.distributions.MultivariateNormal(mean[0], c * c * torch.eye(d, dtype=F64))
    torch.testing.assert_close(log_ratio[0], p.log_prob(x[0]) - q.log_prob(x[0]))
    many = torch.randn(200_000, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    xs, _ = twisted_step(mean.expand(200_000, d), c, g.expand(200_000, d), h.expand(200_000), many)
    torch.testing.assert_close(xs.mean(0), q.mean, atol=5e-3, rtol=0)
    torch.testing.assert_close(torch.cov(xs.T), cov, atol=5e-3, rtol=0)
    x1, r1 = twisted_step(mean, c, g, None, z)  # no curvature: TDS's first-order shift
    torch.testing.assert_close(x1, mean + c * c * g + c * z)
    p1 = torch.distributions.MultivariateNormal(mean[0] + c * c * g[0], c * c * torch.eye(d, dtype=F64))
    torch.testing.assert_close(r1[0], p.log_prob(x1[0]) - p1.log_prob(x1[0]))


def test_tds_picks_the_64d_posterior_mode() -> None:
    """The 64-D mixture, 16 random projections: the posterior keeps one of 200 modes. With the bounded twist
    variance (default) the particles find it; with the flat-prior variance (unbounded at high noise) most miss it."""
    mix = mixture_nd()
    g = torch.Generator().manual_seed(7)
    a = torch.randn(16, mix.dim, generator=g, dtype=F64) / math.sqrt(mix.dim)
    x = mix.sample(1, generator=g)
    meas = Linear(y=x @ a.T + 0.3 * torch.randn(1, 16, generator=g, dtype=F64), noise_std=0.3, A=a)
    post = mixture_posterior(mix, meas)
    mode = int(post.log_weights.argmax())
    assert float(torch.softmax(post.log_weights, 0)[mode]) > 0.999
    model = as_full_covariance(mix).model(SCHED, "epsilon")
    start = torch.randn(8, 64, mix.dim, generator=torch.Generator().manual_seed(1), dtype=F64)
    mass = {}
    for name, pot in (("bounded", TDS(meas)), ("flat", TDS(meas, data_std=None))):
        r = smc(model, start, SCHED, pot, nfe=20, generator=torch.Generator().manual_seed(2))
        resp = post.responsibilities(r.samples.reshape(-1, mix.dim))[:, mode].reshape(8, 64)
        mass[name] = float((r.weights * resp).sum(1).mean())
    assert mass["bounded"] > 0.85, mass
    assert mass["flat"] < 0.75, mass


# DriftLite: VCG's least squares


def test_vcg_coefficients_solve_the_weighted_least_squares() -> None:
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 50, 2, generator=gen, dtype=F64)
    theta = torch.tensor([[2.0, -3.0], [0.5, 0.0], [-1.0, 4.0]], dtype=F64)
    g0 = 7.0 - (basis * theta[:, None, :]).sum(-1)  # g0 + basis @ theta is the constant 7
    log_w = torch.randn(3, 50, generator=gen, dtype=F64)
    torch.testing.assert_close(vcg_coefficients(g0, basis, log_w, ridge=0.0), theta)
    # with noise: the weighted normal equations, solved by hand
    g1 = g0 + 0.3 * torch.randn(3, 50, generator=gen, dtype=F64)
    got = vcg_coefficients(g1, basis, log_w, ridge=0.0)
    for b in range(3):
        w = torch.softmax(log_w[b], 0)
        lc = basis[b] - w @ basis[b]
        gc = g1[b] - w @ g1[b]
        expected = torch.linalg.solve(lc.T @ (w[:, None] * lc), -(lc.T @ (w * gc)))
        torch.testing.assert_close(got[b], expected)
    # one particle: nothing to fit, no control
    assert torch.equal(vcg_coefficients(g0[:, :1], basis[:, :1], log_w[:, :1]), torch.zeros(3, 2, dtype=F64))


# DriftLite: weights and exactness


def test_driftlite_without_drift_weights_are_the_final_tilt() -> None:
    """``drift="none"``, no resampling: the annealed increments telescope, ``log w = lam r(x_N)`` (normalised)."""
    r = driftlite(MODEL, noise(3, 8, 0), SCHED, reward, nfe=12, lam=0.7, drift="none", ess_threshold=0.0)
    expected = (0.7 * reward(r.samples.reshape(-1, 2))).reshape(3, 8)
    torch.testing.assert_close(r.log_weights, expected - torch.logsumexp(expected, 1, keepdim=True))
    assert not bool(r.resampled.any())


@pytest.mark.parametrize(("drift", "nfe"), [("none", 20), ("guidance", 20), ("vcg", 60)])
def test_driftlite_matches_the_exact_tilt_of_a_gaussian(drift: str, nfe: int) -> None:
    """A Gaussian prior N(m, S^2 I) tilted by ``exp(r)``: the weighted mean against the closed form. ``"none"`` and
    ``"guidance"`` carry the exact discrete weights; VCG's continuous-time weights need more steps (at NFE 20 its
    mean is off by about 0.1: docs/posterior.md)."""
    prior = GaussianMixture.single(2, mean=0.3, std=1.2)
    model = as_full_covariance(prior).model(SCHED, "epsilon")
    exact_mean = reward_tilt(prior, torch.eye(2, dtype=F64), B_VEC, 1.0).means[0]
    gen = torch.Generator().manual_seed(3)
    r = driftlite(model, noise(1, 2000, 1), SCHED, reward, nfe=nfe, drift=drift, generator=gen)
    mean = r.expectation(r.samples)[0]
    assert float((mean - exact_mean).abs().max()) < 0.06, (drift, mean, exact_mean)


@pytest.mark.parametrize(("drift", "nfe"), [("none", 20), ("guidance", 20), ("vcg", 20)])
def test_driftlite_component_weights_approach_the_exact_tilt(drift: str, nfe: int) -> None:
    """The 2-D mixture tilted by ``exp(r)``: the particles' weighted responsibilities against the exact tilt's
    component weights (total variation), closer with K = 256 than with K = 4. (At this size the three drifts are
    within the metric's noise of each other, about 0.05.)"""
    tilt = reward_tilt(MIX, torch.eye(2, dtype=F64), B_VEC, 1.0)
    exact = torch.softmax(tilt.log_weights, 0)
    errors = {}
    for k in (4, 256):
        gen = torch.Generator().manual_seed(k)
        r = driftlite(MODEL, noise(8, k, 5 + k), SCHED, reward, nfe=nfe, drift=drift, generator=gen)
        resp = tilt.responsibilities(r.samples.reshape(-1, 2)).reshape(8, k, -1)
        errors[k] = float(((r.weights[..., None] * resp).sum(1) - exact).abs().sum(1).mean() / 2)
    assert errors[256] < 0.08 and errors[256] < errors[4] / 3, errors


def test_vcg_keeps_the_weights_more_even_than_guidance() -> None:
    """DriftLite's claim: the controlled drift lowers the weights' variance (a higher final ESS, no resampling)."""
    start = noise(64, 64, 11)
    ess = {}
    for drift in ("none", "guidance", "vcg"):
        r = driftlite(
            MODEL,
            start,
            SCHED,
            reward,
            nfe=20,
            drift=drift,
            ess_threshold=0.0,
            generator=torch.Generator().manual_seed(1),
        )
        ess[drift] = float(r.ess[-1].mean())
    assert ess["vcg"] > ess["guidance"] + 5 and ess["vcg"] > ess["none"] + 5, ess


def test_driftlite_network_calls() -> None:
    for drift, basis, backward in (
        ("vcg", ("reward", "score"), 11),
        ("vcg", ("reward",), 0),
        ("guidance", ("reward", "score"), 0),
    ):
        calls = fewstep.CallCount()
        r = driftlite(MODEL, noise(2, 3, 0), SCHED, reward, nfe=12, drift=drift, basis=basis, calls=calls)
        assert (calls.network, calls.backward) == (12, backward), (drift, basis)
        assert (r.calls.network, r.calls.backward) == (12, backward)
        assert r.ess.shape == (13, 2) and r.resampled.shape == (12, 2)
        assert bool(torch.isfinite(r.samples).all())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"drift": "vgc"}, ValueError, "did you mean 'vcg'"),
        ({"basis": ("reward", "laplace")}, ValueError, "basis"),
        ({"basis": ()}, ValueError, "basis"),
        ({"lam": float("nan")}, ValueError, "lam"),
        ({"ess_threshold": 1.5}, ValueError, "ess_threshold"),
        ({"resample": "stratified"}, ValueError, "resample"),
        ({"laplacian": 3.0}, TypeError, "laplacian"),
        ({"reward": None}, TypeError, "reward"),
    ],
)
def test_driftlite_errors_before_any_model_call(kwargs: dict[str, object], error: type, match: str) -> None:
    args: dict[str, object] = {"reward": reward, "nfe": 10}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        driftlite(refuse, noise(1, 2, 0), SCHED, **args)  # type: ignore[arg-type]


def test_driftlite_refuses_no_particles_and_a_detaching_network() -> None:
    with pytest.raises(ValueError, match="particles"):
        driftlite(refuse, torch.zeros(1, 0, 2, dtype=F64), SCHED, reward, nfe=10)
    with pytest.raises(ValueError, match="particles"):
        driftlite(refuse, noise(1, 2, 0), SCHED, reward, nfe=10, particles=0)
    detaching = MIX.model(SCHED, "epsilon")
    with pytest.raises(TypeError, match="basis=\\('reward',\\)"):
        driftlite(detaching, noise(1, 2, 0), SCHED, reward, nfe=10)
    r = driftlite(detaching, noise(1, 2, 0), SCHED, reward, nfe=10, basis=("reward",))
    assert bool(torch.isfinite(r.samples).all())
