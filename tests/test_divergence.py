"""The divergence guard (fewstep.guard): a diverged run warns (or, strict, raises) naming the solver, step and time;
sound runs never warn."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from helpers import Counting
from test_properties import DATA_RADIUS, DIVERGE_AT_FEW_STEPS, SOLVERS

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.guard import DivergenceError, DivergenceWarning

TARGET = mixture_2d("default")
VP = fewstep.DiscreteVP.linear()


def start(schedule: fewstep.NoiseSchedule, n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a, s = float(schedule.alpha(schedule.t_max)), float(schedule.sigma(schedule.t_max))
    return a * TARGET.sample(n, g) + s * torch.randn(n, 2, generator=g, dtype=torch.float64)


def run(schedule: fewstep.NoiseSchedule, solver: str, nfe: int, **kw: Any) -> tuple[torch.Tensor, list[str]]:
    prediction = "velocity" if isinstance(schedule, fewstep.Flow) else "epsilon"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DivergenceWarning)
        out = fewstep.sample(
            TARGET.model(schedule, prediction), start(schedule), schedule, solver, nfe=nfe, prediction=prediction,
            generator=torch.Generator().manual_seed(1), **kw,
        )  # fmt: skip
    return out, [str(w.message) for w in caught if issubclass(w.category, DivergenceWarning)]


def test_a_diverged_run_warns_with_the_solver_step_and_time() -> None:
    out, messages = run(VP, "dpm_solver_2_sde", 10)
    assert float(out.norm(dim=-1).max()) > 100 * DATA_RADIUS  # thousands of times off ...
    assert len(messages) == 1  # ... and now it says so
    assert "'dpm_solver_2_sde' diverged" in messages[0] and "after step 1" in messages[0] and "t=" in messages[0]
    assert "docs/solvers.md" in messages[0]


def test_strict_raises_at_the_step_and_stops_the_run() -> None:
    model = Counting(TARGET.model(VP, "epsilon"))
    with pytest.raises(DivergenceError, match=r"'dpm_solver_2_sde' diverged: after step 1 \(to t="):
        fewstep.sample(model, start(VP), VP, "dpm_solver_2_sde", nfe=10, generator=torch.Generator(), strict=True)
    assert model.calls == 4  # two steps of two evaluations, not the whole budget
    with pytest.raises(TypeError, match="strict: must be a bool"):
        fewstep.sample(model, start(VP), VP, "ddim", nfe=10, strict="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", [VP, fewstep.EDM(), fewstep.Flow()], ids=["vp", "edm", "flow"])
def test_sound_runs_never_warn(schedule: fewstep.NoiseSchedule) -> None:
    for solver, info in SOLVERS.items():
        nfe = 60 if solver in DIVERGE_AT_FEW_STEPS else 10 + (10 % info.nfe_per_step and 1)
        try:
            out, messages = run(schedule, solver, nfe)
        except ValueError:  # a budget the solver cannot spend
            out, messages = run(schedule, solver, nfe + 1)
        assert not messages, (solver, messages)
        assert float(out.norm(dim=-1).max()) <= 10 * DATA_RADIUS, solver


def test_the_guard_follows_gradients_and_float16() -> None:
    noise = start(VP).float().requires_grad_(True)
    x = fewstep.sample(TARGET.model(VP, "epsilon"), noise, VP, "dpmpp_2m", nfe=8, grad=True)
    x.sum().backward()
    assert noise.grad is not None and torch.isfinite(noise.grad).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        half = fewstep.sample(
            lambda x, t: TARGET.model(VP, "epsilon")(x.double(), t).half(), start(VP).half(), VP, "ddim", nfe=8
        )
    assert half.dtype == torch.float16


def test_one_diverged_sample_in_a_batch_is_named() -> None:
    """Each sample is compared with its own start: one sample blown up 1,000 times in a batch of 64 (the batch's
    root-mean-square grows only ~125 times) is caught and named; its 63 neighbours are untouched."""
    edm = fewstep.EDM(0.002, 80.0)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0

    def x0(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[17] = 1e3 * float(sigma[17] < 1.0)  # sample 17's estimate leaves the data's scale late in the run
        return out

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DivergenceWarning)
        out = fewstep.sample(x0, noise, edm, "ddim", nfe=10, prediction="sample", time_input="sigma")
    messages = [str(w.message) for w in caught if issubclass(w.category, DivergenceWarning)]
    assert len(messages) == 1 and "(sample 17 of 64)" in messages[0], messages
    assert float(out[17].abs().max()) > 100 and float(out[torch.arange(64) != 17].abs().max()) == 0.0


def test_data_of_a_larger_scale_than_the_noise_does_not_warn() -> None:
    """The bound is relative to the start's scale (at least 1): data 50 times the unit scale is no divergence."""
    edm = fewstep.EDM(0.002, 80.0)
    noise = torch.randn(8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        out = fewstep.sample(lambda x, s: torch.full_like(x, 50.0), noise, edm, "dpmpp_2m", nfe=10, prediction="sample")
    assert torch.allclose(out, torch.full_like(out, 50.0))
