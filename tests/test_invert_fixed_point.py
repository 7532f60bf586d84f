"""Fixed-point refinement of each inversion step: invert(..., refine=FixedPoint(...), report=FixedPointReport())."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.bench.targets.mixture import GaussianMixture
from fewstep.inversion import FixedPoint, FixedPointReport, invert
from fewstep.spacing import model_times

VP = fewstep.VP()


def data(n: int = 32) -> torch.Tensor:
    return mixture_2d().sample(n, torch.Generator().manual_seed(0)).to(torch.float64)


def round_trip(solver: str, iterations: int, nfe: int = 20) -> float:
    model, x0 = mixture_2d().model(VP, "epsilon"), data()
    latent = invert(model, x0, VP, solver, nfe, refine=FixedPoint(iterations))
    back = fewstep.sample(model, latent, VP, solver, nfe, final="t_min")
    return float((back - x0).norm() / x0.norm())


def test_round_trip_error_falls_with_the_iterations_on_the_mixture() -> None:
    errors = [round_trip("ddim", m) for m in (0, 1, 2, 4, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-3 * errors[0], errors
    # zero corrections is plain inversion
    model, x0 = mixture_2d().model(VP, "epsilon"), data()
    torch.testing.assert_close(
        invert(model, x0, VP, "ddim", 20, refine=FixedPoint(0)), invert(model, x0, VP, "ddim", 20), rtol=0, atol=0
    )


def test_the_residual_of_one_step_is_the_sampling_steps_mismatch() -> None:
    model, x0 = mixture_2d().model(VP, "epsilon"), data()
    times = [0.3, 0.5]
    for iterations in (0, 8):
        report = FixedPointReport()
        latent = invert(model, x0, VP, "ddim", spacing=times, refine=FixedPoint(iterations), report=report)
        back = fewstep.sample(model, latent, VP, "ddim", spacing=times[::-1], final="t_min")
        expected = (back - x0).norm(dim=1) / x0.norm(dim=1)
        assert report.residual.shape == report.initial.shape == (1, 32)
        torch.testing.assert_close(report.residual[0], expected, rtol=1e-10, atol=1e-15)
        assert report.iterations == [iterations]
    assert float(report.residual.max()) < 1e-3 * float(report.initial.max())


def test_a_standard_gaussian_inverts_to_the_exact_preimage_of_each_ddim_step() -> None:
    # N(0, I) under VP: eps_hat = sigma x, so the DDIM sampling step from s_{i+1} to s_i multiplies by
    # c_i = alpha_i alpha_{i+1} + sigma_i sigma_{i+1}; its exact inverse divides by c_i.
    model = GaussianMixture.single(3).model(VP, "epsilon")
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nfe = 6
    t = model_times(VP, nfe + 1, "logsnr").numpy()[::-1]
    alpha = np.array([float(VP.alpha(float(s))) for s in t])
    sigma = np.array([float(VP.sigma(float(s))) for s in t])
    factor = float(np.prod(alpha[1:] * alpha[:-1] + sigma[1:] * sigma[:-1]))
    report = FixedPointReport()
    latent = invert(model, x0, VP, "ddim", nfe, refine=FixedPoint(60, tol=1e-14), report=report)
    torch.testing.assert_close(latent, x0 / factor, rtol=1e-12, atol=1e-12)
    assert float(report.residual.max()) <= 1e-14
    assert all(0 < m < 60 for m in report.iterations)


def test_tolerance_stops_early_and_calls_are_counted() -> None:
    model, x0 = mixture_2d().model(VP, "epsilon"), data()
    calls = fewstep.CallCount()
    report = FixedPointReport()
    invert(model, x0, VP, "ddim", 10, refine=FixedPoint(40, tol=1e-9), report=report, calls=calls)
    assert float(report.residual.max()) <= 1e-9
    assert max(report.iterations) < 40
    # per step: the plain step, then one sampling step per correction and one for the final residual
    assert calls.network == sum(2 + m for m in report.iterations)
    assert report.residual.shape == (10, 32)


def test_heun_is_refined_with_its_own_step() -> None:
    model, x0 = mixture_2d().model(VP, "epsilon"), data()
    report = FixedPointReport()
    times = [0.5, 0.6]
    latent = invert(model, x0, VP, "heun", spacing=times, refine=FixedPoint(20), report=report)
    back = fewstep.sample(model, latent, VP, "heun", spacing=times[::-1], final="t_min")
    assert float((back - x0).norm() / x0.norm()) < 1e-8
    assert float(report.residual.max()) < 1e-8 < float(report.initial.max())


class Refusing:
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model must not be called")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"solver": "dpmpp_2m", "refine": FixedPoint()}, ValueError, "ddim, euler, heun"),
        ({"refine": 5}, TypeError, "refine: must be None or a fewstep.inversion.FixedPoint"),
        ({"report": FixedPointReport()}, ValueError, "refine=FixedPoint"),
        ({"refine": FixedPoint(), "report": {}}, TypeError, "report: must be"),
    ],
)
def test_errors_before_any_model_call(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    options: dict[str, object] = {"solver": "ddim", **kwargs}
    with pytest.raises(error, match=match):
        invert(Refusing(), torch.zeros(2, 2), VP, nfe=10, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [({"iterations": -1}, ValueError, "iterations=5"), ({"iterations": 2.0}, TypeError, "integer"),
     ({"tol": -1.0}, ValueError, "1e-8"), ({"tol": "small"}, TypeError, "number")],
)  # fmt: skip
def test_fixed_point_options_are_checked(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        FixedPoint(**kwargs)  # type: ignore[arg-type]
