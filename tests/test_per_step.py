"""The per-step solver (``per_step``, USF's solver schedule): uniform choices reproduce the multistep solvers they
coincide with, to rounding; measured convergence orders of fixed choice patterns; the choice type and its checks."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.bench.targets.reference import reference_solution_from_time
from fewstep.solvers.ode.per_step import StepChoice

F64 = torch.float64
SETTINGS = {  # schedule, prediction, spacing
    "vp": (fewstep.VP(), "epsilon", "logsnr"),
    "edm": (fewstep.EDM(), "sample", "karras"),
    "flow": (fewstep.Flow(), "velocity", "uniform"),  # alpha(t_max) = 0: a first step of infinite lambda-size
}
TARGET = mixture_2d("default")


def noise_at_t_max(schedule: fewstep.NoiseSchedule, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a, s = float(schedule.alpha(schedule.t_max)), float(schedule.sigma(schedule.t_max))
    return a * TARGET.sample(n, g) + s * torch.randn(n, 2, generator=g, dtype=F64)


def run(setting: str, solver: str, nfe: int, final: str, **options) -> torch.Tensor:
    schedule, prediction, spacing = SETTINGS[setting]
    model = TARGET.model(schedule, prediction)
    noise = noise_at_t_max(schedule, 16, 0)
    return fewstep.sample(
        model, noise, schedule, solver, nfe=nfe, spacing=spacing, prediction=prediction, final=final,
        progress=False, **options,
    )  # fmt: skip


def assert_same(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    err = float((a - b).abs().max()) / max(float(b.abs().max()), 1.0)
    assert err <= tol, err


C = StepChoice
#: (per_step choices as a function of the step count and of the steps before the first finite one (1 where
#: alpha(t_max) = 0), the solver and options they coincide with, tolerance)
EQUIVALENT = {
    # DPM-Solver++(2M): D1 weighted (1 - e^{-h})/2 (the "low" scale, the default choice)
    "2m": (lambda n, w: C(), ("dpmpp_2m", {"lower_order_final": False}), 1e-12),
    # 3M with the reference codes' second-difference weight h phi_3 (the "low" scale at order 3), 2M warm-up
    "3m_reference": (lambda n, w: C(3), ("dpmpp_3m", {"lower_order_final": False, "d2_weight": "reference"}), 1e-12),
    # fewstep's 3M: Taylor-exact at order 3, but its order-2 warm-up step (step 1) is 2M's, the "low" scale
    "3m": (
        lambda n, w: [C(3)] * (2 + w) + [C(3, scale="taylor")] * (n - 2 - w),
        ("dpmpp_3m", {"lower_order_final": False}),
        1e-12,
    ),
    "ddim": (lambda n, w: C(1, "noise"), ("ddim", {}), 1e-12),
    # the exact integral of the data estimate linear in lambda
    "res": (lambda n, w: C(2, scale="taylor"), ("res_multistep", {}), 1e-12),
    # DEIS in log rho = -lambda is the noise-prediction integrator with Taylor-exact (Lagrange) weights
    "deis_2": (lambda n, w: C(2, "noise", scale="taylor"), ("deis_2", {"lower_order_final": False}), 1e-10),
    "deis_3": (lambda n, w: C(3, "noise", scale="taylor"), ("deis_3", {"lower_order_final": False}), 1e-10),
    # UniPC-bh2: UniP-2 is 2M, UniC-2 on every step but the last
    "unipc": (lambda n, w: C(corrector=True), ("unipc_bh2", {"lower_order_final": False}), 1e-12),
    # UniP-3 (bh2) solves for the Taylor-exact weights; its warm-up UniP-2 is 2M
    "unipc_3": (
        lambda n, w: [C(3, corrector=True)] * (2 + w) + [C(3, scale="taylor", corrector=True)] * (n - 2 - w),
        ("unipc_bh2", {"lower_order_final": False, "solver_order": 3}),
        1e-12,
    ),
    "deis_3_unic": (
        lambda n, w: C(3, "noise", corrector=True, scale="taylor"),
        ("deis_3", {"lower_order_final": False, "corrector": "unic"}),
        1e-10,
    ),
}


@pytest.mark.parametrize("final", ["zero", "t_min"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("case", sorted(EQUIVALENT))
def test_uniform_choices_equal_the_solver_they_coincide_with(case: str, setting: str, final: str) -> None:
    choices, (solver, options), tol = EQUIVALENT[case]
    nfe = 8
    steps = nfe  # one evaluation per step
    warm = int(setting == "flow")  # the first step, from alpha = 0, is first order and starts no history
    mine = run(setting, "per_step", nfe, final, choices=choices(steps, warm))
    assert_same(mine, run(setting, solver, nfe, final, **options), tol)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_default_is_dpmpp_2m_with_its_lower_order_final_steps(setting: str) -> None:
    for nfe in (5, 16):
        assert_same(run(setting, "per_step", nfe, "t_min"), run(setting, "dpmpp_2m", nfe, "t_min"), 1e-12)


def test_noise_prediction_2m_is_dpm_solver_multistep() -> None:
    """The "low" noise-prediction second-order step is DPM-Solver's multistep 2M (diffusers' "dpmsolver",
    midpoint): x_t = (a_t/a_s) x_s - s_t (e^h - 1) eps_i - s_t (e^h - 1)/2 (eps_i - eps_{i-1}) / r, written out
    here from the model's outputs."""
    schedule = fewstep.VP()
    model = TARGET.model(schedule, "epsilon")
    times = fewstep.spacing.model_times(schedule, 7, "logsnr").numpy()
    x = noise_at_t_max(schedule, 8, 3)
    got = fewstep.sample(model, x, schedule, "per_step", spacing=times, final="t_min", choices=C(2, "noise"))
    a, s = schedule.alpha(torch.from_numpy(times)).tolist(), schedule.sigma(torch.from_numpy(times)).tolist()
    lam = [math.log(ai / si) for ai, si in zip(a, s, strict=True)]
    eps_prev = None
    for i in range(len(times) - 1):
        eps = model(x, torch.full((x.shape[0],), float(times[i]), dtype=F64))
        h = lam[i + 1] - lam[i]
        step = a[i + 1] / a[i] * x - s[i + 1] * math.expm1(h) * eps
        if eps_prev is not None:
            r = (lam[i] - lam[i - 1]) / h
            step = step - s[i + 1] * math.expm1(h) / 2 * (eps - eps_prev) / r
        x, eps_prev = step, eps
    assert_same(got, x, 1e-12)


