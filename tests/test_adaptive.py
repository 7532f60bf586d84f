"""Adaptive step-size sampling (``fewstep.sample_adaptive``, ``fewstep.adaptive``).

- k-diffusion's ``sample_dpm_adaptive`` (DPM-Solver-12/23, PID controller) on an identical configuration: EDM, the
  exact mixture denoiser, float64 on both sides (k-diffusion's own times are float32 unless the default dtype is
  float64), the batch-RMS norm: the same accepted steps and the same sample to 1e-9 relative (observed ~1e-13).
  fewstep keeps the first evaluation of a rejected step for its retry, so it spends one evaluation less per
  rejection.
- The pairs on fixed steps (``StepTo``) have their orders, both members (1/2, 2/3, 4/5), against DOP853.
- Tolerance proportionality: the error against the exact PF-ODE solution scales like the tolerance; Dormand-Prince
  at tight tolerances reproduces DOP853 to 1e-7.
- The SDE pair: deterministic given the Brownian path, the same result when the accepted steps are replayed
  without rejections (a rejected step does not disturb the path), strong convergence to a fine fixed-step solution
  on the same path, and a small sliced W2 distance to exact samples.
- Every schedule and prediction; invalid options raise before any model call.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import F64, randn, rel
from test_properties import NEEDS_ALPHA, SCHEDULES, Counting, pure_noise_start

import fewstep
from fewstep.adaptive import METHODS, AdaptiveStats, PIDController, StepTo
from fewstep.adaptive.pairs import Context
from fewstep.bench.metrics import sliced_wasserstein2
from fewstep.bench.targets import mixture_2d, reference_solution_from_time
from fewstep.integrations import kdiffusion
from fewstep.noise import BrownianPath
from fewstep.solvers.base import drive
from fewstep.spacing import model_times

DEFAULT = mixture_2d("default")
WIDE = mixture_2d("wide")  # smooth: clean asymptotic orders
ODE_METHODS = [name for name, pair in METHODS.items() if not pair.stochastic]


def start_noise(schedule: fewstep.NoiseSchedule, n: int, seed: int = 0) -> torch.Tensor:
    return randn(n, 2, seed=seed) * float(schedule.sigma(schedule.t_max))


# --- k-diffusion ---------------------------------------------------------------------------------------------


@pytest.mark.kdiffusion
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("tol", [(0.05, 0.0078), (1e-3, 1e-4)], ids=["default", "tight"])
def test_matches_kdiffusion_dpm_adaptive(order: int, tol: tuple[float, float]) -> None:
    from k_diffusion import sampling as k_sampling

    edm = fewstep.EDM()
    denoiser = DEFAULT.model(edm, "sample", time_input="sigma")
    noise = start_noise(edm, 64)
    rtol, atol = tol
    accepted: list[float] = []

    def record(info: dict) -> None:
        if len(accepted) < info["n_accept"]:
            accepted.append(float(info["sigma"]))

    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # k-diffusion builds its lambda range with torch.tensor(sigma) in this dtype
    try:
        x_k, info = k_sampling.sample_dpm_adaptive(
            denoiser, noise, 0.002, 80.0, order=order, rtol=rtol, atol=atol, disable=True, return_info=True,
            callback=record,
        )  # fmt: skip
    finally:
        torch.set_default_dtype(old)
    stats = AdaptiveStats()
    x_f = fewstep.sample_adaptive(
        denoiser, noise, edm, method=f"dpm_solver_{order - 1}{order}", rtol=rtol, atol=atol, prediction="sample",
        norm="rms", final="t_min", stats=stats,
    )  # fmt: skip
    assert info["n_reject"] > 0  # the retry path is exercised
    assert (stats.accepted, stats.rejected) == (info["n_accept"], info["n_reject"])
    np.testing.assert_allclose(stats.times[1:], accepted, rtol=1e-9)
    assert stats.nfe == info["nfe"] - info["n_reject"]  # the retry reuses the first evaluation
    assert rel(x_f, x_k) < 1e-9
    # the same through k-diffusion's signature
    x_i, info_i = kdiffusion.sample_dpm_adaptive(
        denoiser, noise, 0.002, 80.0, order=order, rtol=rtol, atol=atol, return_info=True
    )
    assert torch.equal(x_i, x_f)
    assert info_i == {**info, "nfe": stats.nfe}


# --- orders and tolerances -----------------------------------------------------------------------------------


def run_fixed(method: str, schedule: fewstep.NoiseSchedule, noise: torch.Tensor, times: list[float], member: int):
    """The pair's ``member`` (0: lower, 1: higher order) as a fixed-step method through ``times``."""
    pair = METHODS[method]
    prediction = "velocity" if schedule.ode_variable == "t" else "epsilon"
    denoiser = fewstep.Denoiser(WIDE.model(schedule, prediction), schedule, prediction)
    stack = denoiser.stack(fewstep.CallCount())
    ctx = Context(denoiser, noise.shape[0], noise.device, F64, stack.evaluate, fewstep.CallCount())
    x, p = noise, ctx.point(times[0])
    for t in times[1:]:
        pt = ctx.point(t)
        first = denoiser(x, p)
        x = drive(pair.step(x, first, p, pt, ctx), lambda x_, p_: denoiser(x_, p_))[1 - member]
        p = pt
    return x


