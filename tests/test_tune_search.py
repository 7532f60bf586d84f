"""The per-step solver search (``fewstep.tune.search.search_choices``) on an exact target: the searched solver beats
DPM-Solver++(2M) and UniPC on held-out noise, stays within its budget of network calls and is deterministic."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from helpers import Counting

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.bench.targets.reference import reference_solution_from_time
from fewstep.solvers.ode.per_step import StepChoice
from fewstep.spacing import model_times
from fewstep.tune.search import search_choices

TARGET = mixture_2d("default")
SCHEDULE = fewstep.VP()
NFE = 5


def noise(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a, s = float(SCHEDULE.alpha(SCHEDULE.t_max)), float(SCHEDULE.sigma(SCHEDULE.t_max))
    return a * TARGET.sample(n, g) + s * torch.randn(n, 2, generator=g, dtype=torch.float64)


@functools.cache
def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Calibration and held-out noise and their exact PF-ODE images at sigma = 0 (the teacher)."""
    calibration, held_out = noise(64, 1), noise(256, 2)
    exact = [reference_solution_from_time(TARGET, x, SCHEDULE, SCHEDULE.t_max, rtol=1e-9, atol=1e-9) for x in
             (calibration, held_out)]  # fmt: skip
    return calibration, exact[0], held_out, exact[1]


def denoiser(model=None) -> fewstep.Denoiser:
    return fewstep.Denoiser(model or TARGET.model(SCHEDULE, "epsilon"), SCHEDULE, "epsilon")


def start_times() -> np.ndarray:
    return model_times(SCHEDULE, NFE, "logsnr").numpy()


def held_out_rmse(solver: str, times: np.ndarray, **options) -> float:
    _, _, x, exact = problem()
    out = fewstep.sample(denoiser(), x, solver=solver, spacing=torch.from_numpy(times), progress=False, **options)
    return float(torch.sqrt(torch.mean((out - exact) ** 2)))


@pytest.mark.parametrize("refine_times", [False, True])
def test_searched_solver_beats_dpmpp_2m_and_unipc_on_held_out_noise(refine_times: bool) -> None:
    calibration, teacher, _, _ = problem()
    times = start_times()
    name, options, found = search_choices(
        denoiser(), None, NFE, calibration, teacher, times, 150, seed=0, refine_times=refine_times
    )
    assert name == "per_step" and len(options["choices"]) == NFE and len(found) == NFE
    if not refine_times:
        assert np.array_equal(found, times)
    searched = held_out_rmse(name, found, **options)
    for baseline in ("dpmpp_2m", "unipc_bh2"):  # at the times the search started from, and at its own
        for at in (times, found):
            assert searched < 0.97 * held_out_rmse(baseline, at), (baseline, searched)


def test_budget_is_respected_counting_the_network_itself() -> None:
    calibration, teacher, _, _ = problem()
    for budget in (NFE, 23, 60):
        model = Counting(TARGET.model(SCHEDULE, "epsilon"))
        calls = fewstep.CallCount()
        search_choices(denoiser(model), None, NFE, calibration, teacher, start_times(), budget, seed=0, calls=calls)
        assert model.calls == calls.nfe <= budget
    assert budget == 60 and model.calls == 60  # the search uses the budget it is given (it reuses answers, too)
    assert calls.substituted > 0
    with pytest.raises(ValueError, match="budget"):
        search_choices(denoiser(), None, NFE, calibration, teacher, start_times(), NFE - 1)


def test_deterministic_given_the_seed() -> None:
    calibration, teacher, _, _ = problem()
    results = [
        search_choices(denoiser(), None, NFE, calibration, teacher, start_times(), 90, seed=seed) for seed in (3, 3)
    ]
    assert results[0][1] == results[1][1] and np.array_equal(results[0][2], results[1][2])
    for choice in results[0][1]["choices"]:  # the options are StepChoice dicts
        assert StepChoice.from_dict(choice).to_dict() == choice


def test_invalid_arguments_are_refused_naming_them() -> None:
    calibration, teacher, _, _ = problem()
    with pytest.raises(ValueError, match="times"):
        search_choices(denoiser(), None, NFE, calibration, teacher, start_times()[:-1], 100)
    with pytest.raises(ValueError, match="times"):
        search_choices(denoiser(), None, NFE, calibration, teacher, start_times()[::-1], 100)
    with pytest.raises(ValueError, match="teacher"):
        search_choices(denoiser(), None, NFE, calibration, teacher[:3], start_times(), 100)
    with pytest.raises(TypeError, match="schedule"):
        search_choices(TARGET.model(SCHEDULE, "epsilon"), None, NFE, calibration, teacher, start_times(), 100)
    with pytest.raises(ValueError, match="nfe"):
        search_choices(denoiser(), None, 1, calibration, teacher, start_times()[:1], 100)
    assert math.isfinite(held_out_rmse("per_step", start_times()))
