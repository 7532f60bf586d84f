"""LD3 with gradients through the run (fewstep.tune.backprop, fewstep.tune.ld3) on a single Gaussian.

Data ``N(0, c^2 I)`` under VP has the exact noise prediction ``eps(x, t) = sigma x / (alpha^2 c^2 + sigma^2)`` and
the exact probability-flow solution ``x_0 = c x_T / sqrt(alpha_T^2 c^2 + sigma_T^2)``: the references here are
these formulas and central differences of ``fewstep.sample`` itself, never the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewstep
from fewstep.model import CallCount
from fewstep.prepare import as_denoiser
from fewstep.spacing import model_times
from fewstep.tune.backprop import TimeDifferentiableRun
from fewstep.tune.budget import Budget, Objective
from fewstep.tune.ld3 import learn_times
from fewstep.tune.params import LogSNRIncrements

SCHEDULE = fewstep.VP()
SCALE = torch.tensor([0.3, 2.5], dtype=torch.float64)


def gaussian_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    alpha, sigma = SCHEDULE.alpha(t)[:, None], SCHEDULE.sigma(t)[:, None]
    return sigma * x / (alpha**2 * SCALE**2 + sigma**2)


def exact(noise: torch.Tensor) -> torch.Tensor:
    t = torch.tensor(SCHEDULE.t_max, dtype=torch.float64)
    return SCALE * noise / torch.sqrt(SCHEDULE.alpha(t) ** 2 * SCALE**2 + SCHEDULE.sigma(t) ** 2)


def denoiser() -> fewstep.Denoiser:
    return as_denoiser(gaussian_eps, SCHEDULE, "epsilon", "auto", None, 1.0, None, 0.0, None, None)


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def free_times(solver: str, nfe: int) -> np.ndarray:
    steps = fewstep.solvers.get_solver(solver).steps_for_nfe(nfe, False, True)
    times = model_times(SCHEDULE, steps, "logsnr").numpy()
    times[-1] = max(times[-1], 3e-3)  # room for the central differences inside the schedule's range
    return times


def sampled(times: np.ndarray, solver: str, x: torch.Tensor) -> torch.Tensor:
    return fewstep.sample(gaussian_eps, x, SCHEDULE, solver, spacing=torch.from_numpy(times), prediction="epsilon")


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc_bh2", "ipndm", "dpm_solver_2"])
def test_time_gradient_matches_central_differences_of_sample(solver: str) -> None:
    times = free_times(solver, 6)
    x = noise(6, 0)
    target = torch.full_like(x, 0.7)
    run = TimeDifferentiableRun(denoiser(), solver, {}, CallCount())
    theta = torch.tensor(times[1:], requires_grad=True)
    out = run.run(theta, x)
    torch.testing.assert_close(out, sampled(times, solver, x), rtol=0, atol=1e-12)  # the solver's own sample
    ((out - target) ** 2).sum().backward()

    def loss(free: np.ndarray) -> float:
        return float(((sampled(np.concatenate([times[:1], free]), solver, x) - target) ** 2).sum())

    fd = []
    for j in range(len(times) - 1):
        up, down = times[1:].copy(), times[1:].copy()
        up[j] += 1e-6
        down[j] -= 1e-6
        fd.append((loss(up) - loss(down)) / 2e-6)
    np.testing.assert_allclose(theta.grad.numpy(), fd, rtol=1e-5, atol=1e-5)
    own = CallCount()
    fewstep.sample(gaussian_eps, x, SCHEDULE, solver, spacing=torch.from_numpy(times), prediction="epsilon", calls=own)
    assert run.calls.network == own.network + 1  # the time probe, then the run; the replays call no network


def test_gradient_reaches_the_noise_too() -> None:
    times = free_times("dpmpp_2m", 4)
    x = noise(3, 1).requires_grad_(True)
    run = TimeDifferentiableRun(denoiser(), "dpmpp_2m", {}, CallCount())
    run.run(torch.tensor(times[1:], requires_grad=True), x).sum().backward()
    y = x.detach().clone().requires_grad_(True)
    sample = fewstep.sample(
        gaussian_eps, y, SCHEDULE, "dpmpp_2m", spacing=torch.from_numpy(times), prediction="epsilon", grad=True
    )
    sample.sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("schedule", "step", "rtol"),
    [(SCHEDULE, 1e-6, 1e-5), (fewstep.DiscreteVP.scaled_linear(), 1e-7, 1e-4)],  # a table: steps inside a segment
    ids=["vp", "sd"],
)
def test_free_times_match_times_and_differentiate(schedule: fewstep.NoiseSchedule, step: float, rtol: float) -> None:
    params = LogSNRIncrements(schedule, 5)
    z = np.array([0.3, -0.2, 0.5, 0.1, -1.0])
    zt = torch.tensor(z, requires_grad=True)
    free = params.free_times(zt)
    np.testing.assert_allclose(free.detach().numpy(), params.times(z)[1:], rtol=1e-12)
    free.sum().backward()
    fd = [(params.times(z + step * e)[1:].sum() - params.times(z - step * e)[1:].sum()) / (2 * step) for e in np.eye(5)]
    np.testing.assert_allclose(zt.grad.numpy(), fd, rtol=rtol, atol=1e-8)


def test_stochastic_solvers_and_guided_runs_are_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="stochastic"):
        TimeDifferentiableRun(denoiser(), "dpmpp_2m_sde", {}, CallCount())


def test_ld3_lowers_the_error_against_the_exact_solution_on_held_out_noise() -> None:
    solver, nfe = "dpmpp_2m", 4
    calib, held = noise(32, 2), noise(256, 3)
    budget = Budget(400)
    objective = Objective(denoiser(), solver, {}, nfe, calib, exact(calib), budget, loss="rmse")
    params = LogSNRIncrements(SCHEDULE, nfe)
    start = model_times(SCHEDULE, nfe, "logsnr").numpy()
    start_loss = objective.error(start)
    steps = learn_times(objective, params, params.logits(start), budget)
    assert budget.spent <= budget.limit
    assert budget.calls.backward == nfe * steps  # every backward pass counted
    assert objective.best[0] < 0.7 * start_loss
    learned = objective.best[1]
    before = torch.sqrt(torch.mean((sampled(start, solver, held) - exact(held)) ** 2))
    after = torch.sqrt(torch.mean((sampled(learned, solver, held) - exact(held)) ** 2))
    assert after < 0.7 * before


def test_tune_ld3_spends_exactly_nfe_and_is_deterministic() -> None:
    options = dict(calibration=16, holdout=16, shape=(2,), budget=400, grid=20, solver="dpmpp_2m", seed=0)
    first = fewstep.tune(gaussian_eps, SCHEDULE, nfe=4, method="ld3", prediction="epsilon", **options)
    again = fewstep.tune(gaussian_eps, SCHEDULE, nfe=4, method="ld3", prediction="epsilon", **options)
    assert first.times == again.times
    assert first.calls <= 400
    calls = CallCount()
    fewstep.sample(gaussian_eps, noise(4, 5), SCHEDULE, solver=first, prediction="epsilon", calls=calls)
    assert calls.network == 4
    assert first.errors["holdout"] <= first.errors["start_holdout"]


def test_time_gradient_of_a_network_without_a_time_derivative() -> None:
    """A network that reads its time as a Python number: the forward difference in time stands in for autograd."""

    def detached(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return gaussian_eps(x, torch.tensor(t.detach().tolist(), dtype=torch.float64))

    times = free_times("dpmpp_2m", 5)
    x = noise(4, 6)
    den = as_denoiser(detached, SCHEDULE, "epsilon", "auto", None, 1.0, None, 0.0, None, None)
    run = TimeDifferentiableRun(den, "dpmpp_2m", {}, CallCount())
    theta = torch.tensor(times[1:], requires_grad=True)
    run.run(theta, x).sum().backward()
    assert run.time_differentiable is False
    assert run.calls.network == 1 + 2 * 5  # the probe, then the run and one time step per request
    reference = torch.tensor(times[1:], requires_grad=True)
    TimeDifferentiableRun(denoiser(), "dpmpp_2m", {}, CallCount()).run(reference, x).sum().backward()
    np.testing.assert_allclose(theta.grad.numpy(), reference.grad.numpy(), rtol=1e-3, atol=1e-4)


def test_loss_option_is_checked_before_any_call() -> None:
    with pytest.raises(ValueError, match="loss: choose one of auto, rmse, mean_distance"):
        fewstep.tune(gaussian_eps, SCHEDULE, nfe=4, calibration=8, shape=(2,), loss="mse", prediction="epsilon")


def test_per_sample_conditioning_is_refused_before_any_call() -> None:
    calls = []

    def model(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        calls.append(1)
        return gaussian_eps(x, t)

    per_sample = {"c": torch.ones(16)}
    with pytest.raises(ValueError, match=r"model_kwargs\['c'\].*batch dimension 1"):
        fewstep.tune(model, SCHEDULE, nfe=6, calibration=16, holdout=16, shape=(2,), model_kwargs=per_sample)
    with pytest.raises(ValueError, match=r"uncond_kwargs\['c'\]"):
        fewstep.tune(
            model, SCHEDULE, nfe=6, calibration=16, holdout=16, shape=(2,), model_kwargs={"c": torch.ones(1)},
            guidance_scale=2.0, uncond_kwargs=per_sample,
        )  # fmt: skip
    assert not calls


def test_a_tabulated_schedule_differentiates_in_its_times() -> None:
    """DiscreteVP (Stable Diffusion's table) interpolates log alpha piecewise linearly; with times that require a
    gradient it does so in torch, with the same values, so LD3 can tune it: the time gradient of a run matches
    central differences of fewstep.sample (times mid-segment, away from the table's kinks)."""
    sd = fewstep.DiscreteVP.scaled_linear()

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = sd.alpha(t)[:, None], sd.sigma(t)[:, None]
        return sigma * x / (alpha**2 * SCALE**2 + sigma**2)

    times = np.floor(model_times(sd, 5, "logsnr").numpy() * 1000) / 1000 + 5e-4  # the middle of table segments
    times[0] = sd.t_max
    x = noise(4, 2)
    den = as_denoiser(eps, sd, "epsilon", "t", None, 1.0, None, 0.0, None, None)
    run = TimeDifferentiableRun(den, "dpmpp_2m", {}, CallCount())
    theta = torch.tensor(times[1:], requires_grad=True)
    out = run.run(theta, x)

    def sample_at(ts: np.ndarray) -> torch.Tensor:
        return fewstep.sample(
            eps, x, sd, "dpmpp_2m", spacing=torch.from_numpy(ts), prediction="epsilon", time_input="t"
        )

    torch.testing.assert_close(out, sample_at(times), rtol=0, atol=1e-12)
    out.sum().backward()
    fd = []
    for j in range(len(times) - 1):
        up, down = times.copy(), times.copy()
        up[j + 1] += 1e-7
        down[j + 1] -= 1e-7
        fd.append(float((sample_at(up).sum() - sample_at(down).sum()) / 2e-7))
    np.testing.assert_allclose(theta.grad.numpy(), fd, rtol=1e-4, atol=1e-6)