@pytest.mark.parametrize(
    "method, schedule, steps",
    [
        ("dpm_solver_12", fewstep.VP(), (16, 32, 64)),
        ("dpm_solver_23", fewstep.VP(), (16, 32, 64)),
        # On the diffusion schedules (tau = sigma/alpha) the 5th-order member shows ~6.3 up to 64 steps: Dormand and
        # Prince chose the weights to make the 5th-order error coefficients small. On a flow the asymptotic order shows.
        ("dopri5", fewstep.Flow(t_max=0.999), (8, 16, 32)),
    ],
    ids=["dpm_solver_12", "dpm_solver_23", "dopri5"],
)
def test_embedded_pairs_have_their_orders(method: str, schedule: fewstep.NoiseSchedule, steps: tuple[int, ...]) -> None:
    spacing = "uniform" if isinstance(schedule, fewstep.Flow) else "logsnr"
    noise = start_noise(schedule, 16)
    ref = reference_solution_from_time(WIDE, noise, schedule, schedule.t_max, schedule.t_min)
    for member, order in enumerate(METHODS[method].orders):
        errors = []
        for n in steps:
            times = model_times(schedule, n + 1, spacing).tolist()
            errors.append(float((run_fixed(method, schedule, noise, times, member) - ref).square().mean().sqrt()))
        slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
        assert abs(slope - order) < 0.3, (member, errors, slope)
    # StepTo runs the higher member
    times = model_times(schedule, steps[0] + 1, spacing).tolist()
    prediction = "velocity" if isinstance(schedule, fewstep.Flow) else "epsilon"
    model = WIDE.model(schedule, prediction)
    x = fewstep.sample_adaptive(
        model, noise, schedule, method, controller=StepTo(times), final="t_min", prediction=prediction
    )
    assert torch.equal(x, run_fixed(method, schedule, noise, times, 1))


@pytest.mark.parametrize("method", ODE_METHODS)
def test_error_is_proportional_to_the_tolerance(method: str) -> None:
    vp = fewstep.VP()
    noise = start_noise(vp, 16, seed=1)
    ref = reference_solution_from_time(WIDE, noise, vp, vp.t_max, vp.t_min)
    tols = [1e-4, 1e-5, 1e-6] if method == "dopri5" else [1e-3, 1e-4, 1e-5]
    errors = []
    for tol in tols:
        x = fewstep.sample_adaptive(WIDE.model(vp, "epsilon"), noise, vp, method, rtol=tol, atol=tol, final="t_min")
        errors.append(float((x - ref).square().mean().sqrt()))
    slope = np.polyfit(np.log(tols), np.log(errors), 1)[0]
    assert 0.7 < slope < 1.3, (errors, slope)
    assert errors[-1] < 1e-4


@pytest.mark.parametrize("schedule", [fewstep.VP(), fewstep.Flow()], ids=["vp", "flow"])
def test_dopri5_reproduces_dop853(schedule: fewstep.NoiseSchedule) -> None:
    prediction = "velocity" if isinstance(schedule, fewstep.Flow) else "epsilon"
    noise = start_noise(schedule, 8, seed=2)
    ref = reference_solution_from_time(WIDE, noise, schedule, schedule.t_max, schedule.t_min)
    model = WIDE.model(schedule, prediction)
    x = fewstep.sample_adaptive(
        model, noise, schedule, "dopri5", rtol=1e-9, atol=1e-9, prediction=prediction, final="t_min"
    )
    assert float((x - ref).abs().max()) < 1e-7


