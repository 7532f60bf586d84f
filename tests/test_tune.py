"""fewstep.tune: the GITS dynamic programme, the times' parameterisation, TunedSampler's JSON form and checks, the
tuned sampler's NFE and budget, and that tuning beats its start on held-out noise against the exact solution."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Counting

import fewstep
from fewstep.bench.targets import mixture_2d, reference_solution
from fewstep.integrations import kdiffusion
from fewstep.tune import TunedSampler
from fewstep.tune.gits import cheapest_path
from fewstep.tune.params import FLOOR, LogSNRIncrements

SCHEDULE = fewstep.VP()
TARGET = mixture_2d()
MODEL = TARGET.model(SCHEDULE, "epsilon")
#: Small enough to run in a few seconds: a 40-time teacher (120 calls), 32 calibration and 32 held-out samples.
QUICK = {"shape": (2,), "calibration": 32, "holdout": 32, "grid": 40, "budget": 600, "seed": 0}


@pytest.fixture(scope="module")
def tuned() -> TunedSampler:
    return fewstep.tune(MODEL, SCHEDULE, nfe=5, method="dmn", **QUICK)


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ the DP of GITS


def test_cheapest_path_of_convex_jump_costs_is_even() -> None:
    """With cost (j - i)^2 the sum over jumps is least when every jump is equal: 12 = 4 x 3, total 4 x 9."""
    idx = np.arange(13)
    cost = (idx[None, :] - idx[:, None]).astype(float) ** 2
    path, total = cheapest_path(cost, 4)
    assert path == [0, 3, 6, 9, 12]
    assert total == 36.0


def test_cheapest_path_matches_enumeration() -> None:
    """On random costs the DP finds the optimum that enumerating every path finds."""
    rng = np.random.default_rng(0)
    for n, jumps in ((7, 3), (8, 2), (6, 5)):
        cost = rng.uniform(0.0, 1.0, (n, n))
        best = min(
            (sum(cost[a, b] for a, b in itertools.pairwise((0, *inner, n - 1))), [0, *inner, n - 1])
            for inner in itertools.combinations(range(1, n - 1), jumps - 1)
        )
        path, total = cheapest_path(cost, jumps)
        assert path == best[1]
        assert total == pytest.approx(best[0], rel=1e-12)


def test_cheapest_path_avoids_forbidden_jumps() -> None:
    cost = np.ones((4, 4))
    cost[0, 2] = np.inf
    assert cheapest_path(cost, 2) == ([0, 1, 3], 2.0)
    cost[0, 1] = np.inf  # from 0 only straight to the end: no path of two jumps
    with pytest.raises(ValueError, match="no path"):
        cheapest_path(cost, 2)
    with pytest.raises(ValueError, match="jumps"):
        cheapest_path(cost, 4)


# ---------------------------------------------------------------------------------------- the parameterisation


@pytest.mark.parametrize("schedule", [fewstep.VP(), fewstep.EDM(), fewstep.Flow(), fewstep.DiscreteVP.linear()])
def test_logits_give_decreasing_times_in_range(schedule: fewstep.NoiseSchedule) -> None:
    params = LogSNRIncrements(schedule, 6)
    rng = np.random.default_rng(1)
    for _ in range(20):
        t = params.times(rng.normal(0.0, 3.0, 6))
        assert t[0] == schedule.t_max
        assert np.all(np.diff(t) < 0)
        assert t[-1] >= schedule.t_min
    given = fewstep.spacing.model_times(schedule, 6, "logsnr").numpy()
    back = params.times(params.logits(given))
    lo, hi = params.span()
    lam = [-schedule.lambda_(torch.from_numpy(t[1:].copy())).numpy() for t in (back, given)]
    np.testing.assert_allclose(lam[0], lam[1], atol=3 * FLOOR * (hi - lo))  # moved by the slack's floor at most


# ------------------------------------------------------------------------------------------ the tuned sampler


def test_tuned_sampler_spends_exactly_its_nfe(tuned: TunedSampler) -> None:
    counting = Counting(MODEL)
    calls = fewstep.CallCount()
    fewstep.sample(counting, noise(8, 1), SCHEDULE, solver=tuned, calls=calls)
    assert counting.calls == calls.nfe == tuned.nfe == 5
    assert len(tuned.times) == tuned.nfe or tuned.solver not in ("ipndm", "dpmpp_3m")


def test_sample_refuses_options_that_contradict_the_tuned_sampler(tuned: TunedSampler) -> None:
    x = noise(4, 2)
    fewstep.sample(MODEL, x, SCHEDULE, solver=tuned, nfe=tuned.nfe)  # repeating its NFE is fine
    with pytest.raises(ValueError, match="nfe"):
        fewstep.sample(MODEL, x, SCHEDULE, solver=tuned, nfe=tuned.nfe + 1)
    with pytest.raises(ValueError, match="spacing"):
        fewstep.sample(MODEL, x, SCHEDULE, solver=tuned, spacing="logsnr")
    with pytest.raises(ValueError, match="steps"):
        fewstep.sample(MODEL, x, SCHEDULE, solver=tuned, steps=3)
    with pytest.raises(ValueError, match="final"):
        fewstep.sample(MODEL, x, SCHEDULE, solver=tuned, final="t_min")


def test_save_load_gives_identical_samples(tuned: TunedSampler, tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    tuned.save(path)
    loaded = TunedSampler.load(path, model=MODEL, schedule=SCHEDULE)
    assert loaded == tuned
    x = noise(16, 3)
    assert torch.equal(
        fewstep.sample(MODEL, x, SCHEDULE, solver=loaded), fewstep.sample(MODEL, x, SCHEDULE, solver=tuned)
    )
    assert json.loads(path.read_text())["versions"]["format"] == 1


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


def test_bad_json_gives_a_clear_error(tuned: TunedSampler, tmp_path: Path) -> None:
    good = tuned.to_dict()
    with pytest.raises(ValueError, match="format"):
        TunedSampler.load(_write(tmp_path, {**good, "versions": {**good["versions"], "format": 99}}))
    with pytest.raises(ValueError, match="missing field.*times"):
        TunedSampler.load(_write(tmp_path, {k: v for k, v in good.items() if k != "times"}))
    with pytest.raises(ValueError, match="unknown field.*colour"):
        TunedSampler.load(_write(tmp_path, {**good, "colour": "red"}))
    with pytest.raises(ValueError, match="times"):
        TunedSampler.load(_write(tmp_path, {**good, "times": [0.1, 0.5]}))
    path = tmp_path / "not.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        TunedSampler.load(path)


def test_load_checks_the_model_and_the_schedule(tuned: TunedSampler, tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    tuned.save(path)
    other_model = mixture_2d("ring").model(SCHEDULE, "epsilon")
    with pytest.raises(ValueError, match="model: its fingerprint"):
        TunedSampler.load(path, model=other_model, schedule=SCHEDULE)
    with pytest.raises(ValueError, match="schedule: the sampler was tuned for"):
        TunedSampler.load(path, schedule=fewstep.VP(beta_max=10.0))
    net = torch.nn.Linear(2, 2)
    assert tuned.fingerprint["kind"] == "probe"
    with pytest.raises(ValueError, match="model: its fingerprint"):
        TunedSampler.load(path, model=lambda x, t: net(x.float()).double(), schedule=SCHEDULE)


def test_parameter_fingerprint_tells_modules_apart() -> None:
    from fewstep.tune.tuned import model_fingerprint

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
    fa, fb = model_fingerprint(a, SCHEDULE, (2,)), model_fingerprint(b, SCHEDULE, (2,))
    assert fa["kind"] == "parameters" and fa == fb
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert model_fingerprint(b, SCHEDULE, (2,)) != fa


def test_budget_is_respected() -> None:
    counting = Counting(MODEL)
    result = fewstep.tune(counting, SCHEDULE, nfe=6, method="dmn", **{**QUICK, "budget": 400})
    assert counting.calls == result.calls <= 400
    assert result.teacher["calls"] <= 3 * QUICK["grid"]
    with pytest.raises(ValueError, match="budget"):
        fewstep.tune(MODEL, SCHEDULE, nfe=6, **{**QUICK, "budget": 100})


def test_tune_is_deterministic_given_the_seed() -> None:
    options = {**QUICK, "budget": 250}
    first = fewstep.tune(MODEL, SCHEDULE, nfe=4, method="ld3", **options)
    again = fewstep.tune(MODEL, SCHEDULE, nfe=4, method="ld3", **options)
    assert first.times == again.times and first.solver == again.solver


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="method"):
        fewstep.tune(MODEL, SCHEDULE, nfe=5, method="annealing", **QUICK)
    with pytest.raises(ValueError, match="nfe"):
        fewstep.tune(MODEL, SCHEDULE, nfe=0, **QUICK)
    with pytest.raises(ValueError, match="shape"):
        fewstep.tune(MODEL, SCHEDULE, nfe=5, calibration=8)


def test_tuned_beats_its_start_on_held_out_noise_against_the_exact_solution() -> None:
    """On fresh noise (not the tuning's), against the exact PF-ODE solution of the mixture, the tuned sampler is
    clearly more accurate than the fixed (solver, spacing) it started from."""
    result = fewstep.tune(MODEL, SCHEDULE, nfe=10, method="dmn", **{**QUICK, "calibration": 64, "budget": 900})
    assert result.calls <= 900
    x = noise(256, 7) * float(SCHEDULE.sigma(SCHEDULE.t_max))
    exact = reference_solution(TARGET, x, SCHEDULE.alpha(SCHEDULE.t_max), SCHEDULE.sigma(SCHEDULE.t_max))
    tuned_x = fewstep.sample(MODEL, x, SCHEDULE, solver=result)
    start_x = fewstep.sample(MODEL, x, SCHEDULE, result.start["solver"], nfe=10, spacing=result.start["spacing"])

    def rmse(a: torch.Tensor) -> float:
        return float(torch.sqrt(torch.mean((a - exact) ** 2)))

    assert rmse(tuned_x) < 0.6 * rmse(start_x)


# ------------------------------------------------------------------------------------------------- integrations


def test_kdiffusion_levels_and_full_sampler(tuned: TunedSampler) -> None:
    """The full k-diffusion-signature sampler on the wrapped denoiser gives fewstep.sample's answer (the scaled
    state x / alpha at the same noise levels); ``sigmas()`` warns only for per-step choices."""
    sigmas = tuned.sigmas()
    assert sigmas[-1] == 0 and torch.all(sigmas[:-1] > 0) and torch.all(torch.diff(sigmas) < 0)
    denoiser = fewstep.Denoiser(MODEL, SCHEDULE, "epsilon")
    x = noise(8, 4) * float(SCHEDULE.sigma(SCHEDULE.t_max))
    ours = fewstep.sample(denoiser, x, solver=tuned)
    run = kdiffusion.tuned_sampler(tuned)
    theirs = run(kdiffusion.wrap(denoiser), x / float(SCHEDULE.alpha(SCHEDULE.t_max)))
    torch.testing.assert_close(theirs, ours, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="sigmas"):
        run(kdiffusion.wrap(denoiser), x, sigmas * 1.1)
    per_step = TunedSampler(**{**tuned.to_dict(), "solver": "per_step", "solver_options": {"choices": []}})
    with pytest.warns(UserWarning, match="per-step"):
        per_step.sigmas()


def test_diffusers_scheduler_runs_the_tuned_sampler() -> None:
    from fewstep.integrations.diffusers import FewstepScheduler

    scheduler = FewstepScheduler(solver="ddim")
    schedule = scheduler.schedule
    model = TARGET.model(schedule, "epsilon")
    result = fewstep.tune(
        model, schedule, nfe=5, method="gits", **{**QUICK, "calibration": 8, "grid": 20, "budget": 200}
    )
    scheduler.set_timesteps(tuned=result)
    assert scheduler.solver.name == result.solver and len(scheduler.timesteps) == result.nfe
    x = noise(8, 5).float()
    y = x.clone()
    for t in scheduler.timesteps:
        y = scheduler.step(model(y, t), t, y).prev_sample
    expected = fewstep.sample(model, x.double(), schedule, solver=result)
    torch.testing.assert_close(y.double(), expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="schedule"):
        scheduler.set_timesteps(tuned=TunedSampler(**{**result.to_dict(), "schedule": {"repr": "x", "digest": "y"}}))
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(4, tuned=result)
    scheduler.set_timesteps(4)  # back to the configured solver
    assert scheduler.solver.name == "ddim"
