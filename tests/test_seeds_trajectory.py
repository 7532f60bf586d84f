"""Per-sample seeds (``seed=``), recorded trajectories with transition log-probabilities (``trajectory=``,
``fewstep.trajectory.sample_with_logprob``) and mixed ODE/SDE sampling (``sde_window=``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from helpers import randn
from torch import Tensor

import fewstep
from fewstep import sample_with_logprob
from fewstep.bench.memory import peak_allocated_bytes
from fewstep.bench.targets import mixture_2d
from fewstep.noise import SeededNoise
from fewstep.noise.levels import brownian_level_sampler
from fewstep.trajectory import Trajectory, gaussian_log_prob

F64 = torch.float64
TARGET = mixture_2d("default")
SCHEDULE = fewstep.DiscreteVP.linear()
MODEL = TARGET.model(SCHEDULE, "epsilon")
SEEDED = ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"]
RECORDED = ["euler_ancestral", "ddpm", "dpm_solver_1_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"]


def run(solver: str, noise: Tensor, nfe: int = 8, **kw: Any) -> Tensor:
    return fewstep.sample(MODEL, noise, SCHEDULE, solver, nfe=nfe, **kw)  # type: ignore[arg-type]


# --- seeds ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SEEDED)
def test_a_batch_equals_its_samples_drawn_one_at_a_time(solver: str) -> None:
    noise = randn(8, 2, seed=1)
    seeds = [3, 17, 4, 99, 2**40, 0, 5, 6]
    batch = run(solver, noise, seed=seeds)
    alone = torch.cat([run(solver, noise[b : b + 1], seed=[seeds[b]]) for b in range(8)])
    assert torch.equal(batch, alone)  # bit for bit
    # one integer means the seeds seed, ..., seed + B - 1
    torch.testing.assert_close(run(solver, noise, seed=10), run(solver, noise, seed=torch.arange(10, 18)))
    torch.testing.assert_close(run(solver, noise[3:4], seed=13), run(solver, noise, seed=10)[3:4])


@pytest.mark.parametrize("solver", SEEDED)
def test_the_same_seed_reproduces_and_another_differs(solver: str) -> None:
    noise = randn(16, 2, seed=2)
    a, b, c = run(solver, noise, seed=7), run(solver, noise, seed=7), run(solver, noise, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(a, run(solver, noise, noise_sampler=SeededNoise(noise, 7)))


def test_seeded_noise_is_standard_normal_and_independent_across_steps() -> None:
    like = torch.zeros(4000, 2, dtype=F64)
    sampler = SeededNoise(like, 0)
    levels = [float(v) for v in SCHEDULE.level(torch.tensor([1.0, 0.6, 0.3, 0.05]))]
    z = torch.stack([sampler(s, t) for s, t in zip(levels[:-1], levels[1:], strict=True)])
    assert z.shape == (3, 4000, 2)
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1.0) < 0.05
    corr = torch.corrcoef(z.reshape(3, -1))
    assert float((corr - torch.eye(3, dtype=F64)).abs().max()) < 0.05


def test_seeded_noise_works_for_flows_and_image_shapes() -> None:
    flow = fewstep.Flow()
    velocity = TARGET.model(flow, "velocity")
    noise = randn(3, 2, seed=4)
    x = fewstep.sample(velocity, noise, flow, "dpmpp_2m_sde", nfe=6, prediction="velocity", seed=[1, 2, 3])
    y = fewstep.sample(velocity, noise[1:2], flow, "dpmpp_2m_sde", nfe=6, prediction="velocity", seed=[2])
    torch.testing.assert_close(x[1:2], y, rtol=1e-12, atol=1e-12)
    z = SeededNoise(torch.zeros(2, 3, 4, 4), 0)(10.0, 1.0)
    assert z.shape == (2, 3, 4, 4) and z.dtype == torch.float32


def test_seeded_noise_costs_the_memory_of_generator_noise() -> None:
    # On an image-sized state, seed= used to keep a Brownian tree of 2 B float64 copies per node (up to 128 nodes):
    # hundreds of state copies. Per-sample streams allocate the draw itself.
    image = fewstep.bench.targets.mixture_image(components=4, shape=(4, 16, 16))
    noise = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    model = image.model(SCHEDULE, "epsilon")
    state_bytes = noise.numel() * noise.element_size()

    def sample(**kw: Any) -> None:
        fewstep.sample(model, noise, SCHEDULE, "dpmpp_2m_sde", nfe=10, **kw)

    seeded = peak_allocated_bytes(lambda: sample(seed=[1, 2, 3, 4]))
    generator = peak_allocated_bytes(lambda: sample(generator=torch.Generator().manual_seed(1)))
    assert seeded <= generator + 4 * state_bytes, (seeded / state_bytes, generator / state_bytes)


def test_seeded_noise_is_not_the_start_noise_of_the_same_seed() -> None:
    # A user who draws the start noise with manual_seed(s) and passes seed=s must not get that noise again.
    like = torch.zeros(3, 64)
    start = torch.stack([torch.randn(64, generator=torch.Generator().manual_seed(s)) for s in (0, 1, 2)])
    z = SeededNoise(like, [0, 1, 2])(1.0, 0.5)
    assert float(torch.corrcoef(torch.stack([start.flatten(), z.flatten()]))[0, 1].abs()) < 0.2


def test_seeded_noise_resumes_from_its_state() -> None:
    like = torch.zeros(2, 5, dtype=F64)
    noise = SeededNoise(like, [4, 8])
    noise(), noise()
    saved = noise.state()
    rest = [noise() for _ in range(3)]
    again = SeededNoise(like, [4, 8])
    again.restore(saved)
    assert again.draws == 2 and all(torch.equal(a, again()) for a in rest)


def test_brownian_level_sampler_is_one_path_at_every_step_count() -> None:
    # sqrt(h) z over a step equals the sum over its two halves: the noise of runs at different NFE is one path
    like = torch.zeros(3, 4, dtype=F64)
    levels = [float(v) for v in SCHEDULE.level(torch.tensor([0.9, 0.6, 0.3], dtype=F64))]
    coarse, fine = brownian_level_sampler(SCHEDULE, like, [1, 2, 3]), brownian_level_sampler(SCHEDULE, like, [1, 2, 3])
    times = [float(SCHEDULE.t_of_level(v)) for v in levels]
    whole = coarse(levels[0], levels[2]) * math.sqrt(times[0] - times[2])
    halves = fine(levels[0], levels[1]) * math.sqrt(times[0] - times[1]) + fine(levels[1], levels[2]) * math.sqrt(
        times[1] - times[2]
    )
    torch.testing.assert_close(whole, halves, rtol=0, atol=1e-12)


def test_seed_errors() -> None:
    noise = randn(4, 2)
    with pytest.raises(ValueError, match="seed, generator, noise_sampler"):
        run("ddpm", noise, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="seed, generator, noise_sampler"):
        run("ddpm", noise, seed=1, noise_sampler=lambda s, t: noise)
    with pytest.raises(ValueError, match="one integer seed per sample"):
        run("ddpm", noise, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="seeds"):
        run("ddpm", noise, seed=[1, 2, 3, -1])


# --- trajectories -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", RECORDED)
def test_log_prob_is_the_gaussian_density_of_the_recorded_transition(solver: str) -> None:
    noise = randn(16, 2, seed=5)
    traj = sample_with_logprob(MODEL, noise, SCHEDULE, solver, nfe=8, seed=3)
    assert isinstance(traj, Trajectory) and traj.sample is not None
    assert torch.equal(traj.sample, run(solver, noise, seed=3))  # recording does not change the run
    assert len(traj.states) == 9 and len(traj.means) == len(traj.stds) == len(traj.log_probs) == 8
    assert torch.equal(traj.states[0], noise) and torch.equal(traj.states[-1], traj.sample)
    assert traj.stochastic == [True] * 7 + [False]  # no noise on the step to the data
    total = torch.zeros(16, dtype=F64)
    for i in range(8):
        mean, std, lp, x_next = traj.means[i], traj.stds[i], traj.log_probs[i], traj.states[i + 1]
        if std == 0:
            assert lp is None and traj.noises[i] is None and torch.equal(mean, x_next)
            continue
        assert lp is not None and lp.shape == (16,)
        expected = torch.distributions.Normal(mean, std).log_prob(x_next).sum(1)
        torch.testing.assert_close(lp, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(x_next, mean + std * traj.noises[i], rtol=1e-12, atol=1e-12)  # type: ignore[operator]
        total += lp
    torch.testing.assert_close(traj.log_prob, total)


@pytest.mark.parametrize("solver", RECORDED)
def test_replaying_the_recorded_noise_reproduces_the_sample(solver: str) -> None:
    noise = randn(8, 2, seed=6)
    traj = sample_with_logprob(MODEL, noise, SCHEDULE, solver, nfe=10, generator=torch.Generator().manual_seed(1))
    again = sample_with_logprob(MODEL, noise, SCHEDULE, solver, nfe=10, noise_sampler=traj.replay())
    assert torch.equal(again.sample, traj.sample)  # type: ignore[arg-type]
    for a, b in zip(traj.states, again.states, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(again.log_prob, traj.log_prob, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_log_prob_is_differentiable_through_the_means() -> None:
    scale = torch.tensor(1.0, dtype=F64, requires_grad=True)

    def model(x: Tensor, t: Tensor) -> Tensor:
        return scale * MODEL(x, t)

    traj = sample_with_logprob(model, randn(4, 2), SCHEDULE, "dpmpp_2m_sde", nfe=6, seed=0, grad=True)
    (grad,) = torch.autograd.grad(traj.log_prob.sum(), scale)
    assert math.isfinite(float(grad)) and float(grad) != 0.0


def test_gaussian_log_prob_matches_torch() -> None:
    x, mean = randn(3, 2, 5, seed=1), randn(3, 2, 5, seed=2)
    expected = torch.distributions.Normal(mean, 0.3).log_prob(x).sum((1, 2))
    torch.testing.assert_close(gaussian_log_prob(x, mean, 0.3), expected)


def test_deterministic_solvers_record_states_only() -> None:
    noise = randn(4, 2)
    traj = sample_with_logprob(MODEL, noise, SCHEDULE, "dpmpp_2m", nfe=5)
    assert traj.stds == [0.0] * 5 and torch.equal(traj.log_prob, torch.zeros(4, dtype=F64))
    assert torch.equal(traj.sample, run("dpmpp_2m", noise, nfe=5))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="trajectory"):
        run("ddpm", noise, trajectory=[])


# --- sde_window -------------------------------------------------------------------------------------------

WINDOWED = [*RECORDED, "edm_sde"]


def windowed(solver: str, noise: Tensor, **kw: Any) -> Tensor:
    if solver == "edm_sde":
        edm = fewstep.EDM()
        opts = {"s_churn": 10.0, **kw}
        return fewstep.sample(
            TARGET.model(edm, "sample"), 80.0 * noise, edm, solver, nfe=11, prediction="sample", **opts
        )  # type: ignore[arg-type]
    return run(solver, noise, nfe=10, **kw)


@pytest.mark.parametrize("solver", WINDOWED)
def test_sde_window(solver: str) -> None:
    noise = randn(64, 2, seed=7)
    ode = windowed(solver, noise, s_churn=0.0) if solver == "edm_sde" else windowed(solver, noise, eta=0.0)
    sde = windowed(solver, noise, seed=1)
    hi = fewstep.EDM().t_max if solver == "edm_sde" else SCHEDULE.t_max
    assert torch.equal(windowed(solver, noise, seed=1, sde_window=(-1.0, -2.0)), ode)  # contains no steps
    assert torch.equal(windowed(solver, noise, seed=1, sde_window=(hi, 0.0)), sde)  # contains every step
    window = (2.0, 0.1) if solver == "edm_sde" else (0.6, 0.2)  # EDM: two of its three churning steps
    part = windowed(solver, noise, seed=1, sde_window=window)
    assert torch.equal(part, windowed(solver, noise, seed=1, sde_window=window))
    d_ode, d_sde = float((part - ode).norm()), float((part - sde).norm())
    assert 0 < d_ode and 0 < d_sde


def test_sde_window_records_noise_only_inside_the_window() -> None:
    noise = randn(8, 2)
    times = fewstep.spacing.model_times(SCHEDULE, 10, "logsnr")
    traj = sample_with_logprob(MODEL, noise, SCHEDULE, "dpmpp_2m_sde", spacing=times, seed=0, sde_window=(0.7, 0.3))
    inside = [0.3 <= float(t) <= 0.7 for t in times]
    assert traj.stochastic == inside and any(inside) and not all(inside)


@pytest.mark.parametrize("window", [(0.2, 0.5), (1.0,), "ab", (math.nan, 0.0)])
def test_sde_window_errors(window: object) -> None:
    with pytest.raises(ValueError, match="sde_window"):
        run("ddpm", randn(4, 2), sde_window=window)
