"""Coloured noise (``fewstep.noise.ColoredNoise``): unit per-pixel variance, the power-law spectrum it promises,
white noise at beta = 0, and its use as ``noise_sampler=`` with the stochastic solvers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import mixture_image
from fewstep.noise import ColoredNoise, SeededNoise, colored_noise_sampler
from fewstep.trajectory import Trajectory

F64 = torch.float64


def draws(shape: tuple[int, ...], beta: float, seed: int = 0) -> Tensor:
    like = torch.zeros(shape, dtype=F64)
    return ColoredNoise(like, beta, generator=torch.Generator().manual_seed(seed))(2.0, 1.0)


def radial_slope(z: Tensor) -> float:
    """The least-squares slope of log power against log |f| of the batch-averaged periodogram of square fields,
    over the radial bins between 2 and N/2 cycles per image."""
    n = z.shape[-1]
    power = torch.fft.fft2(z).abs().square().flatten(0, -3).mean(0).numpy()
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n) * n, np.fft.fftfreq(n) * n, indexing="ij"))
    radii = np.arange(2, n // 2 + 1)
    binned = [power[(f >= r - 0.5) & (f < r + 0.5)].mean() for r in radii]
    return float(np.polyfit(np.log(radii), np.log(binned), 1)[0])


@pytest.mark.parametrize("beta", [-1.0, 0.0, 1.0, 2.0, 3.0])
def test_unit_variance_per_pixel(beta: float) -> None:
    z = draws((4000, 3, 9, 12), beta)  # odd and even sides, not square
    var = z.var(0)  # per pixel, over 4000 draws: std error of a variance ~ sqrt(2/4000) = 0.022
    assert abs(float(var.mean()) - 1.0) < 0.01, float(var.mean())
    assert float((var - 1.0).abs().max()) < 0.12, float((var - 1.0).abs().max())
    assert abs(float(z.mean())) < 0.02


@pytest.mark.parametrize("beta", [-1.0, 0.5, 1.0, 2.0, 3.0])
def test_radial_power_spectrum_has_slope_minus_beta(beta: float) -> None:
    slope = radial_slope(draws((256, 32, 32), beta, seed=1))
    assert abs(slope + beta) < 0.08, (slope, beta)


def test_white_noise_has_a_flat_spectrum_and_beta_zero_is_white() -> None:
    assert abs(radial_slope(draws((256, 32, 32), 0.0, seed=2))) < 0.05
    like = torch.zeros(8, 2, 6, 6)
    colored = ColoredNoise(like, 0.0, generator=torch.Generator().manual_seed(3))
    white = torch.randn(like.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(colored(1.0, 0.5), white)
    # a vanishing exponent is white noise up to float rounding (the shaping path itself, not the shortcut)
    nearly = ColoredNoise(like.double(), 1e-12, generator=torch.Generator().manual_seed(3))(1.0, 0.5)
    white64 = torch.randn(like.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(nearly, white64, rtol=0, atol=1e-10)


def test_the_exponent_follows_the_noise_level_and_draws_are_reproducible() -> None:
    like = torch.zeros(512, 32, 32, dtype=F64)
    seen: list[float] = []

    def beta(level: float) -> float:
        seen.append(level)
        return 2.0 if level > 1.0 else 0.0

    a = ColoredNoise(like, beta, generator=torch.Generator().manual_seed(4))
    red, white = a(5.0, 2.0), a(0.8, 0.3)
    assert seen == [5.0, 0.8]  # beta of the step's starting level
    assert abs(radial_slope(red) + 2.0) < 0.08 and abs(radial_slope(white)) < 0.05
    b = ColoredNoise(like, beta, generator=torch.Generator().manual_seed(4))
    assert torch.equal(b(5.0, 2.0), red) and torch.equal(b(0.8, 0.3), white)


def test_flat_states_with_image_shape() -> None:
    z = ColoredNoise(torch.zeros(512, 2 * 16 * 16, dtype=F64), 1.5, image_shape=(16, 16))(1.0, 0.5)
    assert z.shape == (512, 512)
    assert abs(radial_slope(z.reshape(512, 2, 16, 16)) + 1.5) < 0.1


def test_option_errors() -> None:
    like = torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="like"):
        ColoredNoise(torch.zeros(2, 16), 1.0)
    with pytest.raises(ValueError, match="image_shape"):
        ColoredNoise(torch.zeros(2, 15), 1.0, image_shape=(4, 4))
    with pytest.raises(TypeError, match="beta"):
        ColoredNoise(like, "pink")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        ColoredNoise(like, math.inf)
    with pytest.raises(ValueError, match="beta"):
        ColoredNoise(like, lambda level: math.nan)(1.0, 0.5)
    with pytest.raises(ValueError, match="generator, base"):
        ColoredNoise(like, 1.0, generator=torch.Generator(), base=lambda s, t: like)
    with pytest.raises(ValueError, match="base"):
        ColoredNoise(like, 1.0, base=lambda s, t: torch.zeros(3))(1.0, 0.5)


# --- in fewstep.sample --------------------------------------------------------------------------------------

SCHEDULE = fewstep.VP()
IMAGES = mixture_image(components=8, shape=(1, 8, 8))
MODEL = IMAGES.model(SCHEDULE, "epsilon")
STOCHASTIC = [info.name for info in fewstep.solvers.available() if info.stochastic]


def start(batch: int = 6) -> Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)


def nfe_of(solver: str) -> int:
    """10, or the largest NFE below it that the solver can spend exactly."""
    slv = fewstep.solvers.get_solver(solver)
    for n in range(10, 0, -1):
        try:
            slv.steps_for_nfe(n, False, True)
            return n
        except ValueError:
            continue
    raise AssertionError(solver)


def run(solver: str, noise: Tensor, sampler: object = None, **kw: object) -> Tensor:
    return fewstep.sample(MODEL, noise, SCHEDULE, solver, nfe=nfe_of(solver), noise_sampler=sampler, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_every_stochastic_solver_takes_coloured_noise(solver: str) -> None:
    noise = start()
    opts = {"s_churn": 20.0, "s_tmin": 0.0, "s_tmax": math.inf} if solver == "edm_sde" else {}
    red = run(solver, noise, colored_noise_sampler(noise, 2.0, generator=torch.Generator().manual_seed(1)), **opts)
    again = run(solver, noise, colored_noise_sampler(noise, 2.0, generator=torch.Generator().manual_seed(1)), **opts)
    assert torch.isfinite(red).all() and torch.equal(red, again)
    # beta = 0 is white noise: the run equals the one with the same white draws, in the same order
    white = run(solver, noise, colored_noise_sampler(noise, 0.0, generator=torch.Generator().manual_seed(1)), **opts)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(white, run(solver, noise, lambda s, t: torch.randn(noise.shape, generator=g, dtype=F64), **opts))
    assert not torch.allclose(red, white)


@pytest.mark.parametrize("solver", ["euler_ancestral", "dpmpp_2m_sde"])
def test_coloured_noise_gets_the_solvers_levels_and_seeds_per_sample(solver: str) -> None:
    noise = start()
    levels: list[float] = []

    def beta(level: float) -> float:
        levels.append(level)
        return 1.0

    run(solver, noise, ColoredNoise(noise, beta, generator=torch.Generator().manual_seed(2)))
    times = fewstep.spacing.model_times(SCHEDULE, 10, "logsnr")
    expected = [float(s) for s in SCHEDULE.level(times)][:-1]  # every step but the one to the data draws noise
    np.testing.assert_allclose(levels, expected, rtol=1e-12)
    # on a per-sample seeded base, a sample's coloured noise depends on its seed only
    seeds = [5, 9, 2, 7, 1, 3]
    batch = run(solver, noise, ColoredNoise(noise, 1.0, base=SeededNoise(noise, seeds)))
    one = run(solver, noise[2:3], ColoredNoise(noise[2:3], 1.0, base=SeededNoise(noise[2:3], [2])))
    torch.testing.assert_close(batch[2:3], one, rtol=0, atol=1e-12)


def test_trajectories_refuse_coloured_noise() -> None:
    noise = start(2)
    with pytest.raises(ValueError, match="trajectory, noise_sampler"):
        run("ddpm", noise, ColoredNoise(noise, 1.0), trajectory=Trajectory())
