"""What fewstep.sample does with no solver, spacing or prediction given (fewstep.defaults)."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep
from fewstep.bench.compare import deterministic_solvers
from fewstep.bench.metrics import rmse
from fewstep.bench.targets import mixture_2d, reference_solution_from_time
from fewstep.defaults import FALLBACK, MEASURED, NFE_POINTS, default_solver_and_spacing, family
from fewstep.spacing import DISCRETE_SPACINGS, SPACINGS

TARGET = mixture_2d("default")
FAMILIES = {
    "discrete_vp": fewstep.DiscreteVP.scaled_linear(),
    "vp": fewstep.VP(),
    "edm": fewstep.EDM(),
    "flow": fewstep.Flow(),
}


def prediction_of(schedule: fewstep.NoiseSchedule) -> str:
    return "velocity" if isinstance(schedule, fewstep.Flow) else "epsilon"


def start(schedule: fewstep.NoiseSchedule, n: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) * float(schedule.sigma(schedule.t_max))


def test_flows_default_to_velocity_and_the_rest_to_epsilon() -> None:
    flow = fewstep.Flow()
    assert fewstep.Denoiser(TARGET.model(flow, "velocity"), flow).prediction == "velocity"
    assert fewstep.Denoiser(TARGET.model(fewstep.VP(), "epsilon"), fewstep.VP()).prediction == "epsilon"
    x = fewstep.sample(TARGET.model(flow, "velocity"), start(flow, 8), flow, "euler", nfe=8)
    y = fewstep.sample(TARGET.model(flow, "velocity"), start(flow, 8), flow, "euler", nfe=8, prediction="velocity")
    assert torch.equal(x, y)


def test_families_of_the_built_in_schedules() -> None:
    assert family(fewstep.DiscreteVP.linear()) == "discrete_vp"
    assert family(fewstep.Cosine()) == "vp" and family(fewstep.VP()) == "vp"
    assert family(fewstep.EDM()) == "edm" and family(fewstep.VE()) == "edm"
    assert family(fewstep.Flow()) == "flow"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_table_names_solvers_and_spacings_that_run_at_every_budget(name: str) -> None:
    schedule = FAMILIES[name]
    registered = {info.name for info in fewstep.solvers.available()}
    for nfe in range(1, 26):
        solver, spacing = default_solver_and_spacing(schedule, nfe)
        assert solver in registered and spacing in SPACINGS
        assert spacing not in DISCRETE_SPACINGS or isinstance(schedule, fewstep.DiscreteVP)
        x = fewstep.sample(TARGET.model(schedule, prediction_of(schedule)), start(schedule, 4), schedule, nfe=nfe)
        assert bool(torch.isfinite(x).all()), (nfe, solver, spacing)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_no_solver_or_spacing_means_the_table_entry(name: str) -> None:
    schedule = FAMILIES[name]
    model = TARGET.model(schedule, prediction_of(schedule))
    for nfe in (5, 7, 10, 20):
        solver, spacing = MEASURED.get(
            (family(schedule), min(NFE_POINTS, key=lambda p: abs(math.log(p / nfe)))), FALLBACK
        )
        auto = fewstep.sample(model, start(schedule, 8), schedule, nfe=nfe)
        explicit = fewstep.sample(model, start(schedule, 8), schedule, solver, nfe=nfe, spacing=spacing)
        assert torch.equal(auto, explicit)
    # a named solver without a spacing keeps logSNR steps; a spacing without a solver gets the table's solver
    named = fewstep.sample(model, start(schedule, 8), schedule, "dpmpp_2m", nfe=10)
    assert torch.equal(named, fewstep.sample(model, start(schedule, 8), schedule, "dpmpp_2m", nfe=10, spacing="logsnr"))
    solver, _ = MEASURED.get((family(schedule), 10), FALLBACK)
    spaced = fewstep.sample(model, start(schedule, 8), schedule, nfe=10, spacing="uniform")
    assert torch.equal(spaced, fewstep.sample(model, start(schedule, 8), schedule, solver, nfe=10, spacing="uniform"))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_default_is_close_to_the_best_configuration_here(name: str) -> None:
    """On the default 2-D mixture, at NFE 5, 10 and 20, measured now (not read from the table's file): the default's
    RMSE against the exact ODE solution is within 4 times the best of every ODE solver on every spacing (1.0-3.9 when
    the table was made: at NFE 20 the best here is a spacing the family's other targets do not favour; across all
    targets a single default is not within 1.25 everywhere, docs/benchmarks.md), and below the former default's
    (DPM-Solver++ 3M on logSNR)."""
    schedule = FAMILIES[name]
    model = TARGET.model(schedule, prediction_of(schedule))
    noise = start(schedule)
    reference = reference_solution_from_time(TARGET, noise, schedule, schedule.t_max)
    spacings = [s for s in SPACINGS if s not in DISCRETE_SPACINGS or isinstance(schedule, fewstep.DiscreteVP)]

    def error(x: torch.Tensor) -> float:
        return rmse(x, reference)

    for nfe in NFE_POINTS:
        best = math.inf
        for solver in deterministic_solvers():
            for spacing in spacings:
                try:
                    best = min(best, error(fewstep.sample(model, noise, schedule, solver, nfe=nfe, spacing=spacing)))
                except ValueError:  # a budget this solver cannot spend
                    continue
        default = error(fewstep.sample(model, noise, schedule, nfe=nfe))
        assert default <= 4.0 * best, (name, nfe, default / best)
        assert default < error(fewstep.sample(model, noise, schedule, "dpmpp_3m", nfe=nfe, spacing="logsnr")), (
            name,
            nfe,
        )


def test_guided_runs_on_discrete_vp_take_the_guided_table() -> None:
    """A run with a guidance rule on a discrete VP schedule at NFE up to 14 takes ``GUIDED``; others keep the table."""
    from fewstep.defaults import GUIDED, GUIDED_MAX_NFE

    sd = FAMILIES["discrete_vp"]
    for nfe in range(1, GUIDED_MAX_NFE + 1):
        assert default_solver_and_spacing(sd, nfe, guided=True) in GUIDED.values()
    assert default_solver_and_spacing(sd, 5, guided=True) == GUIDED[5]
    assert default_solver_and_spacing(sd, 20, guided=True) == default_solver_and_spacing(sd, 20)
    assert default_solver_and_spacing(FAMILIES["edm"], 8, guided=True) == default_solver_and_spacing(FAMILIES["edm"], 8)


@pytest.mark.parametrize("nfe", [5, 8])
def test_the_guided_default_beats_the_unguided_one_under_cfg(nfe: int) -> None:
    """At CFG 7.5 on the labelled 2-D mixture (exact guided PF-ODE solution), ``sample`` without a solver (the guided
    default) is at least twice as accurate as the unguided default would be on the same run."""
    from fewstep.bench.targets.conditional import labelled_mixture_2d

    sd, target = FAMILIES["discrete_vp"], labelled_mixture_2d()
    y = torch.arange(64) % target.num_classes
    kw = {"model_kwargs": {"y": y}, "uncond_kwargs": {"y": torch.full_like(y, -1)}, "guidance_scale": 7.5}
    x = start(sd, 64)
    ref = reference_solution_from_time(target.guided(y, 7.5), x, sd, sd.t_max)
    model = target.model(sd, "epsilon")
    guided = fewstep.sample(model, x, sd, nfe=nfe, **kw)
    solver, spacing = default_solver_and_spacing(sd, nfe)
    unguided_choice = fewstep.sample(model, x, sd, solver, nfe=nfe, spacing=spacing, **kw)
    assert rmse(guided, ref) * 2 <= rmse(unguided_choice, ref), (rmse(guided, ref), rmse(unguided_choice, ref))