def test_corrector_reuses_the_next_evaluation() -> None:
    schedule, prediction, spacing = SETTINGS["vp"]
    calls = fewstep.CallCount()
    fewstep.sample(
        TARGET.model(schedule, prediction), noise_at_t_max(schedule, 4, 0), schedule, "per_step", nfe=6,
        spacing=spacing, calls=calls, choices=C(3, corrector=True, scale="taylor"),
    )  # fmt: skip
    assert calls.nfe == 6 and calls.requests == 6


def test_a_choice_changes_only_its_step_and_later() -> None:
    """Changing step j's choice leaves the callback's states up to step j - 1 unchanged and changes step j's."""
    schedule, prediction, spacing = SETTINGS["edm"]
    model, noise = TARGET.model(schedule, prediction), noise_at_t_max(schedule, 8, 1)

    def states(choices: list[StepChoice]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        fewstep.sample(
            model, noise, schedule, "per_step", nfe=6, spacing=spacing, prediction=prediction, choices=choices,
            callback=lambda info: out.append(info["x"]),
        )  # fmt: skip
        return out

    base = states([C()] * 6)
    other = states([C()] * 3 + [C(1, "noise")] + [C()] * 2)
    assert all(torch.equal(a, b) for a, b in zip(base[:3], other[:3], strict=True))
    assert not torch.allclose(base[3], other[3])


# --- convergence orders on an exact target (the "wide" 2-D mixture, reference by DOP853 to t_min) ---

ORDER_TARGET = mixture_2d("wide")
PATTERNS = {  # name: (choices for n steps, expected order, step counts)
    "data_2_low": (lambda n: C(), 2, [20, 40, 80, 160]),
    "noise_2_taylor": (lambda n: C(2, "noise", scale="taylor"), 2, [20, 40, 80, 160]),
    "data_3_taylor": (lambda n: C(3, scale="taylor"), 3, [40, 80, 160, 320]),
    # the reference second-difference weight leaves an O(h^3) local error: second order
    "data_3_low": (lambda n: C(3), 2, [40, 80, 160, 320]),
    # UniC on a second-order predictor: third order, data and noise predictors alternating
    "mixed_2_corrected": (
        lambda n: [C(2, "data" if i % 2 else "noise", corrector=True) for i in range(n)],
        3,
        [40, 80, 160, 320],
    ),
}


@functools.cache
def order_problem() -> tuple[torch.Tensor, torch.Tensor]:
    schedule = fewstep.VP()
    g = torch.Generator().manual_seed(7)
    a, s = float(schedule.alpha(schedule.t_max)), float(schedule.sigma(schedule.t_max))
    noise = a * ORDER_TARGET.sample(32, g) + s * torch.randn(32, 2, generator=g, dtype=F64)
    ref = reference_solution_from_time(ORDER_TARGET, noise, schedule, schedule.t_max, schedule.t_min, rtol=1e-12)
    return noise, ref


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_measured_order_of_fixed_choice_patterns(pattern: str) -> None:
    choices, expected, counts = PATTERNS[pattern]
    schedule = fewstep.VP()
    model = ORDER_TARGET.model(schedule, "epsilon")
    noise, ref = order_problem()
    errors = []
    for n in counts:
        out = fewstep.sample(
            model, noise, schedule, "per_step", steps=n, spacing="logsnr", final="t_min", choices=choices(n),
            progress=False,
        )  # fmt: skip
        errors.append(float((out - ref).abs().max()))
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert abs(slope - expected) <= 0.3, (slope, errors)


# --- the choice type and the option checks ---


def test_step_choice_round_trips_through_json() -> None:
    choice = C(3, "noise", True, "taylor")
    text = json.dumps(choice.to_dict())
    assert StepChoice.from_dict(json.loads(text)) == choice
    assert StepChoice.from_dict({"order": 1}) == C(1)


def test_dict_choices_equal_step_choices() -> None:
    choices = [C(1, "noise"), C(2, corrector=True), C(3, scale="taylor"), C(2, "noise", scale="taylor"), C()]
    a = run("vp", "per_step", 5, "zero", choices=choices)
    b = run("vp", "per_step", 5, "zero", choices=[c.to_dict() for c in choices])
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("fields", "error", "names"),
    [
        ({"order": 4}, ValueError, "order"),
        ({"order": True}, ValueError, "order"),
        ({"prediction": "x0"}, ValueError, "prediction"),
        ({"scale": "half"}, ValueError, "scale"),
        ({"corrector": "yes"}, TypeError, "corrector"),
        ({"depth": 2}, ValueError, "depth"),
    ],
)
def test_invalid_choices_are_refused_naming_the_field(fields: dict, error: type, names: str) -> None:
    with pytest.raises(error, match=names):
        StepChoice.from_dict(fields)


def test_a_list_of_the_wrong_length_is_refused_before_any_call() -> None:
    schedule = fewstep.VP()
    calls = fewstep.CallCount()
    with pytest.raises(ValueError, match="choices"):
        fewstep.sample(
            TARGET.model(schedule), noise_at_t_max(schedule, 2, 0), schedule, "per_step", nfe=5, choices=[C()] * 4,
            calls=calls,
        )  # fmt: skip
    assert calls.nfe == 0
    with pytest.raises(TypeError, match="choices"):
        fewstep.solvers.get_solver("per_step", choices=3)
    with pytest.raises(ValueError, match="choices"):
        fewstep.solvers.get_solver("per_step", choices=[])