# --- the SDE pair ----------------------------------------------------------------------------------------------


def test_sde_is_deterministic_and_rejections_do_not_change_the_path() -> None:
    edm = fewstep.EDM()
    model = DEFAULT.model(edm, "epsilon")
    noise = start_noise(edm, 8, seed=3)
    stats = AdaptiveStats()
    x = fewstep.sample_adaptive(model, noise, edm, "ggf_sde", rtol=0.02, atol=0.02, seed=11, stats=stats)
    assert stats.rejected > 0
    again = fewstep.sample_adaptive(model, noise, edm, "ggf_sde", rtol=0.02, atol=0.02, seed=11)
    assert torch.equal(x, again)
    # the accepted steps alone, on a fresh path of the same seeds: no rejected query in between
    replay = fewstep.sample_adaptive(model, noise, edm, "ggf_sde", controller=StepTo(stats.times), seed=11)
    assert torch.equal(x, replay)
    other = fewstep.sample_adaptive(model, noise, edm, "ggf_sde", rtol=0.02, atol=0.02, seed=12)
    assert rel(other, x) > 1e-3


def test_sde_converges_strongly_to_the_fine_solution_on_the_same_path() -> None:
    edm = fewstep.EDM()
    noise = start_noise(edm, 8, seed=4)
    path = BrownianPath((2,), 5, 0.0, 80.0**2, batch_size=8, tol=80.0**2 * 2.0**-40, dtype=F64, cache_size=4096)

    def fine(n: int) -> torch.Tensor:  # stochastic Heun in tau = sigma on a fine logSNR grid, dW from the path
        tau = model_times(edm, n + 1, "logsnr").tolist()
        y = noise
        for s, t in zip(tau[:-1], tau[1:], strict=True):
            dw = path.increment(t * t, s * s)
            e1 = WIDE.denoise(y, 1.0, s)[1]
            e2 = WIDE.denoise(y + 2 * (t - s) * e1 + dw, 1.0, t)[1]
            y = y + (t - s) * (e1 + e2) + dw
        return y

    ref = fine(800)
    model = WIDE.model(edm, "epsilon")
    errors = []
    for tol in (0.1, 0.01):
        x = fewstep.sample_adaptive(model, noise, edm, "ggf_sde", rtol=tol, atol=tol, brownian=path, final="t_min")
        errors.append(float((x - ref).square().mean().sqrt()))
    assert errors[1] < errors[0] / 2.5 and errors[1] < 0.03, errors


def test_sde_samples_match_the_distribution() -> None:
    edm = fewstep.EDM()
    n = 400
    noise = start_noise(edm, n, seed=6)
    x = fewstep.sample_adaptive(DEFAULT.model(edm, "epsilon"), noise, edm, "ggf_sde", rtol=0.05, atol=0.05, seed=0)
    exact = DEFAULT.sample(4000, torch.Generator().manual_seed(1)).to(F64)
    floor = sliced_wasserstein2(DEFAULT.sample(n, torch.Generator().manual_seed(2)).to(F64), exact)
    assert sliced_wasserstein2(x, exact) < 1.5 * floor, floor


# --- every schedule and prediction -------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
def test_every_schedule_and_method(schedule_name: str) -> None:
    schedule = SCHEDULES[schedule_name]
    noise = start_noise(schedule, 4, seed=7)
    ref = reference_solution_from_time(WIDE, noise, schedule, schedule.t_max)
    prediction = "velocity" if pure_noise_start(schedule) else "epsilon"
    for method, pair in METHODS.items():
        model = Counting(WIDE.model(schedule, prediction))
        stats = AdaptiveStats()
        x = fewstep.sample_adaptive(
            model, noise.float(), schedule, method, rtol=1e-2, atol=1e-2, prediction=prediction, stats=stats
        )
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        assert model.calls == stats.nfe and stats.accepted + 1 == len(stats.times)
        if not pair.stochastic:
            assert float((x - ref).square().mean().sqrt()) < 0.05, method  # global error: a few times the tolerance


