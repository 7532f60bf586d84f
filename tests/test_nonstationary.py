"""The non-stationary linear solver, the linear form of the deterministic solvers, and the coefficients that
``fewstep.tune(coefficients=True)`` fits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Counting

import fewstep
from fewstep.bench.targets import mixture_2d, reference_solution_from_time
from fewstep.nodes import NodeTable
from fewstep.prepare import as_denoiser
from fewstep.solvers import get_solver
from fewstep.solvers.linear_form import linear_form
from fewstep.spacing import model_times
from fewstep.tune import TunedSampler
from fewstep.tune.budget import Budget
from fewstep.tune.coefficients import fitted, teacher_state
from fewstep.tune.teacher import Teacher, solve_teacher
from fewstep.tune.tuned import schedule_description

SCHEDULE = fewstep.VP()
TARGET = mixture_2d()
MODEL = TARGET.model(SCHEDULE, "epsilon")
MULTISTEP = (
    "ddim", "euler", "dpmpp_2m", "dpmpp_3m", "ipndm", "ipndm_v", "deis_3", "lms", "unipc_bh1", "unipc_bh2", "per_step",
    "gradient_estimation", "dpm_solver_v3", "conjugate_ddim",
)  # fmt: skip


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def denoiser(schedule: fewstep.NoiseSchedule = SCHEDULE) -> fewstep.Denoiser:
    return as_denoiser(TARGET.model(schedule, "epsilon"), schedule, "epsilon", "auto", None, 1.0, None, 0.0, None, None)


def form_of(
    solver: str, nfe: int, spacing: str = "logsnr", schedule: fewstep.NoiseSchedule = SCHEDULE
) -> tuple[np.ndarray, list[list[float]], np.ndarray]:
    """The node times of ``solver`` at ``nfe`` on ``spacing``, its rows and request times."""
    slv = get_solver(solver)
    times = model_times(schedule, slv.steps_for_nfe(nfe, False, True), spacing).numpy()
    table = NodeTable.build(
        denoiser(schedule), np.concatenate([times, [np.nan]]), True, 1, torch.device("cpu"), torch.float64
    )
    form = linear_form(slv, table)
    return times, form.rows(), form.times


def test_without_coefficients_it_is_dpmpp_2m() -> None:
    x = noise(64, 0)
    for nfe in (1, 2, 5, 10):
        ours = fewstep.sample(MODEL, x, SCHEDULE, "nonstationary", nfe=nfe)
        theirs = fewstep.sample(MODEL, x, SCHEDULE, "dpmpp_2m", nfe=nfe)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    flow = fewstep.Flow()  # a first step from alpha = 0
    velocity = TARGET.model(flow, "velocity")
    torch.testing.assert_close(
        fewstep.sample(velocity, x, flow, "nonstationary", nfe=6),
        fewstep.sample(velocity, x, flow, "dpmpp_2m", nfe=6),
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize("solver", MULTISTEP)
@pytest.mark.parametrize("spacing", ["logsnr", "time_quadratic"])
def test_the_linear_form_reruns_the_solver(solver: str, spacing: str) -> None:
    """Rows read off the update rule with no model call give the solver's own samples."""
    times, rows, requests = form_of(solver, 7, spacing)
    x = noise(32, 1)
    theirs = fewstep.sample(MODEL, x, SCHEDULE, solver, nfe=7, spacing=torch.from_numpy(times))
    ours = fewstep.sample(MODEL, x, SCHEDULE, "nonstationary", coefficients=rows, spacing=torch.from_numpy(requests))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_the_linear_form_of_ddim_by_hand() -> None:
    """DDIM: x_1 = alpha_1 D_0 + sigma_1 (x_T - alpha_0 D_0) / sigma_0, and the clean end x_2 = D_1; the frame-free
    rows divide by n = alpha + sigma (times n_0 on the start's)."""
    times = model_times(SCHEDULE, 2, "logsnr").numpy()
    table = NodeTable.build(denoiser(), np.concatenate([times, [np.nan]]), True, 1, torch.device("cpu"), torch.float64)
    form = linear_form(get_solver("ddim"), table)
    t = torch.from_numpy(times)
    a, s = SCHEDULE.alpha(t).numpy(), SCHEDULE.sigma(t).numpy()
    np.testing.assert_allclose(form.coefficients[1, :2], [s[1] / s[0], a[1] - s[1] * a[0] / s[0]], rtol=1e-13)
    np.testing.assert_allclose(form.coefficients[2], [0.0, 0.0, 1.0], atol=1e-15)
    n = a + s
    np.testing.assert_allclose(form.norms[:2], n, rtol=1e-15)
    rows = form.rows()
    np.testing.assert_allclose(rows[0], [s[1] / s[0] * n[0] / n[1], (a[1] - s[1] * a[0] / s[0]) / n[1]], rtol=1e-13)
    np.testing.assert_allclose(rows[1], [0.0, 0.0, 1.0 / form.norms[2]], atol=1e-15)


