"""fewstep.tune(..., coefficients="refine"): the fitted non-stationary rows moved end to end by gradient descent on
the output's error, through the network (fewstep.tune.coefficients.refined)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import Counting

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.model import Denoiser
from fewstep.tune.budget import Budget, rmse
from fewstep.tune.coefficients import fitted, refined
from fewstep.tune.teacher import Teacher, solve_teacher

SCHEDULE = fewstep.VP()
TARGET = mixture_2d()
SCALE = float(SCHEDULE.sigma(SCHEDULE.t_max))
#: the default 2-D mixture's exact epsilon-prediction, differentiable in its input (as a trained network is)
DIFFERENTIABLE = TARGET.model(SCHEDULE, "epsilon", differentiable=True)


def noise(n: int, seed: int) -> torch.Tensor:
    return SCALE * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    denoiser = Denoiser(DIFFERENTIABLE, SCHEDULE)
    calib = noise(128, 1)
    teacher = solve_teacher(denoiser, calib, Budget(1000), 40)
    times = fewstep.spacing.model_times(SCHEDULE, 5, "logsnr").numpy()
    fit = fitted(denoiser, "dpmpp_2m", {}, times, calib, teacher, Budget(100))
    assert fit is not None
    return {"denoiser": denoiser, "calib": calib, "teacher": teacher, "fit": fit}


def test_refining_lowers_the_calibration_error_within_its_budget(case: dict[str, Any]) -> None:
    den, calib, teacher, fit = (case[k] for k in ("denoiser", "calib", "teacher", "fit"))
    budget = Budget(400)
    moved, steps = refined(den, fit, calib, teacher, budget)
    assert steps == (400 - 5) // 10 and budget.calls.backward == 5 * steps  # a run and its backward pass per step
    assert budget.spent <= 400 and budget.calls.network == 5 * (steps + 1)  # and one run to score the last rows
    assert moved is not fit and moved.calibration < 0.97 * fit.calibration
    # the rows run as the non-stationary solver give the error they were kept for
    x = fewstep.sample(
        den, calib, solver="nonstationary", coefficients=moved.rows, spacing=torch.from_numpy(moved.times)
    )
    assert rmse(x, teacher.final) == pytest.approx(moved.calibration, rel=1e-9)


def test_a_network_without_an_input_gradient_is_refined_with_its_answers_held_fixed(case: dict[str, Any]) -> None:
    den, calib, teacher, fit = (case[k] for k in ("denoiser", "calib", "teacher", "fit"))
    detached = Denoiser(TARGET.model(SCHEDULE, "epsilon"), SCHEDULE)  # the embedded network detaches its input
    budget, full = Budget(400), Budget(400)
    moved, steps = refined(detached, fit, calib, teacher, budget)
    through, _ = refined(den, fit, calib, teacher, full)
    assert steps == (400 - 5) // 10 and budget.spent == full.spent
    assert moved.calibration < fit.calibration and moved.rows != through.rows  # another gradient, still a descent
    x = fewstep.sample(
        detached, calib, solver="nonstationary", coefficients=moved.rows, spacing=torch.from_numpy(moved.times)
    )
    assert rmse(x, teacher.final) == pytest.approx(moved.calibration, rel=1e-9)


def test_refining_weighs_the_samples(case: dict[str, Any]) -> None:
    """With all the weight on one sample, the refined rows are that sample's alone."""
    den, calib, teacher = (case[k] for k in ("denoiser", "calib", "teacher"))
    x, full = calib[:4], Teacher(teacher.final[:4], teacher.grid, teacher.states[:, :4], teacher.calls)
    one_hot = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    weighted = Teacher(full.final, full.grid, full.states, full.calls, one_hot)
    alone = Teacher(full.final[2:3], full.grid, full.states[:, 2:3], full.calls)
    times = case["fit"].times
    rows = [list(r) for r in case["fit"].rows]
    start = type(case["fit"])(rows, times, float(rmse(x[2:3], alone.final)))  # any start error above the refined ones
    many, steps = refined(den, start, x, weighted, Budget(200))
    single, steps_alone = refined(den, start, x[2:3], alone, Budget(200))
    assert steps == steps_alone > 0
    for row, row_alone in zip(many.rows, single.rows, strict=True):
        assert np.allclose(row, row_alone, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("method", ["auto", "search"])
def test_tune_refines_and_spends_exactly_nfe(method: str) -> None:
    """``auto`` moves the best start's times (GITS, Nelder-Mead) before the refinement (docs/tuning.md measures it
    against the per-step search first); ``search`` searches the per-step choices first."""
    model = Counting(DIFFERENTIABLE)
    options: dict[str, Any] = {"shape": (2,), "calibration": 128, "holdout": 128, "grid": 40, "seed": 0}
    tuned = fewstep.tune(model, SCHEDULE, nfe=5, budget=900, method=method, coefficients="refine", **options)
    assert model.calls <= tuned.calls <= 900
    assert tuned.method.startswith("gits+dmn" if method == "auto" else "search")
    assert "coefficients_holdout" in tuned.errors
    if tuned.solver == "nonstationary":
        assert tuned.method.endswith("coefficients")
    elif method == "search":
        assert tuned.solver == "per_step" or tuned.method.endswith("(start kept)")
    calls = fewstep.CallCount()
    x = fewstep.sample(model, noise(8, 9), SCHEDULE, solver=tuned, calls=calls)
    assert x.shape == (8, 2) and bool(torch.isfinite(x).all()) and calls.network == 5


def test_a_bad_coefficients_option_is_refused_before_any_model_call() -> None:
    model = Counting(DIFFERENTIABLE)
    with pytest.raises(ValueError, match="coefficients: choose True, False or 'refine'"):
        fewstep.tune(model, SCHEDULE, nfe=5, shape=(2,), coefficients="end_to_end")
    assert model.calls == 0
