"""Noise schedules (identities, inverses, derivatives, discrete tables) and timestep spacings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.schedules import NoiseSchedule
from fewstep.spacing import DISCRETE_SPACINGS, SPACINGS, model_times

F64 = torch.float64


def _cos(t: torch.Tensor) -> torch.Tensor:
    return torch.cos(0.5 * math.pi * t)


def _sin(t: torch.Tensor) -> torch.Tensor:
    return torch.sin(0.5 * math.pi * t)


SCHEDULES: dict[str, NoiseSchedule] = {
    "vp": fewstep.VP(),
    "vp_short": fewstep.VP(beta_min=0.5, beta_max=10.0, t_min=1e-4, t_max=0.8),
    "cosine": fewstep.Cosine(),
    "ddpm_linear": fewstep.DiscreteVP.linear(),
    "sd_scaled_linear": fewstep.DiscreteVP.scaled_linear(),
    "sd_zero_snr": fewstep.DiscreteVP.scaled_linear(rescale_zero_terminal_snr=True),
    "ddpm_100": fewstep.DiscreteVP.linear(num_train_timesteps=100, beta_end=0.2),
    "ve": fewstep.VE(),
    "edm": fewstep.EDM(),
    "flow": fewstep.Flow(),
    "flow_short": fewstep.Flow(t_min=0.01, t_max=0.95),
    "trig": fewstep.Interpolant(_cos, _sin, t_max=0.999),
    "trig_to_1": fewstep.Interpolant(_cos, _sin),
    "linear_interpolant": fewstep.Interpolant(lambda t: 1.0 - t, lambda t: t),
}
VP_FAMILY = [n for n, s in SCHEDULES.items() if isinstance(s, fewstep.VP | fewstep.Cosine | fewstep.DiscreteVP)]
DISCRETE = [n for n, s in SCHEDULES.items() if isinstance(s, fewstep.DiscreteVP)]
CONTINUOUS = [s for s in SPACINGS if s not in DISCRETE_SPACINGS]


def interior(schedule: NoiseSchedule, n: int = 201) -> torch.Tensor:
    """Times in [t_min, t_max], t_max left out where alpha(t_max) = 0 (lambda = -inf there)."""
    t = torch.linspace(schedule.t_min, schedule.t_max, n, dtype=F64)
    return t[:-1] if float(schedule.alpha(schedule.t_max)) == 0.0 else t


@pytest.mark.parametrize("name", VP_FAMILY)
def test_variance_preserving(name: str) -> None:
    s = SCHEDULES[name]
    t = torch.linspace(0.0 if isinstance(s, fewstep.DiscreteVP) else s.t_min, s.t_max, 1001, dtype=F64)
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-12)
    # alpha decreases from (about) 1, sigma increases
    assert torch.all(torch.diff(s.alpha(t)) < 0) and torch.all(torch.diff(s.sigma(t)) > 0)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_lambda_inverse(name: str) -> None:
    s = SCHEDULES[name]
    t = interior(s)
    lam = s.lambda_(t)
    assert torch.all(torch.isfinite(lam)) and torch.all(torch.diff(lam) < 0)  # strictly decreasing in t
    # t_of_lambda(lambda(t)) == t
    torch.testing.assert_close(s.t_of_lambda(lam), t, rtol=0, atol=1e-10)
    # lambda(t_of_lambda(l)) == l on a uniform range of l
    ls = torch.linspace(float(lam[-1]), float(lam[0]), 301, dtype=F64)
    torch.testing.assert_close(s.lambda_(s.t_of_lambda(ls)), ls, rtol=0, atol=1e-10 * max(1.0, float(ls.abs().max())))
    # the noise level and its inverse (used by the karras / exponential spacings)
    torch.testing.assert_close(s.t_of_level(s.level(t)), t, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_derivatives_match_central_differences(name: str) -> None:
    s = SCHEDULES[name]
    if isinstance(s, fewstep.DiscreteVP):  # piecewise: evaluate mid-segment, with a step inside the segment
        n = s.num_train_timesteps
        t = (torch.arange(0, n - 1, max(1, n // 50), dtype=F64) + 1.5) / n
        h = 1e-4 / n
    else:
        lo, hi = s.t_min, s.t_max
        t = torch.linspace(lo + 0.02 * (hi - lo), hi - 0.02 * (hi - lo), 97, dtype=F64)
        h = 1e-6 * (hi - lo)
    for value, derivative in ((s.alpha, s.dalpha), (s.sigma, s.dsigma)):
        fd = (value(t + h) - value(t - h)) / (2 * h)
        exact = derivative(t)
        torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-7 * float(fd.abs().max()))


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_table(name: str) -> None:
    s = SCHEDULES[name]
    n = s.num_train_timesteps
    idx = torch.arange(n, dtype=F64)
    t = s.t_of_index(idx)
    torch.testing.assert_close(t, (idx + 1) / n, rtol=0, atol=1e-15)
    torch.testing.assert_close(s.index(t), idx, rtol=0, atol=1e-10)
    torch.testing.assert_close(s.alpha(t), torch.from_numpy(np.sqrt(s.alphas_cumprod)), rtol=1e-12, atol=0)
    assert float(s.alpha(0.0)) == 1.0 and float(s.sigma(0.0)) == 0.0
    assert s.t_min == 1.0 / n and s.t_max == 1.0
    # log alpha is linear between the training points
    mid = (idx[:-1] + 1.5) / n
    torch.testing.assert_close(s.log_alpha(mid), 0.5 * (s.log_alpha(t[:-1]) + s.log_alpha(t[1:])), rtol=1e-12, atol=0)


def test_discrete_betas_and_alphas_cumprod_agree() -> None:
    betas = np.linspace(1e-4, 0.02, 1000)
    a = fewstep.DiscreteVP(betas=betas)
    b = fewstep.DiscreteVP(alphas_cumprod=np.cumprod(1.0 - betas))
    t = torch.linspace(0.0, 1.0, 777, dtype=F64)
    torch.testing.assert_close(a.alpha(t), b.alpha(t), rtol=1e-14, atol=0)
    torch.testing.assert_close(a.alpha(t), fewstep.DiscreteVP.linear().alpha(t), rtol=1e-14, atol=0)


def test_zero_terminal_snr() -> None:
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    plain = fewstep.DiscreteVP.scaled_linear()
    s = SCHEDULES["sd_zero_snr"]
    assert s.alphas_cumprod[-1] == 2.0**-24  # clamped as diffusers does, so lambda stays finite
    assert float(s.alpha(s.t_max)) == pytest.approx(2.0**-12, rel=1e-14) and math.isfinite(float(s.lambda_(s.t_max)))
    assert s.alphas_cumprod[0] == pytest.approx(plain.alphas_cumprod[0], rel=1e-12)  # the first step is kept
    assert plain.alphas_cumprod[-1] > 1e-3  # ... while the original schedule ends far from zero SNR
    # the same rescaling as diffusers (Lin et al., Alg. 1), here in float64
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2
    ac = torch.cumprod(1.0 - rescale_zero_terminal_snr(betas), 0).numpy()
    np.testing.assert_allclose(s.alphas_cumprod[:-1], ac[:-1], rtol=1e-10)
    assert ac[-1] < 1e-20


def test_interpolant_with_autograd_derivatives_equals_flow() -> None:
    flow = fewstep.Flow(t_min=1e-3, t_max=1.0)
    interp = fewstep.Interpolant(lambda t: 1.0 - t, lambda t: t, t_min=1e-3, t_max=1.0)
    t = torch.linspace(1e-3, 1.0, 501, dtype=F64)
    for name in ("alpha", "sigma", "dalpha", "dsigma", "level"):
        torch.testing.assert_close(getattr(interp, name)(t), getattr(flow, name)(t), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(interp.lambda_(t[:-1]), flow.lambda_(t[:-1]), rtol=1e-14, atol=1e-14)
    lam = torch.linspace(-8.0, 8.0, 101, dtype=F64)
    torch.testing.assert_close(interp.t_of_lambda(lam), flow.t_of_lambda(lam), rtol=0, atol=1e-14)
    assert interp.ode_variable == flow.ode_variable == "t" and interp.alpha_clean == 1.0
    for spacing in CONTINUOUS:
        torch.testing.assert_close(model_times(interp, 9, spacing), model_times(flow, 9, spacing), rtol=0, atol=1e-13)
    # and sampling is the same
    from fewstep.bench.targets import mixture_2d

    target = mixture_2d("wide")
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for solver in ("euler", "dpmpp_2m"):
        runs = [
            fewstep.sample(target.model(s, "velocity"), noise, s, solver, nfe=8, prediction="velocity")
            for s in (flow, interp)
        ]
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-11, atol=1e-11)


def test_interpolant_with_given_derivatives() -> None:
    given = fewstep.Interpolant(
        _cos, _sin, lambda t: -0.5 * math.pi * torch.sin(0.5 * math.pi * t), lambda t: 0.5 * math.pi * _cos(t)
    )
    auto = SCHEDULES["trig_to_1"]
    t = torch.linspace(1e-3, 0.999, 101, dtype=F64)
    torch.testing.assert_close(given.dalpha(t), auto.dalpha(t), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(given.dsigma(t), auto.dsigma(t), rtol=1e-14, atol=1e-15)


def test_interpolant_alpha_at_rounding_level_is_pure_noise() -> None:
    """cos(pi/2) is 6e-17 in float64: the trigonometric interpolant to t = 1 starts from pure noise (alpha = 0),
    so a logSNR grid is finite and distinct (with lambda(1) = -37 it put times closer to 1 than float64 holds)."""
    s = SCHEDULES["trig_to_1"]
    assert float(s.alpha(1.0)) == 0.0 and float(s.lambda_(1.0)) == -math.inf
    t = torch.tensor([0.0, 0.5, 0.999, 1.0 - 1e-12], dtype=F64)
    torch.testing.assert_close(s.alpha(t), _cos(t), rtol=0, atol=0)  # unchanged below t_max
    for n in (2, 5, 30, 100):
        times = model_times(s, n, "logsnr")
        assert len(times) == n and torch.all(torch.diff(times) < 0) and float(times[0]) == 1.0
    # a genuinely small alpha(t_max) is kept
    short = fewstep.Interpolant(_cos, _sin, t_max=0.99999)
    assert float(short.alpha(short.t_max)) > 0


# --- spacings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_spacing_is_strictly_decreasing_inside_the_range(name: str) -> None:
    s = SCHEDULES[name]
    names = CONTINUOUS + (list(DISCRETE_SPACINGS) if name in DISCRETE else [])
    for spacing in names:
        for n in (1, 2, 3, 5, 10, 37, 100):
            times = model_times(s, n, spacing)
            assert times.dtype == F64 and times.shape == (n,), (spacing, n)
            assert torch.all(torch.diff(times) < 0), (spacing, n, times)
            assert float(times.min()) >= s.t_min and float(times.max()) <= s.t_max, (spacing, n)
            if spacing in CONTINUOUS or n == 1:
                assert float(times[0]) == s.t_max, (spacing, n)
            if spacing in CONTINUOUS and n > 1 and spacing != "sgm_uniform":  # it stops a step above t_min
                assert float(times[-1]) == s.t_min, (spacing, n)


@pytest.mark.parametrize("name", ["vp", "cosine", "edm", "ve", "ddpm_linear", "trig"])
def test_continuous_spacings_are_uniform_in_their_variable(name: str) -> None:
    s = SCHEDULES[name]
    n = 12
    checks = {
        "uniform": lambda t: t,
        "logsnr": lambda t: s.lambda_(t),
        "time_quadratic": lambda t: t.sqrt(),
        "exponential": lambda t: s.level(t).log(),
        "karras": lambda t: s.level(t) ** (1 / 7),
    }
    for spacing, variable in checks.items():
        v = variable(model_times(s, n, spacing))
        d = torch.diff(v)
        torch.testing.assert_close(d, d.mean().expand_as(d), rtol=1e-9, atol=1e-12, msg=spacing)


def test_karras_spacing_equals_k_diffusion() -> None:
    from k_diffusion.sampling import get_sigmas_karras

    edm = SCHEDULES["edm"]
    for n in (2, 5, 18, 40):
        mine = edm.sigma(model_times(edm, n, "karras"))
        theirs = get_sigmas_karras(n, 0.002, 80.0, rho=7.0, device="cpu").to(F64)[:-1]  # k-diffusion appends 0
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=0)  # k-diffusion builds them in float32


@pytest.mark.parametrize("spacing", DISCRETE_SPACINGS)
@pytest.mark.parametrize("n", [2, 5, 7, 10, 20, 25, 50, 64, 100, 999])
def test_discrete_spacings_equal_diffusers(spacing: str, n: int) -> None:
    from diffusers import DDIMScheduler

    s = SCHEDULES["ddpm_linear"]
    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    scheduler.set_timesteps(n)
    index = s.index(model_times(s, n, spacing))
    torch.testing.assert_close(index, scheduler.timesteps.to(F64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [5, 10, 50])
def test_leading_spacing_with_steps_offset_equals_diffusers(n: int) -> None:
    """Stable Diffusion's scheduler config uses leading spacing with steps_offset=1."""
    from diffusers import DDIMScheduler

    s = SCHEDULES["sd_scaled_linear"]
    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(n)
    index = s.index(model_times(s, n, "leading", steps_offset=1))
    torch.testing.assert_close(index, scheduler.timesteps.to(F64), rtol=0, atol=1e-9)


