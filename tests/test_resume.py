"""Stop after a step, save, load, finish: bit-identical to one uninterrupted run, for every registered solver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import Counting

import fewstep
from fewstep.bench.targets import mixture_2d

pytestmark = pytest.mark.filterwarnings("ignore::fewstep.guard.DivergenceWarning")  # dpm_solver_2_sde at NFE 12
TARGET = mixture_2d("default")
SOLVERS = {info.name: info for info in fewstep.solvers.available()}
SCHEDULES = {"vp": fewstep.DiscreteVP.linear(), "edm": fewstep.EDM(), "flow": fewstep.Flow()}


def setup(schedule_name: str) -> tuple[Any, torch.Tensor, fewstep.NoiseSchedule, str]:
    schedule = SCHEDULES[schedule_name]
    prediction = "velocity" if schedule_name == "flow" else "epsilon"
    g = torch.Generator().manual_seed(0)
    noise = float(schedule.sigma(schedule.t_max)) * torch.randn(8, 2, generator=g, dtype=torch.float64)
    return TARGET.model(schedule, prediction), noise, schedule, prediction


def budget(solver: str) -> int:
    return 12 if 12 % SOLVERS[solver].nfe_per_step == 0 or solver.startswith("dpm_solver") else 13


def noise_options(kind: str) -> dict[str, Any]:
    if kind == "generator":
        return {"generator": torch.Generator().manual_seed(3)}
    if kind == "seed":
        return {"seed": 5}
    return {}


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_stop_save_load_finish_is_bit_identical(solver: str, schedule_name: str, tmp_path: Path) -> None:
    model, noise, schedule, prediction = setup(schedule_name)
    kinds = ["generator", "seed", "global"] if SOLVERS[solver].stochastic else ["global"]
    options: dict[str, Any] = {"norm": "sample"} if solver == "pc_langevin" else {}
    nfe = budget(solver)
    try:
        fewstep.sample(model, noise, schedule, solver, nfe=nfe, prediction=prediction, **options)
    except ValueError:
        nfe += 1
    for kind in kinds:

        def run(kind: str = kind, nfe: int = nfe, **kw: Any) -> torch.Tensor:
            if kind == "global":
                torch.manual_seed(11)
            return fewstep.sample(
                model, noise, schedule, solver, nfe=nfe, prediction=prediction, **noise_options(kind), **options, **kw
            )

        whole = run()
        steps = fewstep.Checkpoint(step=0)
        run(checkpoint=steps)
        assert steps.state is not None
        n = len(steps.state.run["times"]) - 1  # the run's steps
        for k in sorted({0, 1, n // 2, n - 2}):
            checkpoint = fewstep.Checkpoint(step=k)
            partial = run(checkpoint=checkpoint)
            assert checkpoint.state is not None and checkpoint.state.step == k + 1
            assert torch.equal(partial, checkpoint.state.x)
            checkpoint.state.save(tmp_path / "state.pt")
            if kind == "global":
                torch.manual_seed(999)  # the global generator moved on meanwhile: the state restores it
            rest = fewstep.sample(
                model, noise, schedule, solver, nfe=nfe, prediction=prediction, **noise_options(kind), **options,
                resume=fewstep.SamplingState.load(tmp_path / "state.pt"),
            )  # fmt: skip
            assert torch.equal(rest, whole), (kind, k, float((rest - whole).abs().max()))


def test_a_resumed_run_calls_the_model_and_the_callback_only_for_the_remaining_steps() -> None:
    model, noise, schedule, _ = setup("vp")
    counting = Counting(model)
    checkpoint = fewstep.Checkpoint(step=3)
    fewstep.sample(counting, noise, schedule, "unipc_bh2", nfe=10, checkpoint=checkpoint)
    assert counting.calls == 4
    events: list[dict[str, Any]] = []
    calls = fewstep.CallCount()
    fewstep.sample(counting, noise, schedule, "unipc_bh2", nfe=10, resume=checkpoint.state, calls=calls,
                   callback=events.append)  # fmt: skip
    assert calls.nfe == 6 and counting.calls == 10
    assert [e["i"] for e in events] == list(range(4, 10))


def test_checkpoints_chain() -> None:
    model, noise, schedule, _ = setup("edm")
    whole = fewstep.sample(model, noise, schedule, "dpmpp_3m_sde", nfe=12, seed=[1, 2, 3, 4, 5, 6, 7, 8])
    first = fewstep.Checkpoint(step=2)
    fewstep.sample(model, noise, schedule, "dpmpp_3m_sde", nfe=12, seed=list(range(1, 9)), checkpoint=first)
    second = fewstep.Checkpoint(step=7)
    fewstep.sample(
        model, noise, schedule, "dpmpp_3m_sde", nfe=12, seed=list(range(1, 9)), resume=first.state, checkpoint=second
    )
    rest = fewstep.sample(model, noise, schedule, "dpmpp_3m_sde", nfe=12, seed=list(range(1, 9)), resume=second.state)
    assert torch.equal(rest, whole)


def test_resume_errors_name_what_differs() -> None:
    model, noise, schedule, _ = setup("vp")
    checkpoint = fewstep.Checkpoint(step=2)
    fewstep.sample(model, noise, schedule, "dpmpp_2m", nfe=8, checkpoint=checkpoint)
    state = checkpoint.state
    with pytest.raises(ValueError, match="resume: the state was saved from a run with solver="):
        fewstep.sample(model, noise, schedule, "dpmpp_3m", nfe=8, resume=state)
    with pytest.raises(ValueError, match="resume: the state was saved from a run with times="):
        fewstep.sample(model, noise, schedule, "dpmpp_2m", nfe=9, resume=state)
    with pytest.raises(ValueError, match="noise: differs"):
        fewstep.sample(model, noise + 1, schedule, "dpmpp_2m", nfe=8, resume=state)
    with pytest.raises(ValueError, match="checkpoint: step 8 is not a step of this run"):
        fewstep.sample(model, noise, schedule, "dpmpp_2m", nfe=8, checkpoint=fewstep.Checkpoint(step=8))
    with pytest.raises(ValueError, match="trajectory, checkpoint, resume"):
        fewstep.sample(model, noise, schedule, "ddpm", nfe=8, checkpoint=fewstep.Checkpoint(step=1),
                       trajectory=fewstep.Trajectory())  # fmt: skip
    with pytest.raises(TypeError, match="resume: must be a fewstep.SamplingState"):
        fewstep.sample(model, noise, schedule, "dpmpp_2m", nfe=8, resume={"x": noise})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step: must be a step index"):
        fewstep.Checkpoint(step=-1)
