"""fewstep.tune(..., pool=): a stratified calibration batch drawn from a larger pool, and the weighted errors that
every optimiser then minimises (fewstep.tune.strata.stratify, Teacher.weights, Objective.weights)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import Counting

import fewstep
from fewstep.bench.targets import mixture_2d, reference_solution
from fewstep.model import Denoiser
from fewstep.tune.budget import Budget, Objective, mean_distance_of, rmse, square_errors
from fewstep.tune.coefficients import fitted
from fewstep.tune.gits import jump_costs
from fewstep.tune.search import search_choices
from fewstep.tune.strata import flag_hard, stratify
from fewstep.tune.teacher import Teacher, solve_teacher

SCHEDULE = fewstep.VP()
TARGET = mixture_2d()
MODEL = TARGET.model(SCHEDULE, "epsilon")
SCALE = float(SCHEDULE.sigma(SCHEDULE.t_max))
QUICK: dict[str, Any] = {"shape": (2,), "calibration": 64, "holdout": 64, "grid": 40, "budget": 900, "seed": 0}


def noise(n: int, seed: int) -> torch.Tensor:
    return SCALE * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------------- the stratified batch


def test_stratify_takes_hard_samples_up_to_the_share_and_weighs_each_stratum_by_its_pool_share() -> None:
    hard = torch.zeros(100, dtype=torch.bool)
    hard[torch.tensor([3, 17, 40, 41, 42, 77, 90, 91, 95, 99])] = True
    index, weights = stratify(hard, 12)
    assert index.tolist()[:6] == [3, 17, 40, 41, 42, 77]  # half the batch: the pool's first hard samples
    assert not bool(hard[index[6:]].any()) and len(set(index.tolist())) == 12
    assert torch.allclose(weights[:6], torch.full((6,), 0.1 / 6, dtype=torch.float64))
    assert torch.allclose(weights[6:], torch.full((6,), 0.9 / 6, dtype=torch.float64))
    # a value constant on each stratum: the weighted batch mean is the pool's mean
    values = torch.where(hard, 7.0, 1.0).to(torch.float64)
    assert float((weights * values[index]).sum()) == pytest.approx(float(values.mean()), rel=1e-12)


def test_stratify_fills_the_batch_when_a_stratum_runs_short() -> None:
    few = torch.zeros(50, dtype=torch.bool)
    few[[5, 6]] = True
    index, weights = stratify(few, 10)  # 2 hard, 8 easy
    assert int(few[index].sum()) == 2 and float(weights.sum()) == pytest.approx(1.0)
    many = torch.ones(50, dtype=torch.bool)
    many[[1, 2, 3]] = False
    index, weights = stratify(many, 10)  # 3 easy, 7 hard
    assert int((~many[index]).sum()) == 3 and float(weights.sum()) == pytest.approx(1.0)
    assert torch.allclose(weights[:7], torch.full((7,), 47 / 50 / 7, dtype=torch.float64))
    none = torch.zeros(20, dtype=torch.bool)
    index, weights = stratify(none, 5)  # no hard sample: a uniform batch
    assert torch.allclose(weights, torch.full((5,), 0.2, dtype=torch.float64))
    with pytest.raises(ValueError, match="size"):
        stratify(none, 21)


def test_flag_hard_is_the_union_over_the_probes() -> None:
    a = torch.tensor([1.0, 1.0, 1.0, 50.0, 1.0])
    b = torch.tensor([2.0, 30.0, 2.0, 2.0, 2.0])
    assert flag_hard([a, b]).tolist() == [False, True, False, True, False]
    assert flag_hard([a, b], factor=40.0).tolist() == [False, False, False, True, False]
    diverged = torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0])
    assert flag_hard([diverged]).tolist() == [False, True, False, False, False]


# ------------------------------------------------------------------------------------------------ weighted errors


def mean_distance(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    return mean_distance_of(square_errors(x, y), weights)


def test_weighted_losses_reduce_to_the_weighted_samples() -> None:
    x, y = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(6, 3)
    assert rmse(x, y) == pytest.approx(float(torch.sqrt(torch.mean((x - y).double() ** 2))), rel=1e-12)
    one_hot = torch.zeros(6, dtype=torch.float64)
    one_hot[2] = 1.0
    assert rmse(x, y, one_hot) == pytest.approx(rmse(x[2:3], y[2:3]), rel=1e-12)
    assert mean_distance(x, y, one_hot) == pytest.approx(mean_distance(x[2:3], y[2:3]), rel=1e-12)
    uniform = torch.full((6,), 1 / 6, dtype=torch.float64)
    assert rmse(x, y, uniform) == pytest.approx(rmse(x, y), rel=1e-12)
    assert mean_distance(x, y, uniform) == pytest.approx(mean_distance(x, y), rel=1e-12)


@pytest.fixture(scope="module")
def four() -> dict[str, Any]:
    """A teacher on four samples, the same teacher weighted on the third alone, and the third's own teacher."""
    denoiser = Denoiser(MODEL, SCHEDULE)
    x = noise(4, 3)
    full = solve_teacher(denoiser, x, Budget(1000), 30)
    one_hot = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    weighted = Teacher(full.final, full.grid, full.states, full.calls, one_hot)
    alone = Teacher(full.final[2:3], full.grid, full.states[:, 2:3], full.calls)
    times = fewstep.spacing.model_times(SCHEDULE, 6, "logsnr").numpy()
    return {"denoiser": denoiser, "noise": x, "weighted": weighted, "alone": alone, "times": times}