def test_trailing_spacing_has_exactly_n_times() -> None:
    """diffusers' np.arange(N, 0, -N/n) has n + 1 entries for some n (61, 103, ...), the last one the invalid
    timestep -1; fewstep takes its first n."""
    from diffusers import DDIMScheduler

    s = SCHEDULES["ddpm_linear"]
    for n in range(1, 1001):
        assert len(model_times(s, n, "trailing")) == n
    for n in (61, 103):
        scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
        scheduler.set_timesteps(n)
        assert len(scheduler.timesteps) == n + 1 and int(scheduler.timesteps[-1]) == -1
        index = s.index(model_times(s, n, "trailing"))
        torch.testing.assert_close(index, scheduler.timesteps[:n].to(F64), rtol=0, atol=1e-9)


def test_user_times_are_validated_and_returned_as_float64() -> None:
    s = SCHEDULES["vp"]
    times = model_times(s, 1, [0.9, 0.5, 0.1])
    assert times.dtype == F64 and times.tolist() == [0.9, 0.5, 0.1]
    # a time a rounding error outside the range is clamped into it
    times = model_times(s, 1, torch.tensor([1.0 + 1e-12, 0.5], dtype=F64))
    assert float(times[0]) == 1.0
    with pytest.raises(ValueError, match="steps"):
        model_times(s, 0, "logsnr")
    with pytest.raises(ValueError, match="rho"):
        model_times(s, 5, "karras", rho=-1.0)
    with pytest.raises(ValueError, match="steps"):
        model_times(SCHEDULES["ddpm_100"], 101, "trailing")
