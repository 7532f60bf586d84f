"""The SD3/Flux timestep shift of flow schedules (``shift=`` of ``fewstep.sample`` and ``model_times``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.spacing import model_times


def g(u: float, shift: float) -> float:
    return shift * u / (1 + (shift - 1) * u)


@pytest.mark.parametrize("n", [4, 10, 28])
def test_shift_3_uniform_equals_diffusers_flow_match_euler(n: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sch.set_timesteps(n)
    expected = sch.sigmas[:-1].double()  # the last sigma is the clean end, 0
    schedule = fewstep.Flow(t_min=g(1 / 1000, 3.0))  # diffusers' sigma_min is itself shifted
    times = model_times(schedule, n, "uniform", shift=3.0)
    torch.testing.assert_close(times, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("spacing", ["uniform", "logsnr", "karras", "exponential", "time_quadratic"])
@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0, 7.5])
def test_shift_keeps_t_max_and_the_order(spacing: str, shift: float) -> None:
    schedule = fewstep.Flow(t_min=0.01) if shift >= 1 else fewstep.Flow(t_min=1e-3)
    base = model_times(schedule, 12, spacing)
    if shift < 1:  # the last time moves below t_min
        with pytest.raises(ValueError, match="shift"):
            model_times(schedule, 12, spacing, shift=shift)
        return
    times = model_times(schedule, 12, spacing, shift=shift)
    assert float(times[0]) == schedule.t_max
    assert bool(torch.all(torch.diff(times) < 0))
    assert float(times[-1]) >= schedule.t_min
    np.testing.assert_allclose(times.numpy(), [g(float(t), shift) for t in base], rtol=1e-15, atol=1e-15)


def test_shift_on_an_interpolant_below_1_keeps_t_max() -> None:
    sched = fewstep.Interpolant(lambda t: 1.0 - t, lambda t: t, t_min=0.01, t_max=0.9)
    times = model_times(sched, 6, "uniform", shift=2.0)
    assert float(times[0]) == 0.9
    expected = [0.9 * g(float(t) / 0.9, 2.0) for t in model_times(sched, 6, "uniform")]
    np.testing.assert_allclose(times.numpy(), expected, rtol=1e-15)


def test_sample_with_shift_evaluates_at_the_shifted_times() -> None:
    target = mixture_2d()
    schedule = fewstep.Flow(t_min=g(1 / 1000, 3.0))
    model = target.model(schedule, "velocity")
    seen: list[float] = []
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    den = fewstep.Denoiser(lambda x, t: seen.append(float(t[0])) or model(x, t), schedule, "velocity")
    out = fewstep.sample(den, noise, solver="euler", nfe=6, spacing="uniform", shift=3.0)
    assert bool(torch.isfinite(out).all())
    np.testing.assert_allclose(seen, model_times(schedule, 6, "uniform", shift=3.0).numpy(), rtol=1e-12)
    # equals passing the shifted times themselves
    times = model_times(schedule, 6, "uniform", shift=3.0)
    torch.testing.assert_close(
        fewstep.sample(model, noise, schedule, "euler", spacing=times, prediction="velocity"), out
    )


@pytest.mark.parametrize("shift", [0.0, -1.0, float("nan"), float("inf"), True])
def test_bad_shift_is_refused(shift) -> None:
    with pytest.raises(ValueError, match="shift"):
        model_times(fewstep.Flow(), 5, "uniform", shift=shift)


@pytest.mark.parametrize("schedule", [fewstep.VP(), fewstep.EDM(), fewstep.DiscreteVP.linear()])
def test_shift_is_for_flows_only(schedule) -> None:
    with pytest.raises(ValueError, match="shift"):
        model_times(schedule, 5, "uniform", shift=3.0)
    model_times(schedule, 5, "uniform", shift=1.0)  # the default is fine
    noise = torch.randn(2, 2)
    with pytest.raises(ValueError, match="shift"):
        fewstep.sample(mixture_2d().model(schedule, "epsilon"), noise, schedule, "euler", nfe=4, shift=2.0)