def test_a_stochastic_solver_has_no_linear_form() -> None:
    times = model_times(SCHEDULE, 4, "logsnr").numpy()
    table = NodeTable.build(denoiser(), np.concatenate([times, [np.nan]]), True, 1, torch.device("cpu"), torch.float64)
    with pytest.raises(ValueError, match="stochastic"):
        linear_form(get_solver("ddpm"), table)


def test_bad_coefficients_are_refused_before_any_model_call() -> None:
    counting = Counting(MODEL)
    x = noise(4, 2)
    with pytest.raises(ValueError, match=r"coefficients\[1\].*needs 3 numbers"):
        fewstep.sample(counting, x, SCHEDULE, "nonstationary", coefficients=[[1.0, 0.5], [1.0, 0.0]], nfe=2)
    with pytest.raises(ValueError, match="finite"):
        fewstep.sample(counting, x, SCHEDULE, "nonstationary", coefficients=[[1.0, float("nan")]], nfe=1)
    with pytest.raises(TypeError, match="coefficients"):
        fewstep.sample(counting, x, SCHEDULE, "nonstationary", coefficients="rows", nfe=1)
    with pytest.raises(ValueError, match="2 rows were fitted for 2 steps, but this run has 3"):
        fewstep.sample(counting, x, SCHEDULE, "nonstationary", coefficients=[[1.0, 0.5], [0.0, 0.0, 1.0]], nfe=3)
    assert counting.calls == 0


def test_teacher_state_is_exact_for_a_cubic_trajectory() -> None:
    grid = np.linspace(1.0, 0.0, 41)
    path = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    states = torch.stack([path * (1 + 2 * t - 3 * t**2 + 0.5 * t**3) for t in grid])
    teacher = Teacher(states[-1], grid, states, 0)
    for t in (0.987, 0.5123, 0.031):
        expected = path * (1 + 2 * t - 3 * t**2 + 0.5 * t**3)
        torch.testing.assert_close(teacher_state(teacher, t), expected, rtol=1e-12, atol=1e-12)


def test_fitting_spends_one_run_and_lowers_the_calibration_error() -> None:
    den = denoiser()
    calib = noise(256, 3) * float(SCHEDULE.sigma(SCHEDULE.t_max))
    budget = Budget(10_000)
    teacher = solve_teacher(den, calib, budget, grid=60)
    times, _, _ = form_of("ipndm", 6, "time_quadratic")
    before = budget.spent
    fit = fitted(den, "ipndm", {}, times, calib, teacher, budget)
    assert fit is not None and budget.spent - before == 6
    base = fewstep.sample(MODEL, calib, SCHEDULE, "ipndm", nfe=6, spacing=torch.from_numpy(times))
    base_error = float(((base - teacher.final) ** 2).mean().sqrt())
    assert fit.calibration < 0.9 * base_error
    x = fewstep.sample(
        MODEL, calib, SCHEDULE, "nonstationary", coefficients=fit.rows, spacing=torch.from_numpy(fit.times)
    )
    assert float(((x - teacher.final) ** 2).mean().sqrt()) == pytest.approx(fit.calibration, rel=1e-9)


def test_a_solver_evaluating_twice_at_one_time_is_not_fitted() -> None:
    den = denoiser()
    calib = noise(16, 4)
    budget = Budget(10_000)
    teacher = solve_teacher(den, calib, budget, grid=20)
    times = model_times(SCHEDULE, 3, "logsnr").numpy()
    before = budget.spent
    assert fitted(den, "heun", {}, times, calib, teacher, budget) is None
    assert budget.spent == before


QUICK = {"shape": (2,), "calibration": 128, "holdout": 128, "grid": 40, "budget": 800, "seed": 0}


@pytest.fixture(scope="module")
def pair() -> tuple[TunedSampler, TunedSampler]:
    return (
        fewstep.tune(MODEL, SCHEDULE, nfe=6, method="dmn", coefficients=True, **QUICK),
        fewstep.tune(MODEL, SCHEDULE, nfe=6, method="dmn", **QUICK),
    )


