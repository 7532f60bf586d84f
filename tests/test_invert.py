"""fewstep.inversion.invert: deterministic solvers run from data to noise; the round trip through fewstep.sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import labelled_mixture_2d, mixture_2d
from fewstep.bench.targets.mixture import GaussianMixture
from fewstep.inversion import INVERTIBLE, invert
from fewstep.spacing import model_times

SCHEDULES = {"VP": fewstep.VP, "EDM": fewstep.EDM, "Flow": fewstep.Flow}


def round_trip_error(schedule: fewstep.NoiseSchedule, solver: str, nfe: int, x0: torch.Tensor) -> float:
    prediction = (
        "velocity" if isinstance(schedule, fewstep.Flow) else "epsilon"
    )  # epsilon is singular at a Flow's t_max
    model = mixture_2d().model(schedule, prediction)
    latent = invert(model, x0, schedule, solver, nfe, prediction=prediction)
    back = fewstep.sample(model, latent, schedule, solver, nfe, prediction=prediction, final="t_min")
    return float((back - x0).norm() / x0.norm())


def observed_order(nfes: tuple[int, ...], errors: list[float]) -> float:
    """The slope of -log(error) against log(nfe) over the last two NFEs (the asymptotic regime)."""
    return math.log(errors[-2] / errors[-1]) / math.log(nfes[-1] / nfes[-2])


@pytest.mark.parametrize("family", list(SCHEDULES))
@pytest.mark.parametrize(("solver", "order"), [("ddim", 1), ("dpmpp_2m", 2), ("dpmpp_3m", 3), ("unipc_bh2", 3)])
def test_round_trip_error_falls_at_the_solvers_order(family: str, solver: str, order: int) -> None:
    schedule = SCHEDULES[family]()
    x0 = mixture_2d().sample(32, torch.Generator().manual_seed(0)).to(torch.float64)
    nfes = (20, 40, 80, 160)
    errors = [round_trip_error(schedule, solver, nfe, x0) for nfe in nfes]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert observed_order(nfes, errors) > order - 0.5, errors


def test_ddim_inversion_of_a_standard_gaussian_is_the_product_of_its_step_factors() -> None:
    # N(0, I) under VP: x0_hat = alpha x, eps_hat = sigma x, so each DDIM step multiplies the state by
    # alpha_{i+1} alpha_i + sigma_{i+1} sigma_i = cos(theta_{i+1} - theta_i) (alpha = cos theta), and the exact ODE
    # flow is the identity: the inversion tends to x0 as the steps shrink.
    schedule = fewstep.VP()
    model = GaussianMixture.single(3).model(schedule, "epsilon")
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = []
    for nfe in (10, 100, 1000):
        t = model_times(schedule, nfe + 1, "logsnr").numpy()[::-1]
        alpha = np.array([float(schedule.alpha(float(s))) for s in t])
        sigma = np.array([float(schedule.sigma(float(s))) for s in t])
        factor = float(np.prod(alpha[1:] * alpha[:-1] + sigma[1:] * sigma[:-1]))
        latent = invert(model, x0, schedule, "ddim", nfe)
        torch.testing.assert_close(latent, factor * x0, rtol=1e-12, atol=1e-12)
        errors.append(float((latent - x0).norm() / x0.norm()))
    assert errors[0] > 5 * errors[1] > 25 * errors[2]
    assert errors[2] < 5e-3


def test_ddim_inversion_of_a_gaussian_round_trips_in_the_limit() -> None:
    schedule = fewstep.EDM()
    model = GaussianMixture.single(2, mean=[1.0, -2.0], std=0.5).model(schedule, "epsilon")
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    errors = []
    for nfe in (25, 250):
        latent = invert(model, x0, schedule, "ddim", nfe)
        back = fewstep.sample(model, latent, schedule, "ddim", nfe, final="t_min")
        errors.append(float((back - x0).norm() / x0.norm()))
    assert errors[1] < errors[0] / 7, errors  # first order: 10x fewer errors for 10x the steps


def test_given_increasing_times_equal_the_named_spacing() -> None:
    schedule = fewstep.VP()
    model = mixture_2d().model(schedule, "epsilon")
    x0 = mixture_2d().sample(4, torch.Generator().manual_seed(0)).to(torch.float64)
    times = model_times(schedule, 11, "logsnr").flip(0)
    torch.testing.assert_close(
        invert(model, x0, schedule, "dpmpp_2m", spacing=times), invert(model, x0, schedule, "dpmpp_2m", 10)
    )


class Refusing:
    """A network that fails the test when called."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: object) -> torch.Tensor:
        raise AssertionError("the model was called before the error")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver": "euler_ancestral", "nfe": 10}, "edit-friendly"),
        ({"solver": "dpmpp_2m_sde", "nfe": 10}, "stochastic"),
        ({"solver": "heunpp2", "nfe": 10}, "choose one of"),
        ({"solver": "ddim", "nfe": 0}, "nfe: must be a positive integer"),
        ({"solver": "ddim", "nfe": 2.5}, "nfe"),
        ({"solver": "ddim"}, "nfe, steps"),
        ({"solver": "ddim", "spacing": [0.9, 0.5, 0.1]}, "strictly increasing"),
        ({"solver": "ddim", "spacing": [0.1, 0.5, 0.5]}, "strictly increasing"),
        ({"solver": "ddim", "spacing": [0.1, 0.5, 2.0]}, "range"),
        ({"solver": "ddim", "nfe": 5, "spacing": [0.1, 0.5, 0.9]}, "nfe"),
    ],
)
def test_errors_before_any_model_call(kwargs: dict[str, object], match: str) -> None:
    x0 = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=match):
        invert(Refusing(), x0, fewstep.VP(), **kwargs)  # type: ignore[arg-type]


