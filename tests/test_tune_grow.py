"""fewstep.tune(..., start=tuned): a per-step sampler grown to more evaluations (fewstep.tune.grow)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d, reference_solution_from_time
from fewstep.tune.grow import grown_starts
from fewstep.tune.search import search_choices

SMALL = {"calibration": 64, "holdout": 32, "shape": (2,), "grid": 40, "budget": 800, "seed": 0}


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    schedule = fewstep.VP()
    target = mixture_2d()
    model = target.model(schedule, "epsilon")
    small = fewstep.tune(model, schedule, nfe=4, **SMALL)
    assert small.solver == "per_step"
    grown = fewstep.tune(model, schedule, nfe=6, start=small, **SMALL)
    return {"schedule": schedule, "target": target, "model": model, "small": small, "grown": grown}


def test_every_split_of_the_finite_steps_equally_spaced_in_lambda(case: dict[str, Any]) -> None:
    small, schedule = case["small"], case["schedule"]
    starts = grown_starts(small, 7, schedule)
    assert len(starts) == math.comb(4 + 3 - 2, 3)  # 3 splits among the 3 finite steps, with repetition
    lam_small = schedule.lambda_(torch.tensor(small.times, dtype=torch.float64))
    choices = small.solver_options["choices"]
    for label, times, grown in starts:
        assert len(times) == 7 == len(grown) and np.all(np.diff(times) < 0)
        assert set(small.times) <= set(times.tolist())  # the small sampler's times are kept
        split = [int(v) for v in label.split("step")[1].strip("s ").removesuffix(" split").split(", ")]
        lam = schedule.lambda_(torch.from_numpy(times))
        for i in range(3):
            inside = lam[(lam > lam_small[i]) & (lam < lam_small[i + 1])]
            assert len(inside) == split.count(i)
            gaps = torch.diff(torch.cat([lam_small[i : i + 1], inside, lam_small[i + 1 : i + 2]]))
            assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=1e-9)  # equal steps in lambda
            position = int((torch.from_numpy(times) > small.times[i + 1]).sum())
            assert grown[position - len(inside) : position] == [choices[i]] * len(inside)  # step i's choice
        assert grown[-1] == choices[-1]  # the last step (to sigma = 0) is not split


def test_grown_sampler_spends_nfe_and_records_its_start(case: dict[str, Any], tmp_path: Any) -> None:
    grown, model, schedule = case["grown"], case["model"], case["schedule"]
    assert grown.nfe == 6 and len(grown.times) == 6 and grown.solver == "per_step"
    assert grown.start["grown_from_nfe"] == 4 and grown.start["spacing"].startswith("grown: step")
    assert grown.errors["calibration"] <= grown.errors["start_calibration"] + 1e-12  # the search keeps its best
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calls = fewstep.CallCount()
    x = fewstep.sample(model, noise, schedule, solver=grown, calls=calls, progress=False)
    assert calls.nfe == 6
    grown.save(tmp_path / "grown.json")
    again = fewstep.TunedSampler.load(tmp_path / "grown.json", model=model, schedule=schedule)
    assert torch.equal(fewstep.sample(model, noise, schedule, solver=again, progress=False), x)


def test_grown_sampler_beats_the_one_it_grew_from_on_the_exact_solution(case: dict[str, Any]) -> None:
    schedule, model = case["schedule"], case["model"]
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    exact = reference_solution_from_time(case["target"], noise, schedule, schedule.t_max)

    def error(tuned: fewstep.TunedSampler) -> float:
        x = fewstep.sample(model, noise, schedule, solver=tuned, progress=False)
        return float((x - exact).pow(2).mean().sqrt())

    assert error(case["grown"]) < 0.8 * error(case["small"])


class Refusing:
    """A model that fails the test if it is called."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model was called before the input was checked")


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"start": "tuned.json"}, TypeError, "start: need a fewstep.TunedSampler"),
        ({"nfe": 4}, ValueError, "start: a sampler of fewer evaluations than nfe=4"),
        ({"method": "dmn"}, ValueError, "start: a grown sampler starts the per-step search"),
        ({"solver": "dpmpp_2m"}, ValueError, "start: a grown sampler starts the per-step search"),
        ({"schedule": fewstep.VP(beta_max=15.0)}, ValueError, "start: schedule: the sampler was tuned for"),
    ],
)
def test_bad_start_is_refused_before_any_model_call(case: dict[str, Any], changes: dict[str, Any], error: type,
                                                    match: str) -> None:  # fmt: skip
    options: dict[str, Any] = {"schedule": case["schedule"], "nfe": 6, "start": case["small"], **SMALL, **changes}
    with pytest.raises(error, match=match):
        fewstep.tune(Refusing(), **options)


def test_a_start_of_another_solver_is_refused(case: dict[str, Any]) -> None:
    other = fewstep.TunedSampler.from_dict({**case["small"].to_dict(), "solver": "dpmpp_2m", "solver_options": {}})
    with pytest.raises(ValueError, match="start: grows a per-step sampler"):
        fewstep.tune(Refusing(), case["schedule"], nfe=6, start=other, **SMALL)


def test_search_from_given_choices_checks_their_number(case: dict[str, Any]) -> None:
    small = case["small"]
    noise = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"choices: need one per step \(4\), got 3"):
        search_choices(
            Refusing(), case["schedule"], 4, noise, noise, small.times, 100,
            choices=small.solver_options["choices"][:3],
        )  # fmt: skip
