"""Property tests (hypothesis): every schedule x prediction x solver x NFE x spacing x final runs, spends exactly
the requested number of model evaluations and returns a finite sample of the noise's shape and dtype; from NFE 10 the
sample stays within 10 times the radius of the marginal where the run ends (the data radius at the clean end; the
named exceptions below, with docs/solvers.md's reasons)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import Counting
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.context import Callback
from fewstep.schedules import NoiseSchedule
from fewstep.spacing import DISCRETE_SPACINGS, SPACINGS


def _cos(t: torch.Tensor) -> torch.Tensor:
    return torch.cos(0.5 * math.pi * t)


def _sin(t: torch.Tensor) -> torch.Tensor:
    return torch.sin(0.5 * math.pi * t)


SCHEDULES: dict[str, NoiseSchedule] = {
    "vp": fewstep.VP(),
    "cosine": fewstep.Cosine(),
    "ddpm_linear": fewstep.DiscreteVP.linear(),
    "sd_scaled_linear": fewstep.DiscreteVP.scaled_linear(),
    "sd_zero_snr": fewstep.DiscreteVP.scaled_linear(rescale_zero_terminal_snr=True),
    "ve": fewstep.VE(),
    "edm": fewstep.EDM(),
    "flow": fewstep.Flow(),
    "trig_below_1": fewstep.Interpolant(_cos, _sin, t_max=0.999),
    "trig_to_1": fewstep.Interpolant(_cos, _sin, t_max=1.0),  # alpha(1) = cos(pi/2) ~ 6e-17 in float64
    "linear_interpolant": fewstep.Interpolant(lambda t: 1.0 - t, lambda t: t, t_max=1.0),  # alpha(1) = 0 exactly
}
NEEDS_ALPHA = ("epsilon", "score")  # predictions that cannot give x0 where alpha = 0
SOLVERS = {info.name: info for info in fewstep.solvers.available()}  # stochastic ones draw from cfg['seed']
CONTINUOUS = [s for s in SPACINGS if s not in DISCRETE_SPACINGS]
TARGET = mixture_2d("default")
#: The largest norm of a target sample, up to 4 standard deviations of its widest component.
DATA_RADIUS = float((TARGET.means.norm(dim=-1) + 4 * TARGET.stds).max())
#: Solvers whose samples may leave 10 data radii at NFE >= 10 (docs/solvers.md, "Divergence", gives the reasons);
#: the divergence guard warns for them.
DIVERGE_AT_FEW_STEPS = {
    # noise-prediction singlestep SDE: the stage's noise re-enters the step through eps(u), multiplied by
    # (1 + eta) sigma_t (e^h - 1) ~ 2 alpha_t/alpha_s; unstable until h is small (about NFE 30 and more)
    "dpm_solver_2_sde",
    # Song et al.'s Langevin corrector (snr = 0.16) is tuned for hundreds of steps; with few, its step sizes
    # overshoot (about NFE 25 and more are within the bound)
    "pc_langevin",
}
#: Solvers whose samples may leave 10 data radii at NFE 10 on spacings other than logSNR (the spacing of a named
#: solver), which can make one step very long in lambda (EDM with uniform steps ends with a step from sigma 8 to
#: 0.002): first-order SDE steps and Heun's final Euler step overshoot there (docs/solvers.md, "Divergence").
#: dpm_2_ancestral: its noise-prediction step down to sigma_down (a lambda-step longer than the grid's) overshoots from
#: nearly pure noise (alpha(t_max) near 0) when the spacing makes the first steps long (karras, exponential, AYS).
#: conjugate_ddim: the factor 1 + O(du^2) of its step multiplies y = x / alpha, which is some 600 times x at the
#: start of the trigonometric interpolant stopped at t_max = 0.999 (alpha = 0.0016); a long first step in u (karras,
#: exponential) leaves that much of it uncancelled (10 data radii exceeded 2x and 3.6x at NFE 10; logSNR: within).
OVERSHOOT_OFF_LOGSNR = {"euler_maruyama", "dpm_solver_1_sde", "heun", "edm_sde", "dpm_2_ancestral", "conjugate_ddim"}


def pure_noise_start(schedule: NoiseSchedule) -> bool:
    return float(schedule.alpha(schedule.t_max)) == 0.0


@st.composite
def configurations(draw):
    name = draw(st.sampled_from(sorted(SCHEDULES)))
    schedule = SCHEDULES[name]
    predictions = [p for p in fewstep.PREDICTIONS if not (pure_noise_start(schedule) and p in NEEDS_ALPHA)]
    spacings = CONTINUOUS + (list(DISCRETE_SPACINGS) if isinstance(schedule, fewstep.DiscreteVP) else [])
    return {
        "schedule_name": name,
        "prediction": draw(st.sampled_from(predictions)),
        "solver": draw(st.sampled_from(sorted(SOLVERS))),
        "nfe": draw(st.integers(1, 100)),
        "spacing": draw(st.sampled_from(spacings)),
        "final": draw(st.sampled_from(["zero", "t_min"])),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "shape": draw(st.sampled_from([(3, 2), (1, 2), (2, 1, 2)])),
        "seed": draw(st.integers(0, 2**16)),
    }


def make_noise(schedule: NoiseSchedule, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0 = TARGET.sample(shape[0], g).reshape(shape)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    a, s = float(schedule.alpha(schedule.t_max)), float(schedule.sigma(schedule.t_max))
    return (a * x0 + s * eps).to(dtype)


def run(cfg: dict, nfe: int, callback: Callback | None = None):
    schedule = SCHEDULES[cfg["schedule_name"]]
    model = Counting(TARGET.model(schedule, cfg["prediction"]))
    denoiser = fewstep.Denoiser(model, schedule, cfg["prediction"])
    noise = make_noise(schedule, cfg["shape"], cfg["dtype"], cfg["seed"])
    generator = torch.Generator().manual_seed(cfg["seed"])  # used by the stochastic solvers only
    calls = fewstep.CallCount()
    out = fewstep.sample(
        denoiser, noise, solver=cfg["solver"], nfe=nfe, spacing=cfg["spacing"], final=cfg["final"], progress=False,
        generator=generator, calls=calls, callback=callback,
    )  # fmt: skip
    return out, noise, model, calls


def end_radius(schedule: NoiseSchedule, t_end: float | None) -> float:
    """The radius of the marginal ``alpha x0 + sigma eps`` where a run ends: ``DATA_RADIUS`` at the clean end, else
    ``alpha DATA_RADIUS + sigma r`` with ``r`` the norm of a 2-D standard normal at 4 standard deviations per
    coordinate (``final="t_min"`` ends at the last model time, which some spacings leave far from sigma = 0)."""
    if t_end is None:
        return DATA_RADIUS
    t = torch.tensor(t_end, dtype=torch.float64)
    return float(schedule.alpha(t)) * DATA_RADIUS + float(schedule.sigma(t)) * 4 * math.sqrt(2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configurations())
def test_any_configuration_spends_exactly_nfe_and_returns_a_finite_sample(cfg: dict) -> None:
    info = SOLVERS[cfg["solver"]]
    try:
        out, noise, model, calls = run(cfg, cfg["nfe"])
    except ValueError as err:
        # Only solvers with several evaluations per step can be unable to spend an exact budget.
        assert info.nfe_per_step > 1, f"{cfg['solver']} raised {err}"
        assert "nfe" in str(err)
        # ... and then the next budget can be spent.
        out, noise, model, calls = run(cfg, cfg["nfe"] + 1)
        assert model.calls == calls.nfe == cfg["nfe"] + 1
    else:
        assert model.calls == calls.nfe == cfg["nfe"]
    assert out.shape == noise.shape
    assert out.dtype == noise.dtype
    assert bool(torch.isfinite(out).all()), out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configurations(), nfe=st.integers(10, 60))
def test_from_nfe_10_samples_stay_within_ten_data_radii(cfg: dict, nfe: int) -> None:
    if cfg["solver"] in DIVERGE_AT_FEW_STEPS:
        return
    if cfg["spacing"] != "logsnr" and cfg["solver"] in OVERSHOOT_OFF_LOGSNR:
        return
    cfg = {**cfg, "shape": (16, 2), "nfe": nfe}
    ends: list[float | None] = []

    def record(info: dict) -> None:
        ends.append(info["t_next"])

    try:
        out, *_ = run(cfg, nfe, record)
    except ValueError:
        assert SOLVERS[cfg["solver"]].nfe_per_step > 1  # an odd budget a solver cannot spend: the next one
        ends.clear()
        out, *_ = run(cfg, nfe + 1, record)
    bound = 10 * end_radius(SCHEDULES[cfg["schedule_name"]], ends[-1])
    assert float(out.double().norm(dim=-1).max()) <= bound, cfg


@pytest.mark.parametrize("prediction", NEEDS_ALPHA)
@pytest.mark.parametrize("schedule_name", [n for n, s in SCHEDULES.items() if pure_noise_start(s)])
def test_noise_predictions_are_refused_where_alpha_is_zero(schedule_name: str, prediction: str) -> None:
    """epsilon/score cannot recover x0 at alpha = 0: a ValueError naming 'prediction', before any model call."""
    schedule = SCHEDULES[schedule_name]
    model = Counting(TARGET.model(schedule, "velocity"))
    noise = torch.randn(2, 2)
    with pytest.raises(ValueError, match="prediction"):
        fewstep.sample(model, noise, schedule, "euler", nfe=5, prediction=prediction)
    assert model.calls == 0
    # starting below t_max (user-given times) is fine
    times = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    out = fewstep.sample(
        Counting(TARGET.model(schedule, prediction)), noise, schedule, "euler", spacing=times, prediction=prediction
    )
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_each_schedule_and_solver_with_a_small_budget(schedule_name: str, solver: str) -> None:
    """A deterministic sweep next to the random one: every schedule x solver at NFE 5..8, both ends."""
    schedule = SCHEDULES[schedule_name]
    prediction = "velocity" if pure_noise_start(schedule) else "epsilon"
    for final in ("zero", "t_min"):
        for nfe in range(5, 9):
            cfg = {
                "schedule_name": schedule_name, "prediction": prediction, "solver": solver, "nfe": nfe,
                "spacing": "logsnr", "final": final, "dtype": torch.float64, "shape": (4, 2), "seed": nfe,
            }  # fmt: skip
            try:
                out, _, model, _ = run(cfg, nfe)
            except ValueError as err:
                assert SOLVERS[solver].nfe_per_step > 1 and "nfe" in str(err)
                continue
            assert model.calls == nfe
            assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("schedule_name", ["vp", "edm", "flow", "trig_to_1", "sd_zero_snr"])
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_one_evaluation_is_at_t_max_and_returns_the_data_estimate(schedule_name: str, solver: str) -> None:
    """nfe=1 with final="zero": one first-order step from t_max straight to the clean data, so the sample is
    the exact denoiser's estimate at t_max (the single model time once collapsed to t_min; and DPM-Solver
    refused one evaluation from alpha = 0, although the step from pure noise is also the step to the data)."""
    schedule = SCHEDULES[schedule_name]
    prediction = "velocity" if pure_noise_start(schedule) else "epsilon"
    model = Counting(TARGET.model(schedule, prediction))
    times: list[float] = []
    denoiser = fewstep.Denoiser(lambda x, time: times.append(float(time[0])) or model(x, time), schedule, prediction)
    noise = make_noise(schedule, (8, 2), torch.float64, 0)
    calls = fewstep.CallCount()
    out = fewstep.sample(denoiser, noise, solver=solver, nfe=1, final="zero", calls=calls)
    t_max_input = float(denoiser.time_of(torch.tensor(schedule.t_max, dtype=torch.float64)))
    assert model.calls == calls.nfe == 1
    assert times == [pytest.approx(t_max_input, rel=1e-12)]
    t = schedule.t_max
    x0, eps = TARGET.denoise(noise, schedule.alpha(t), schedule.sigma(t))
    euler_in_t = ("euler", "heun", "heunpp2", "edm_sde", "gradient_estimation")
    if isinstance(schedule, fewstep.Interpolant) and solver in euler_in_t:
        # Euler in t (the last step of Heun is Euler): exact only for straight paths, not for cos/sin
        expected = noise + (0.0 - t) * (float(schedule.dalpha(t)) * x0 + float(schedule.dsigma(t)) * eps)
    else:
        expected = x0
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
