"""fewstep.tune.hard.hard_samples: the pool's samples that few-step samplers send far from the teacher.

Measured against the exact guided solution of the labelled 2-D mixture (CFG 7.5), with samplers that are not among
the probes: the flagged samples hold several times their share of the squared error.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import fewstep
from fewstep.bench.compare import GuidedRun, make_schedule, make_target
from fewstep.bench.targets import reference_solution_from_time
from fewstep.tune.hard import hard_samples

SCALE = 7.5
POOL = 1000
NFE = 5


@pytest.fixture(scope="module")
def guided() -> dict[str, Any]:
    target, schedule = make_target("labelled_2d"), make_schedule("sd")
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(POOL, 2, generator=gen, dtype=torch.float64) * float(schedule.sigma(schedule.t_max))
    run = GuidedRun.of(target, SCALE, POOL)
    assert run is not None
    model = target.model(schedule, "epsilon")
    hard = hard_samples(model, schedule, noise=noise, nfe=NFE, **run.sample_kwargs())
    reference = reference_solution_from_time(run.exact(), noise, schedule, schedule.t_max)
    return {"model": model, "schedule": schedule, "noise": noise, "run": run, "hard": hard, "reference": reference}


@pytest.mark.parametrize(("solver", "spacing"), [("conjugate_ddim", "ays_sd15"), ("lms", "trailing")])
def test_flagged_samples_hold_a_large_share_of_another_samplers_error(guided: dict[str, Any], solver: str,
                                                                      spacing: str) -> None:  # fmt: skip
    hard = guided["hard"]
    assert hard.dtype == torch.bool and hard.shape == (POOL,)
    share = float(hard.double().mean())
    assert 0.01 < share < 0.2
    x = fewstep.sample(
        guided["model"], guided["noise"], guided["schedule"], solver, nfe=NFE, spacing=spacing, progress=False,
        **guided["run"].sample_kwargs(),
    )  # fmt: skip
    squared = (x - guided["reference"]).pow(2).sum(1)  # against the exact solution, not the teacher
    enrichment = float(squared[hard].sum() / squared.sum()) / share
    assert enrichment > 2.5  # a mask drawn at random holds its share (enrichment 1)


def test_deterministic_and_explicit_probes(guided: dict[str, Any]) -> None:
    run = GuidedRun.of(make_target("labelled_2d"), SCALE, 200)
    assert run is not None
    options: dict[str, Any] = {"noise": guided["noise"][:200], "nfe": NFE, "probes": [("dpmpp_2m", "logsnr")]}
    options.update(run.sample_kwargs())
    a = hard_samples(guided["model"], guided["schedule"], **options)
    b = hard_samples(guided["model"], guided["schedule"], **options)
    assert torch.equal(a, b)
    fewer = hard_samples(guided["model"], guided["schedule"], factor=30.0, **options)
    assert bool((fewer <= a).all())  # a larger factor flags a subset


def _counting() -> tuple[Any, list[int]]:
    calls = [0]

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return torch.zeros_like(x)

    return model, calls


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"noise": torch.zeros(1, 2)}, "noise"),
        ({"noise": torch.zeros(4, 2, dtype=torch.long)}, "noise"),
        ({"nfe": 0}, "nfe"),
        ({"factor": 0.5}, "factor"),
        ({"probes": []}, "probes"),
        ({"probes": [("no_such_solver", "karras")]}, "no_such_solver"),
        ({"probes": [("heun", "karras")], "nfe": 4}, "spends exactly nfe=4"),
        ({"probes": [("ddim", "no_such_spacing")]}, "spacing of 'ddim'"),
    ],
)
def test_bad_input_is_refused_before_any_model_call(options: dict[str, Any], match: str) -> None:
    model, calls = _counting()
    kwargs: dict[str, Any] = {"noise": torch.randn(8, 2), "nfe": 5, **options}
    with pytest.raises(ValueError, match=match):
        hard_samples(model, fewstep.VP(), **kwargs)
    assert calls[0] == 0


def test_bad_probe_type_is_refused_before_any_model_call() -> None:
    model, calls = _counting()
    with pytest.raises(TypeError, match="probes"):
        hard_samples(model, fewstep.VP(), noise=torch.randn(8, 2), nfe=5, probes=[("ddim", 3)])  # type: ignore[list-item]
    assert calls[0] == 0
