"""fewstep.reducers: teleportation's exactness and gain, and the exact call accounting of the evaluation layers."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import Counting

import fewstep
from fewstep.bench.targets import GaussianMixture, mixture_2d, reference_solution_from_time
from fewstep.reducers import ABCache, GaussianFit, SkipCache, Teleport, TStitch, choose_t_skip

F64 = torch.float64
VP = fewstep.VP()


def _gaussian(d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    return torch.randn(d, generator=g, dtype=F64), 0.3 * a @ a.T + 0.05 * torch.eye(d, dtype=F64)


class AnisotropicGaussian:
    """The exact posterior mean of N(mu, S) by a linear solve per sample (independent of GaussianFit's eigenbasis)."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor):
        self.mu, self.cov = mu, cov

    def denoise(self, x, alpha, sigma):
        xs = x.reshape(x.shape[0], -1)
        a = torch.as_tensor(alpha, dtype=F64).reshape(-1)
        s = torch.as_tensor(sigma, dtype=F64).reshape(-1)
        a, s = a.expand(xs.shape[0]), s.expand(xs.shape[0])
        eye = torch.eye(xs.shape[1], dtype=F64)
        x0 = torch.stack(
            [self.mu + ai * self.cov @ torch.linalg.solve(ai**2 * self.cov + si**2 * eye, xi - ai * self.mu)
             for xi, ai, si in zip(xs, a, s, strict=True)]
        )  # fmt: skip
        return x0.reshape(x.shape), ((xs - a[:, None] * x0) / s[:, None]).reshape(x.shape)


@pytest.mark.parametrize("schedule", [fewstep.VP(), fewstep.EDM(), fewstep.Flow(t_max=0.999)], ids=repr)
def test_gaussian_jump_is_the_exact_probability_flow_solution(schedule) -> None:
    mu, cov = _gaussian(3)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    t0, t1 = schedule.t_max, 0.5 * (schedule.t_max + schedule.t_min)
    x = x * float(schedule.sigma(t0))
    exact = reference_solution_from_time(AnisotropicGaussian(mu, cov), x, schedule, t0, t1, rtol=1e-13, atol=1e-13)
    jumped = GaussianFit(mu, cov).flow_times(x, schedule, t0, t1)
    assert (jumped - exact).abs().max() < 1e-10


def test_teleport_on_a_single_gaussian_target_matches_the_exact_solution() -> None:
    target = GaussianMixture.single(2, mean=[0.5, -1.0], std=0.7)
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    teleport = Teleport(GaussianFit(target.mean(), target.covariance()), t_skip=0.2)
    exact = reference_solution_from_time(target, noise, VP, VP.t_max, 0.2, rtol=1e-13, atol=1e-13)
    assert (teleport.jump(noise, VP) - exact).abs().max() < 1e-10


def test_gaussian_fit_from_the_model_is_exact_for_gaussian_data() -> None:
    target = GaussianMixture.single(3, mean=[0.5, -1.0, 2.0], std=0.7)
    denoiser = fewstep.Denoiser(target.model(VP, "epsilon"), VP, "epsilon")
    fit = GaussianFit.from_model(denoiser, (3,), dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fit.mean, target.mean(), atol=1e-8, rtol=0)
    torch.testing.assert_close(fit.cov, target.covariance(), atol=1e-8, rtol=0)
    assert fit.calls == 1


def test_gaussian_fit_from_samples_is_the_sample_mean_and_covariance() -> None:
    data = torch.randn(50, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    fit = GaussianFit.from_samples(data)
    flat = data.reshape(50, 4)
    centred = flat - flat.mean(0)
    torch.testing.assert_close(fit.cov, centred.T @ centred / 49)
    torch.testing.assert_close(fit.mean, flat.mean(0))


def test_t_skip_follows_the_gaussian_error_and_teleport_lowers_rmse_at_equal_nfe() -> None:
    target = mixture_2d()
    model = Counting(target.model(VP, "epsilon"))
    denoiser = fewstep.Denoiser(model, VP, "epsilon")
    fit = GaussianFit(target.mean(), target.covariance())
    loose = choose_t_skip(fit, denoiser, (2,), 0.1, dtype=F64, generator=torch.Generator().manual_seed(0))
    tight = choose_t_skip(fit, denoiser, (2,), 0.003, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert VP.t_min < loose.t_skip < tight.t_skip < VP.t_max  # a looser tolerance skips more
    assert tight.predicted[-1] > 0.003 and all(e <= 0.003 for e in tight.predicted[:-1])
    k = len(tight.predicted) - 1  # t_skip lies between the last two probes
    assert tight.times[k] < tight.t_skip <= tight.times[k - 1]
    lam = VP.lambda_(torch.tensor(tight.times, dtype=F64)).tolist()
    rise = 0.5 * (tight.rates[k - 1] + tight.rates[k]) * (lam[k] - lam[k - 1])  # the trapezoid, by hand
    assert math.isclose(tight.predicted[k] - tight.predicted[k - 1], rise, rel_tol=1e-12)
    assert model.calls == loose.network_calls + tight.network_calls
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    exact = reference_solution_from_time(target, noise, VP, VP.t_max)
    teleport = Teleport.auto(fit, denoiser, (2,), 0.01, dtype=F64, generator=torch.Generator().manual_seed(0))
    for nfe in (8, 10, 12):
        calls = fewstep.CallCount()
        plain = fewstep.sample(denoiser, noise, solver="dpmpp_2m", nfe=nfe)
        jumped = teleport.sample(denoiser, noise, solver="dpmpp_2m", nfe=nfe, calls=calls)
        assert calls.nfe == nfe
        rmse_plain = (plain - exact).pow(2).mean().sqrt()
        assert (jumped - exact).pow(2).mean().sqrt() < 0.8 * rmse_plain


def test_teleport_with_t_skip_at_t_max_is_the_plain_run() -> None:
    target = mixture_2d()
    denoiser = fewstep.Denoiser(target.model(VP, "epsilon"), VP, "epsilon")
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    teleport = Teleport(GaussianFit(target.mean(), target.covariance()), VP.t_max)
    for solver, nfe, final in [("dpmpp_2m", 6, "zero"), ("heun", 8, "t_min"), ("dpm_solver_3", 9, "zero")]:
        plain = fewstep.sample(denoiser, noise, solver=solver, nfe=nfe, final=final)
        torch.testing.assert_close(teleport.sample(denoiser, noise, solver=solver, nfe=nfe, final=final), plain)


def _run(layer, solver="dpmpp_2m", nfe=10, target=None, schedule=VP):
    target = target or mixture_2d()
    model = Counting(target.model(schedule, "epsilon"))
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    calls = fewstep.CallCount()
    out = fewstep.sample(
        model, noise, schedule, solver, nfe=nfe, prediction="epsilon", calls=calls, generator=torch.Generator().manual_seed(1),
        wrappers=[] if layer is None else [layer],
    )  # fmt: skip
    return out, calls, model


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpm_solver_2", "unipc_bh2", "dpmpp_3m_sde"])
@pytest.mark.parametrize("every", [1, 2, 3])
def test_ab_cache_accounting_matches_its_plan(solver: str, every: int) -> None:
    cache = ABCache(every=every, order=2)
    out, calls, model = _run(cache, solver)
    assert calls.network + calls.substituted == calls.requests == 10
    assert model.calls == calls.network == cache.max_network(calls.requests) == cache.counts.network
    assert calls.substituted == cache.counts.substituted
    assert bool(torch.isfinite(out).all())
    if every == 1:
        torch.testing.assert_close(out, _run(None, solver)[0], rtol=0, atol=0)


def test_ab_cache_extrapolation_is_exact_for_outputs_polynomial_in_lambda() -> None:
    """A model whose x0 prediction is linear in lambda: the order-2 extrapolation reproduces it exactly."""
    c0, c1 = torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([0.05, 0.1], dtype=F64)

    def model(x, time):
        lam = VP.lambda_(time.to(F64))
        return c0 + lam[:, None] * c1 + 0 * x

    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    plain = fewstep.sample(model, noise, VP, "dpmpp_2m", nfe=9, prediction="sample")
    cache = ABCache(every=3, order=2)
    cached = fewstep.sample(model, noise, VP, "dpmpp_2m", nfe=9, prediction="sample", wrappers=[cache])
    assert cache.counts.substituted > 0
    torch.testing.assert_close(cached, plain, rtol=0, atol=1e-12)
    # in t the same outputs are not polynomial: the extrapolation differs
    in_t = ABCache(every=3, order=2, variable="t")
    assert (
        fewstep.sample(model, noise, VP, "dpmpp_2m", nfe=9, prediction="sample", wrappers=[in_t]) - plain
    ).abs().max() > 1e-6


def test_skip_cache_bounds_and_extremes() -> None:
    never = SkipCache(threshold=0.0, max_skips=3)
    out, calls, _ = _run(never, nfe=12)
    assert calls.substituted == 0 and calls.network == 12
    torch.testing.assert_close(out, _run(None, nfe=12)[0], rtol=0, atol=0)
    for max_skips in (1, 2, 3):
        always = SkipCache(threshold=math.inf, max_skips=max_skips)
        out, calls, model = _run(always, nfe=12)
        assert calls.network == model.calls == always.min_network(12) == always.counts.network
        assert calls.network + calls.substituted == calls.requests == 12
        assert bool(torch.isfinite(out).all())
    some = SkipCache(threshold=0.2, max_skips=2)
    _, calls, _ = _run(some, nfe=12)
    assert some.min_network(12) <= calls.network <= some.max_network(12)


def test_t_stitch_with_the_same_model_is_the_plain_run_and_counts_each_model() -> None:
    target = mixture_2d()
    small_model = Counting(target.model(VP, "epsilon"))
    small = fewstep.Denoiser(small_model, VP, "epsilon")
    stitch = TStitch(small, t_switch=0.4)
    out, calls, large = _run(stitch, nfe=10)
    times = fewstep.spacing.model_times(VP, 10, "logsnr").tolist()  # dpmpp_2m's requests with final="zero"
    assert small_model.calls == stitch.small_calls.network == stitch.small_requests(times) == calls.substituted > 0
    assert large.calls == calls.network == 10 - calls.substituted
    torch.testing.assert_close(out, _run(None, nfe=10)[0], rtol=0, atol=0)


def test_options_are_checked_before_any_call() -> None:
    with pytest.raises(ValueError, match="every"):
        ABCache(every=0)
    with pytest.raises(ValueError, match="variable"):
        ABCache(variable="sigma")
    with pytest.raises(ValueError, match="quantity"):
        SkipCache(quantity="v")
    with pytest.raises(ValueError, match="threshold"):
        SkipCache(threshold=-1.0)
    with pytest.raises(TypeError, match="small"):
        TStitch(lambda x, t: x, 0.5)  # type: ignore[arg-type]
    fit = GaussianFit(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="t_skip"):
        Teleport(fit, math.nan)
    with pytest.raises(ValueError, match="t_skip"):
        Teleport(fit, 5.0).jump(torch.zeros(1, 2), VP)
    with pytest.raises(ValueError, match="spacing"):
        Teleport(fit, 0.5).sample(lambda x, t: x, torch.zeros(1, 2), VP, "euler", 4, "leading")
    with pytest.raises(ValueError, match="cov"):
        GaussianFit(torch.zeros(2), torch.eye(3))


def test_the_gaussian_fits_denoiser_matches_the_single_gaussian_target() -> None:
    target = GaussianMixture.single(3, mean=[0.5, -1.0, 2.0], std=0.7)
    fit = GaussianFit(target.mean(), target.covariance())
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for schedule in (fewstep.VP(), fewstep.EDM()):
        ours = fewstep.sample(fit.denoiser(schedule), noise, solver="dpmpp_2m", nfe=8)
        exact_model = fewstep.sample(
            target.model(schedule, "epsilon"), noise, schedule, "dpmpp_2m", nfe=8, prediction="epsilon"
        )
        torch.testing.assert_close(ours, exact_model, rtol=0, atol=1e-10)