def test_every_optimisers_error_weighs_the_samples(four: dict[str, Any]) -> None:
    """With all the weight on one sample, the objective, GITS's jump costs, the fitted coefficients and the search
    are those of that sample alone."""
    den, x, weighted, alone, times = (four[k] for k in ("denoiser", "noise", "weighted", "alone", "times"))
    many = Objective(den, "dpmpp_2m", {}, 6, x, weighted.final, Budget(100), weights=weighted.weights)
    single = Objective(den, "dpmpp_2m", {}, 6, x[2:3], alone.final, Budget(100))
    assert many.error(times) == pytest.approx(single.error(times), rel=1e-10)
    costs = jump_costs(den, weighted, Budget(100))
    assert np.allclose(costs, jump_costs(den, alone, Budget(100)), rtol=1e-10, atol=0.0)
    fit = fitted(den, "dpmpp_2m", {}, times, x, weighted, Budget(100))
    fit_alone = fitted(den, "dpmpp_2m", {}, times, x[2:3], alone, Budget(100))
    assert fit is not None and fit_alone is not None
    for row, row_alone in zip(fit.rows, fit_alone.rows, strict=True):
        assert np.allclose(row, row_alone, rtol=1e-8, atol=1e-12)
    assert fit.calibration == pytest.approx(fit_alone.calibration, rel=1e-8)
    found = search_choices(den, None, 6, x, weighted, times, 150, seed=1)
    found_alone = search_choices(den, None, 6, x[2:3], alone, times, 150, seed=1)
    assert found[1] == found_alone[1] and np.allclose(found[2], found_alone[2], rtol=1e-12)


# --------------------------------------------------------------------------------------------- tune(..., pool=)


@pytest.mark.parametrize("method", ["dmn", "gits", "ld3", "auto"])
def test_tune_with_a_pool_spends_its_budget_and_exactly_nfe(method: str) -> None:
    counting = Counting(MODEL)
    tuned = fewstep.tune(counting, SCHEDULE, nfe=6, method=method, pool=512, **{**QUICK, "budget": 600})
    assert counting.calls <= tuned.calls <= 600  # LD3's backward passes count as calls too
    assert counting.calls == tuned.calls or method == "ld3"
    assert tuned.start["pool"] == 512 and 0 < tuned.start["pool_hard"] < 512
    again, calls = Counting(MODEL), fewstep.CallCount()
    fewstep.sample(again, noise(16, 9), SCHEDULE, solver=tuned, calls=calls)
    assert again.calls == calls.nfe == tuned.nfe == 6


def test_tune_with_a_pool_beats_its_start_on_fresh_noise_against_the_exact_solution() -> None:
    result = fewstep.tune(MODEL, SCHEDULE, nfe=10, method="dmn", pool=1024, **QUICK)
    again = fewstep.tune(MODEL, SCHEDULE, nfe=10, method="dmn", pool=1024, **QUICK)
    assert result.times == again.times  # deterministic given the seed
    x = noise(512, 7)
    exact = reference_solution(TARGET, x, SCHEDULE.alpha(SCHEDULE.t_max), SCHEDULE.sigma(SCHEDULE.t_max))
    tuned_x = fewstep.sample(MODEL, x, SCHEDULE, solver=result)
    start_x = fewstep.sample(MODEL, x, SCHEDULE, result.start["solver"], nfe=10, spacing=result.start["spacing"])
    assert rmse(tuned_x, exact) < 0.6 * rmse(start_x, exact)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"pool": 512, "calibration": noise(8, 1)}, "pool: the calibration batch is drawn from the pool"),
        ({"pool": 32, "calibration": 64}, "calibration: 64 samples cannot be drawn from a pool of 32"),
        ({"pool": 0}, "pool"),
        ({"pool": torch.zeros(3)}, "pool"),
    ],
)
def test_bad_pool_is_refused_before_any_model_call(options: dict[str, Any], match: str) -> None:
    counting = Counting(MODEL)
    with pytest.raises(ValueError, match=match):
        fewstep.tune(counting, SCHEDULE, nfe=6, **{**QUICK, **options})
    assert counting.calls == 0