@pytest.mark.parametrize("schedule_name", ["vp", "linear_interpolant"])
def test_every_prediction_gives_the_same_run(schedule_name: str) -> None:
    schedule = SCHEDULES[schedule_name]
    noise = start_noise(schedule, 4, seed=8)
    predictions = [p for p in fewstep.PREDICTIONS if not (pure_noise_start(schedule) and p in NEEDS_ALPHA)]
    for method in ODE_METHODS:  # exact conversions; the SDE pair's path is as sensitive to rounding as its steps
        outs = [
            fewstep.sample_adaptive(DEFAULT.model(schedule, p), noise, schedule, method, prediction=p)
            for p in predictions
        ]
        for x in outs[1:]:
            assert rel(x, outs[0]) < 1e-6


def test_final_zero_is_the_data_estimate_at_t_min() -> None:
    vp = fewstep.VP()
    model = Counting(DEFAULT.model(vp, "epsilon"))
    noise = start_noise(vp, 4)
    stats = AdaptiveStats()
    seen: list[dict] = []
    x_end = fewstep.sample_adaptive(model, noise, vp, "dpm_solver_12", final="t_min", stats=stats, callback=seen.append)
    assert [info["t"] for info in seen] == stats.times[1:] and torch.equal(seen[-1]["x"], x_end)
    assert model.calls == stats.nfe
    x = fewstep.sample_adaptive(model, noise, vp, "dpm_solver_12", final="zero", stats=stats)
    assert model.calls == 2 * stats.nfe - 1  # the same run and one evaluation more
    p = fewstep.Denoiser(DEFAULT.model(vp, "epsilon"), vp).point(vp.t_min, 4, noise.device, F64)
    expected = (x_end - p.sigma * DEFAULT.denoise(x_end, p.alpha, p.sigma)[1]) / p.alpha
    assert rel(x, expected) < 1e-12


def test_max_nfe_stops_the_run() -> None:
    vp = fewstep.VP()
    with pytest.raises(RuntimeError, match="max_nfe"):
        fewstep.sample_adaptive(DEFAULT.model(vp, "epsilon"), start_noise(vp, 2), vp, "dopri5", rtol=1e-9, max_nfe=50)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [({"accept_safety": 1.5}, ValueError, "accept_safety"), ({"icoeff": None}, TypeError, "icoeff"),
     ({"rtol": math.nan}, ValueError, "rtol"), ({"norm": "sum"}, ValueError, "norm: choose one of max, rms")],
)  # fmt: skip
def test_invalid_controller_options(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PIDController(**kwargs)


class Refuses:
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model must not be called")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"rtol": 0.0}, ValueError, "rtol"),
        ({"atol": -1.0}, ValueError, "atol"),
        ({"rtol": "1e-3"}, TypeError, "rtol"),
        ({"method": "dpm_solver_34"}, ValueError, "method: choose one of dpm_solver_12"),
        ({"norm": "l2"}, ValueError, "norm"),
        ({"h_init": -0.1}, ValueError, "h_init"),
        ({"max_nfe": 0}, ValueError, "max_nfe"),
        ({"final": "end"}, ValueError, "final"),
        ({"controller": "pid"}, TypeError, "controller"),
        ({"controller": StepTo([0.5, 2.0])}, ValueError, "timesteps"),
        ({"method": "ggf_sde", "seed": 0, "generator": torch.Generator()}, ValueError, "seed, generator"),
        ({"method": "ggf_sde", "seed": [1, 2, 3]}, ValueError, "seed"),
        ({"method": "ggf_sde", "brownian": BrownianPath((3,), 0, 0.0, 1.0)}, ValueError, "brownian"),
        ({"method": "ggf_sde", "brownian": BrownianPath((2,), 0, 0.0, 1.0, batch_size=2)}, ValueError, "cover"),
        ({"prediction": "noise"}, ValueError, "prediction"),
    ],
)
def test_invalid_options_raise_before_any_model_call(kwargs: dict, error: type, match: str) -> None:
    vp = fewstep.VP()
    with pytest.raises(error, match=match):
        fewstep.sample_adaptive(Refuses(), start_noise(vp, 2), vp, **kwargs)