def test_x0_must_be_a_float_tensor() -> None:
    with pytest.raises(TypeError, match="x0"):
        invert(Refusing(), torch.zeros(2, 2, dtype=torch.int64), fewstep.VP(), "ddim", 5)


def test_sampling_still_refuses_increasing_times() -> None:
    with pytest.raises(ValueError, match="strictly decreasing"):
        fewstep.sample(Refusing(), torch.zeros(2, 2), fewstep.VP(), "ddim", spacing=[0.1, 0.5, 0.9])


def test_every_invertible_solver_is_deterministic() -> None:
    infos = {info.name: info for info in fewstep.solvers.available()}
    assert INVERTIBLE and all(name in infos and not infos[name].stochastic for name in INVERTIBLE)


def test_cfg_guidance_in_invert_calls_the_model_as_sample_does() -> None:
    labelled = labelled_mixture_2d()
    schedule = fewstep.VP()
    model = labelled.model(schedule, "epsilon")
    y = torch.tensor([0, 1, 2, 3])
    x0 = labelled.sample(y, torch.Generator().manual_seed(3))
    cfg = {"model_kwargs": {"y": y}, "uncond_kwargs": {"y": torch.full_like(y, -1)}, "guidance_scale": 7.5}
    errors = []
    for nfe in (20, 80):
        inv_calls, smp_calls = fewstep.CallCount(), fewstep.CallCount()
        latent = invert(model, x0, schedule, "dpmpp_2m", nfe, calls=inv_calls, **cfg)
        back = fewstep.sample(model, latent, schedule, "dpmpp_2m", nfe, final="t_min", calls=smp_calls, **cfg)
        assert inv_calls == smp_calls and inv_calls.network == nfe and inv_calls.branches == 2 * nfe
        errors.append(float((back - x0).norm() / x0.norm()))
    assert errors[1] < errors[0] / 4, errors  # second order: 16x from 20 to 80 evaluations, asked for 4x
    unguided = invert(model, x0, schedule, "dpmpp_2m", 20, model_kwargs={"y": y})
    assert not torch.allclose(unguided, latent if nfe == 20 else invert(model, x0, schedule, "dpmpp_2m", 20, **cfg))


def test_x0_is_not_written_to_and_dtype_is_kept() -> None:
    schedule = fewstep.Flow()
    model = mixture_2d().model(schedule, "velocity")
    x0 = mixture_2d().sample(3, torch.Generator().manual_seed(0)).to(torch.float32)
    copy = x0.clone()
    latent = invert(model, x0, schedule, "unipc_bh2", 6)
    assert latent.dtype == torch.float32 and latent.shape == x0.shape and torch.equal(x0, copy)
    assert math.isfinite(float(latent.norm()))