def test_tune_keeps_the_coefficients_only_where_they_are_better_held_out(pair: tuple[TunedSampler, ...]) -> None:
    fit, plain = pair
    assert "coefficients_holdout" in fit.errors and "coefficients_holdout" not in plain.errors
    assert fit.errors["holdout"] <= plain.errors["holdout"]
    assert fit.calls <= QUICK["budget"]
    if fit.solver == "nonstationary":
        assert fit.method.endswith("+ coefficients")
        assert fit.errors["holdout"] == fit.errors["coefficients_holdout"] < plain.errors["holdout"]
    with pytest.raises(ValueError, match="coefficients: choose True, False or 'refine', got 'yes'"):
        fewstep.tune(MODEL, SCHEDULE, nfe=6, coefficients="yes", **QUICK)
    with pytest.raises(TypeError, match="coefficients: must be True, False or 'refine', got int"):
        fewstep.tune(MODEL, SCHEDULE, nfe=6, coefficients=1, **QUICK)  # type: ignore[arg-type]


def test_a_fitted_sampler_saves_spends_its_nfe_and_beats_the_plain_one(
    pair: tuple[TunedSampler, ...], tmp_path: Path
) -> None:
    fit, plain = pair
    assert fit.solver == "nonstationary"  # on this target the fit carries over (measured, not assumed below)
    path = tmp_path / "fit.json"
    fit.save(path)
    loaded = TunedSampler.load(path, model=MODEL, schedule=SCHEDULE)
    x = noise(512, 7) * float(SCHEDULE.sigma(SCHEDULE.t_max))
    counting, calls = Counting(MODEL), fewstep.CallCount()
    ours = fewstep.sample(counting, x, SCHEDULE, solver=loaded, calls=calls)
    assert counting.calls == calls.nfe == 6
    assert torch.equal(ours, fewstep.sample(MODEL, x, SCHEDULE, solver=fit))
    exact = reference_solution_from_time(TARGET, x, SCHEDULE, SCHEDULE.t_max)
    theirs = fewstep.sample(MODEL, x, SCHEDULE, solver=plain)
    assert float(((ours - exact) ** 2).mean()) < float(((theirs - exact) ** 2).mean())
    with pytest.warns(UserWarning, match="fitted coefficients"):
        fit.sigmas()


def test_the_diffusers_scheduler_and_the_kdiffusion_sampler_run_a_fitted_sampler() -> None:
    from fewstep.integrations import kdiffusion
    from fewstep.integrations.diffusers import FewstepScheduler

    scheduler = FewstepScheduler(solver="ddim")
    schedule = scheduler.schedule
    model = TARGET.model(schedule, "epsilon")
    den = denoiser(schedule)
    _, rows, requests = form_of("dpmpp_3m", 5, "logsnr", schedule)
    rows[-1][1] += 0.01  # not the solver's own rows any more
    tuned = TunedSampler(
        times=requests.tolist(),
        solver="nonstationary",
        solver_options={"coefficients": rows},
        nfe=5,
        method="by hand",
        schedule=schedule_description(schedule),
        fingerprint={"kind": "probe", "sha256": "-", "sample_shape": [2]},
        levels=torch.exp(-schedule.lambda_(torch.from_numpy(requests))).tolist(),
    )
    x = noise(8, 5) * float(schedule.sigma(schedule.t_max))
    expected = fewstep.sample(den, x, solver=tuned)
    scheduler.set_timesteps(tuned=tuned)
    assert scheduler.solver.name == "nonstationary" and len(scheduler.timesteps) == 5
    y = x.float()
    for t in scheduler.timesteps:
        y = scheduler.step(model(y, t), t, y).prev_sample
    torch.testing.assert_close(y.double(), expected, rtol=1e-3, atol=1e-3)
    run = kdiffusion.tuned_sampler(tuned)
    theirs = run(kdiffusion.wrap(den), x / float(schedule.alpha(schedule.t_max)))
    torch.testing.assert_close(theirs, expected, rtol=1e-6, atol=1e-8)


def test_estimates_that_never_change_leave_the_rows_as_they_are() -> None:
    """A model whose data estimate is always 0: nothing to correct along, the fitted rows are the solver's own."""
    den = as_denoiser(lambda x, t: torch.zeros_like(x), SCHEDULE, "sample", "auto", None, 1.0, None, 0.0, None, None)
    calib = noise(8, 6)
    budget = Budget(10_000)
    teacher = solve_teacher(den, calib, budget, grid=20)
    times = model_times(SCHEDULE, 5, "logsnr").numpy()
    fit = fitted(den, "dpmpp_3m", {}, times, calib, teacher, budget)
    table = NodeTable.build(den, np.concatenate([times, [np.nan]]), True, 1, torch.device("cpu"), torch.float64)
    assert fit is not None and fit.rows == linear_form(get_solver("dpmpp_3m"), table).rows()
