"""The stochastic samplers and the noise plumbing (``generator=``, ``noise_sampler=``).

- Agreement with the peers given identical noise. k-diffusion (``sample_euler_ancestral``, ``sample_dpmpp_2m_sde``
  midpoint/heun, ``sample_dpmpp_3m_sde``, ``sample_heun`` with churn) on EDM in float64, with the same noise
  sampler on both sides: 1e-8 relative (observed: 3e-15 or better). diffusers (``DDPMScheduler``,
  ``EulerAncestralDiscreteScheduler``, ``DPMSolverMultistepScheduler`` with ``sde-dpmsolver++`` / ``sde-dpmsolver``)
  with its own generator draws reproduced in order: 1e-4 relative (observed: 5e-6 or better; diffusers'
  coefficients and some of its states are float32).
- Strong convergence: with one Brownian path fixed (a fine pre-drawn path, summed on nested grids), the samplers
  of the reverse SDE (eta = 1) converge to one pathwise solution, at strong order 1 (additive noise in this
  frame; measured 0.94-1.05 over 16-128 steps).
- Distribution: the sliced Wasserstein-2 distance to exact samples falls from NFE 10 to NFE 50.
- Determinism given the generator or the noise sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from helpers import DIFFUSERS_RTOL, KDIFF_RTOL, N_TRAIN, FineBrownianPath, karras_sigmas, randn, rel, schedule_of
from torch import Tensor

import fewstep
from fewstep import EDM
from fewstep.bench.targets import mixture_2d
from fewstep.spacing import model_times

diffusers = pytest.importorskip("diffusers")
randn_tensor = pytest.importorskip("diffusers.utils.torch_utils").randn_tensor

F64 = torch.float64
STOCHASTIC = [info.name for info in fewstep.solvers.available() if info.stochastic]
#: The stochastic samplers whose samples approach the data distribution as the steps grow (not ``lcm``, built for
#: consistency models: see ``Solver.converges``; tests/test_comfyui_only.py checks what it does).
CONVERGING = [name for name in STOCHASTIC if fewstep.solvers.get_solver(name).converges]
#: Samplers that ask a noise sampler for overlapping intervals of one Brownian path (k-diffusion's dpmpp_sde) and
#: build that path from independent draws of a generator: a noise sampler drawing torch.randn is not the generator.
PATH_INTERVALS = {"dpmpp_sde"}
TARGET = mixture_2d("default")
WIDE = mixture_2d("wide")  # smooth: the strong-order asymptotics show from 16 steps on


class InOrder:
    """A noise sampler returning pre-drawn tensors in call order; records the levels it is called with."""

    def __init__(self, draws: list[Tensor]):
        self.draws, self.calls = draws, list[tuple[float, float]]()

    def __call__(self, s: float | Tensor, t: float | Tensor) -> Tensor:
        self.calls.append((float(s), float(t)))
        return self.draws[len(self.calls) - 1]


def same_levels(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    if len(a) != len(b):
        return False
    return all(math.isclose(u, v, rel_tol=1e-12) for p, q in zip(a, b, strict=True) for u, v in zip(p, q, strict=True))


# --- k-diffusion -----------------------------------------------------------------------------------------

#: case -> (k-diffusion sampler, a name in k_diffusion.sampling; its options; fewstep's extra options)
K_CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "euler_ancestral": ("sample_euler_ancestral", {}, {}),
    "euler_ancestral-eta0.6": ("sample_euler_ancestral", {"eta": 0.6, "s_noise": 0.9}, {}),
    "euler_ancestral-eta1.5": ("sample_euler_ancestral", {"eta": 1.5}, {}),  # sigma_up clamped
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {"solver_type": "midpoint"}, {}),
    "dpmpp_2m_sde-heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.5, "s_noise": 1.1}, {}),
    # k-diffusion's 3M has no lower-order final steps and weights D2 as DPM-Solver's reference code
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}, {"d2_weight": "reference", "lower_order_final": False}),
    "dpmpp_3m_sde-eta0.3": (
        "sample_dpmpp_3m_sde",
        {"eta": 0.3, "s_noise": 0.7},
        {"d2_weight": "reference", "lower_order_final": False},
    ),
}


@pytest.mark.kdiffusion
@pytest.mark.parametrize("case", list(K_CASES))
@pytest.mark.parametrize("n", [4, 12, 25])
def test_k_diffusion_agrees_given_the_same_noise(case: str, n: int) -> None:
    """k-diffusion's denoiser convention on EDM, Karras sigmas with the final 0; one noise tensor per step on
    both sides, and k-diffusion's noise-sampler arguments (sigma, sigma_next) are fewstep's levels."""
    from k_diffusion import sampling as k_sampling

    k_name, k_opts, f_opts = K_CASES[case]
    k_fn: Callable[..., Tensor] = getattr(k_sampling, k_name)
    edm = EDM()
    denoiser = TARGET.model(edm, "sample", time_input="sigma")
    sigmas = karras_sigmas(n)
    noise = 80.0 * randn(32, 2, seed=n)
    draws = [randn(32, 2, seed=1000 + n + i) for i in range(n)]
    k_noise, f_noise = InOrder(draws), InOrder(draws)
    x_k = k_fn(denoiser, noise, sigmas, disable=True, noise_sampler=k_noise, **k_opts)
    x = fewstep.sample(
        denoiser,
        noise,
        edm,
        case.split("-")[0],
        spacing=sigmas[:-1],
        prediction="sample",
        time_input="sigma",
        noise_sampler=f_noise,
        **k_opts,
        **f_opts,
    )
    assert rel(x, x_k) < KDIFF_RTOL
    assert len(f_noise.calls) == n - 1  # no noise on the step to sigma = 0
    assert same_levels(f_noise.calls, k_noise.calls)


class KeyedByLevel:
    """The i-th pre-drawn tensor for a call at level ``levels[i]`` (k-diffusion's ``sample_heun`` draws its churn
    noise from the global generator on every step, fewstep only on the steps that churn)."""

    def __init__(self, levels: Tensor, draws: list[Tensor]):
        self.levels, self.draws, self.used = levels.numpy(), draws, list[int]()

    def __call__(self, s: float, t: float) -> Tensor:
        i = int(np.argmin(np.abs(self.levels - s)))
        assert math.isclose(self.levels[i], s, rel_tol=1e-12) and math.isclose(self.levels[i + 1], t, rel_tol=1e-12)
        self.used.append(i)
        return self.draws[i]


@pytest.mark.kdiffusion
@pytest.mark.parametrize(
    "options",
    [
        {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003},  # EDM's ImageNet-64 settings
        {"s_churn": 3.0, "s_tmin": 0.0, "s_tmax": 79.0, "s_noise": 1.0},
    ],
)
@pytest.mark.parametrize("n", [6, 40])
def test_edm_sde_agrees_with_k_diffusion_sample_heun_with_churn(options: dict, n: int) -> None:
    """EDM Alg. 2. (With s_tmax >= sigma_max k-diffusion churns above sigma_max on the first step, where fewstep
    caps s_hat at the schedule's range; the settings here keep that step out.)"""
    from k_diffusion import sampling as k_sampling

    edm = EDM()
    denoiser = TARGET.model(edm, "sample", time_input="sigma")
    sigmas = karras_sigmas(n)
    noise = 80.0 * randn(32, 2, seed=n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(100 + n)
        draws = [torch.randn_like(noise) for _ in range(n)]
        torch.manual_seed(100 + n)
        x_k = k_sampling.sample_heun(denoiser, noise, sigmas, disable=True, **options)
    keyed = KeyedByLevel(sigmas, draws)
    x = fewstep.sample(
        denoiser,
        noise,
        edm,
        "edm_sde",
        spacing=sigmas[:-1],
        prediction="sample",
        time_input="sigma",
        noise_sampler=keyed,
        **options,
    )
    assert rel(x, x_k) < KDIFF_RTOL
    churned = [i for i in range(n) if options["s_tmin"] <= float(sigmas[i]) <= options["s_tmax"]]
    assert keyed.used == churned


def test_edm_sde_caps_the_churn_at_the_schedule_range() -> None:
    """With s_tmax = inf there is no churn on the step from sigma_max (s_hat would be above it), and
    s_churn = 0 is Heun."""
    edm = EDM()
    model = TARGET.model(edm, "sample")
    noise = 80.0 * randn(16, 2, seed=1)
    keyed: list[float] = []

    def noise_sampler(s: float, t: float) -> Tensor:
        keyed.append(s)
        return randn(16, 2, seed=len(keyed))

    times: list[float] = []

    def recorded(x: Tensor, sigma: Tensor) -> Tensor:
        times.append(float(sigma[0]))
        return model(x, sigma)

    denoiser = fewstep.Denoiser(recorded, edm, "sample")
    fewstep.sample(denoiser, noise, solver="edm_sde", nfe=9, s_tmin=0.0, s_tmax=math.inf, noise_sampler=noise_sampler)
    assert max(times) == pytest.approx(80.0, rel=1e-12) and len(keyed) == 4 and keyed[0] < 80.0
    heun = fewstep.sample(model, noise, edm, "heun", nfe=9, prediction="sample")
    no_churn = fewstep.sample(model, noise, edm, "edm_sde", nfe=9, prediction="sample", s_churn=0.0)
    torch.testing.assert_close(no_churn, heun, rtol=1e-13, atol=1e-13)


# --- diffusers -------------------------------------------------------------------------------------------

LINEAR = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
SCALED = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddpm_matches_diffusers_ddpm_scheduler(prediction: str, steps: int) -> None:
    """``DDPMScheduler.step(generator=g)`` draws ``randn_tensor`` on every step from t > 0, that is on every
    step but the last one (to the clean data); fewstep is given the same draws in order."""
    s = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, clip_sample=False, prediction_type=prediction, **LINEAR)
    s.set_timesteps(steps)
    sched = schedule_of(s)
    model = TARGET.model(sched, prediction)
    x = randn(64, 2, seed=steps)
    x_d, g = x, torch.Generator().manual_seed(7)
    for t in s.timesteps:
        x_d = s.step(model(x_d, t.to(F64)), t, x_d, generator=g).prev_sample
    g = torch.Generator().manual_seed(7)
    draws = [randn_tensor(x.shape, generator=g, dtype=F64) for t in s.timesteps if t > 0]
    f_noise = InOrder(draws)
    times = sched.t_of_index(s.timesteps.to(F64))
    out = fewstep.sample(model, x, sched, "ddpm", spacing=times, prediction=prediction, noise_sampler=f_noise)
    assert rel(out, x_d) < DIFFUSERS_RTOL
    assert len(f_noise.calls) == len(draws) == steps - 1


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])  # integer timesteps: diffusers' sigmas are the table's
def test_euler_ancestral_matches_diffusers(prediction: str, spacing: str) -> None:
    """diffusers works on ``y = x/alpha`` (the model is fed ``scale_model_input(y) = x``) and draws noise on
    every step, the last one (sigma_up = 0) included; fewstep uses the first ``steps - 1`` draws."""
    steps = 12
    s = diffusers.EulerAncestralDiscreteScheduler(
        num_train_timesteps=N_TRAIN, prediction_type=prediction, timestep_spacing=spacing, **SCALED
    )
    s.set_timesteps(steps)
    sched = schedule_of(s)
    model = TARGET.model(sched, prediction)
    times = sched.t_of_index(s.timesteps.to(F64))
    x = randn(64, 2, seed=3)
    y, g = x / float(sched.alpha(times[0])), torch.Generator().manual_seed(7)
    for t in s.timesteps:
        y = s.step(model(s.scale_model_input(y, t), t.to(F64)), t, y, generator=g).prev_sample
    g = torch.Generator().manual_seed(7)
    f_noise = InOrder([randn_tensor(x.shape, generator=g, dtype=F64) for _ in s.timesteps])
    out = fewstep.sample(
        model, x, sched, "euler_ancestral", spacing=times, prediction=prediction, noise_sampler=f_noise
    )
    assert rel(out, y) < DIFFUSERS_RTOL
    assert len(f_noise.calls) == steps - 1


@pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers deprecates algorithm_type="sde-dpmsolver"
@pytest.mark.parametrize(
    ("algorithm", "order", "solver"), [("sde-dpmsolver++", 2, "dpmpp_2m_sde"), ("sde-dpmsolver", 1, "dpm_solver_1_sde")]
)
@pytest.mark.parametrize("steps", [8, 20])
def test_sde_dpm_solvers_match_diffusers(algorithm: str, order: int, solver: str, steps: int) -> None:
    """``DPMSolverMultistepScheduler.step(variance_noise=z)``. The noise-prediction SDE solver supports only
    ``final_sigmas_type="sigma_min"`` there (its step to sigma = 0 would leave noise): fewstep's final="t_min"
    on the same times, plus the table's first time."""
    final = "zero" if algorithm == "sde-dpmsolver++" else "sigma_min"
    s = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=N_TRAIN,
        algorithm_type=algorithm,
        solver_order=order,
        final_sigmas_type=final,
        timestep_spacing="trailing",
        **SCALED,
    )
    s.set_timesteps(steps)
    sched = schedule_of(s)
    model = TARGET.model(sched, "epsilon")
    x = randn(64, 2, seed=steps)
    draws = [randn(64, 2, seed=100 + i) for i in range(steps)]
    x_d = x
    for i, t in enumerate(s.timesteps):
        x_d = s.step(model(x_d, t.to(F64)), t, x_d, variance_noise=draws[i]).prev_sample
    index = s.timesteps.to(F64)
    if final == "sigma_min":
        index = torch.cat([index, torch.zeros(1, dtype=F64)])
    f_noise = InOrder(draws)
    out = fewstep.sample(
        model,
        x,
        sched,
        solver,
        spacing=sched.t_of_index(index),
        final="zero" if final == "zero" else "t_min",
        noise_sampler=f_noise,
    )
    assert rel(out, x_d) < DIFFUSERS_RTOL


# --- identities ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("euler_ancestral", {"eta": 0.7}), ("ddpm", {"eta": 0.7})),  # the same update for eta <= 1
        (("ddpm", {"eta": 0.0}), ("ddim", {})),
        (("euler_ancestral", {"eta": 0.0}), ("ddim", {})),
        (("dpm_solver_1_sde", {"eta": 0.0}), ("dpm_solver_1", {})),
        (("dpmpp_2m_sde", {"eta": 0.0}), ("dpmpp_2m", {})),
        (("edm_sde", {"s_churn": 0.0}), ("heun", {})),
    ],
    ids=lambda v: f"{v[0]}{v[1] or ''}",
)
def test_special_cases_reduce_to_known_solvers(a: tuple[str, dict], b: tuple[str, dict]) -> None:
    schedule = fewstep.VP()
    model = TARGET.model(schedule, "epsilon")
    noise = randn(32, 2, seed=4)
    nfe = 9
    outs = [
        fewstep.sample(model, noise, schedule, name, nfe=nfe, generator=torch.Generator().manual_seed(1), **opts)
        for name, opts in (a, b)
    ]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)


# --- strong convergence ----------------------------------------------------------------------------------

FINE = 2048
STRONG_N = [16, 32, 64, 128]


def strong_setup(spacing: str, batch: int = 512) -> Callable[..., Tensor]:
    """EDM, the smooth "wide" mixture, a fine grid of 2048 steps; ``solve(n, solver, **opts)`` runs on its
    every (2048/n)-th node, ending at t_min (no final denoising step) with the fine path's noise."""
    edm = EDM()
    fine = model_times(edm, FINE + 1, spacing)
    levels = (edm.sigma(fine) / edm.alpha(fine)).numpy()
    path = FineBrownianPath(levels, batch, seed=0)
    noise = 80.0 * randn(batch, 2, seed=2)
    model = WIDE.model(edm, "sample")

    def solve(n: int, solver: str, **opts: Any) -> Tensor:
        times = fine[:: FINE // n]
        return fewstep.sample(
            model, noise, edm, solver, spacing=times, final="t_min", prediction="sample", noise_sampler=path,
            progress=False, **opts,
        )  # fmt: skip

    return solve


def rms(a: Tensor, b: Tensor) -> float:
    return float((a - b).square().sum(1).mean().sqrt())


def strong_order(errors: list[float]) -> float:
    """The least-squares slope of -log(error) in log(steps) over 32..128 steps (16 is pre-asymptotic for some)."""
    return float(-np.polyfit(np.log(STRONG_N[1:]), np.log(errors[1:]), 1)[0])


@pytest.fixture(scope="module")
def reverse_sde() -> tuple[Callable[..., Tensor], Tensor]:
    """The pathwise solution of the reverse SDE (eta = 1) on the fine grid, by SDE-DPM-Solver++(2M)-heun."""
    solve = strong_setup("logsnr")
    return solve, solve(FINE, "dpmpp_2m_sde", solver_type="heun")


SAME_SDE = {  # samplers of the reverse SDE (eta = 1): (options, measured strong order)
    "euler_ancestral": ({}, 0.95),
    "ddpm": ({}, 0.95),
    "dpm_solver_1_sde": ({}, 1.02),
    "dpmpp_2m_sde": ({}, 1.08),
    "dpmpp_2m_sde-heun": ({"solver_type": "heun"}, 1.12),
    "dpmpp_3m_sde": ({}, 1.02),
}


@pytest.mark.parametrize("case", list(SAME_SDE))
def test_strong_convergence_to_the_reverse_sde_solution(case: str, reverse_sde: tuple) -> None:
    """Additive noise (its coefficient depends on the noise level only): exponential integrators converge at
    strong order 1, whatever their deterministic order (the noise term's error dominates)."""
    solve, reference = reverse_sde
    options, _measured = SAME_SDE[case]
    name = case.split("-")[0]
    errors = [rms(solve(n, name, **options), reference) for n in STRONG_N]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
    assert abs(strong_order(errors) - 1.0) < 0.3, errors
    # the fine-grid solution is the same path's solution (not just self-consistency)
    assert rms(solve(FINE, name, **options), reference) < 0.2 * errors[-1]


@pytest.mark.parametrize(
    ("solver", "options", "spacing", "lowest"),
    [
        ("dpmpp_2m_sde", {"eta": 0.5}, "logsnr", 0.7),  # measured 1.01
        ("dpmpp_3m_sde", {"eta": 0.3, "d2_weight": "reference"}, "logsnr", 0.7),  # measured 0.99
        ("euler_ancestral", {"eta": 0.5}, "logsnr", 0.7),  # measured 0.97
        ("edm_sde", {"s_churn": 4.0, "s_tmin": 0.0, "s_tmax": math.inf}, "karras", 0.5),  # measured 0.79
    ],
)
def test_strong_convergence_to_the_fine_step_solution(solver: str, options: dict, spacing: str, lowest: float) -> None:
    """Other members of the SDE family: convergence to the same sampler's fine-step solution. EDM Alg. 2 with
    ``gamma = s_churn/N`` adds noise of variance ``2 gamma s^2`` per step, an SDE whose noise strength follows
    the spacing's density; with a fixed spacing family (Karras) it converges."""
    solve = strong_setup(spacing)
    reference = solve(FINE, solver, **options)
    errors = [rms(solve(n, solver, **options), reference) for n in STRONG_N]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
    assert strong_order(errors) > lowest, errors


def test_brownian_path_noise_sampler() -> None:
    """fewstep.noise.BrownianPath over the levels: reproducible given the seeds, and the finer run is closer to
    a fine one (the steps share one path)."""
    noise_mod = pytest.importorskip("fewstep.noise")
    edm = EDM()
    model = WIDE.model(edm, "sample")
    x = 80.0 * randn(16, 2, seed=3)

    def run(nfe: int, seed: int = 0) -> Tensor:
        path = noise_mod.BrownianPath((2,), seeds=seed, t0=0.0, t1=80.0, batch_size=16, dtype=F64, tol=1e-4)
        sampler = noise_mod.brownian_noise_sampler(path)
        return fewstep.sample(model, x, edm, "dpmpp_2m_sde", nfe=nfe, final="t_min", noise_sampler=sampler)

    fine = run(64)
    assert torch.equal(run(8), run(8))
    assert not torch.allclose(run(8), run(8, seed=1))
    assert rms(run(16), fine) < rms(run(4), fine)


# --- distribution ----------------------------------------------------------------------------------------


def sliced_w2(a: Tensor, b: Tensor, projections: int = 128) -> float:
    """Sliced Wasserstein-2: the root mean over random directions of the 1-D W2^2 between the sorted
    projections of two equally large samples."""
    angle = torch.rand(projections, generator=torch.Generator().manual_seed(123), dtype=F64) * math.pi
    directions = torch.stack([angle.cos(), angle.sin()], dim=1)
    pa, pb = (a @ directions.T).sort(dim=0).values, (b @ directions.T).sort(dim=0).values
    return float((pa - pb).square().mean().sqrt())


@pytest.mark.parametrize("schedule_name", ["vp", "flow"])
@pytest.mark.parametrize("solver", CONVERGING)
def test_distribution_improves_with_nfe(solver: str, schedule_name: str) -> None:
    """4,096 samples vs 4,096 exact ones (two exact samples are ~0.05 apart). The flow starts at alpha = 0,
    where the first step is deterministic."""
    n = 4096
    schedule, prediction = (fewstep.VP(), "epsilon") if schedule_name == "vp" else (fewstep.Flow(), "velocity")
    g = torch.Generator().manual_seed(1)
    a, s = float(schedule.alpha(schedule.t_max)), float(schedule.sigma(schedule.t_max))
    noise = s * torch.randn(n, 2, generator=g, dtype=F64) + a * TARGET.sample(n, g)
    exact = TARGET.sample(n, torch.Generator().manual_seed(5))
    model = TARGET.model(schedule, prediction)
    distances = []
    for nfe in (10, 50):
        if fewstep.solvers.get_solver(solver).nfe_per_step == 2:
            nfe += 1  # two evaluations per step, one on the last step to sigma = 0
        out = fewstep.sample(
            model, noise, schedule, solver, nfe=nfe, prediction=prediction, generator=torch.Generator().manual_seed(2)
        )
        distances.append(sliced_w2(out, exact))
    assert distances[1] < distances[0], distances
    assert distances[1] < 0.15, distances


# --- the noise plumbing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_deterministic_given_the_generator(solver: str) -> None:
    schedule = fewstep.VP()
    model = TARGET.model(schedule, "epsilon")
    noise = randn(16, 2, seed=0)
    nfe = 9

    def run(**kw: Any) -> Tensor:
        return fewstep.sample(model, noise, schedule, solver, nfe=nfe, **kw)

    first = run(generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, run(generator=torch.Generator().manual_seed(0)))
    assert (first - run(generator=torch.Generator().manual_seed(1))).abs().max() > 1e-3
    if solver in PATH_INTERVALS:
        return
    # the generator's draws are torch.randn of the state's shape and dtype; a noise sampler drawing the same
    # gives the same run
    g = torch.Generator().manual_seed(0)
    same = run(noise_sampler=lambda s, t: torch.randn(16, 2, generator=g, dtype=F64))
    torch.testing.assert_close(same, first, rtol=0, atol=0)
    assert torch.equal(noise, randn(16, 2, seed=0))  # the input is not modified


def test_noise_levels_and_steps_without_noise() -> None:
    """Levels are sigma/alpha (t for flows); no noise on the step from alpha = 0 nor on the step to sigma = 0."""
    for schedule, prediction, level in [
        (fewstep.VP(), "epsilon", lambda t: float(fewstep.VP().sigma(t) / fewstep.VP().alpha(t))),
        (fewstep.Flow(), "velocity", float),
    ]:
        model = TARGET.model(schedule, prediction)
        calls = InOrder([randn(4, 2, seed=i) for i in range(10)])
        fewstep.sample(model, randn(4, 2, seed=0), schedule, "dpmpp_2m_sde", nfe=6, prediction=prediction,
                       noise_sampler=calls)  # fmt: skip
        times = model_times(schedule, 6, "logsnr")
        expected = [(level(times[i]), level(times[i + 1])) for i in range(5)]
        if isinstance(schedule, fewstep.Flow):
            expected = expected[1:]  # the first step, from alpha = 0, is deterministic
        assert same_levels(calls.calls, expected)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_3m", "heun"])
def test_deterministic_solvers_ignore_the_noise_arguments(solver: str) -> None:
    schedule = fewstep.VP()
    model = TARGET.model(schedule, "epsilon")
    noise = randn(8, 2, seed=0)
    plain = fewstep.sample(model, noise, schedule, solver, nfe=7)

    def never(s: float, t: float) -> Tensor:
        raise AssertionError("called")

    for kw in ({"generator": torch.Generator().manual_seed(3)}, {"noise_sampler": never}):
        assert torch.equal(fewstep.sample(model, noise, schedule, solver, nfe=7, **kw), plain)  # type: ignore[arg-type]


def test_noise_argument_errors() -> None:
    schedule = fewstep.VP()
    model = TARGET.model(schedule, "epsilon")
    noise = randn(8, 2, seed=0)
    with pytest.raises(ValueError, match="generator, noise_sampler"):
        fewstep.sample(
            model, noise, schedule, "ddpm", nfe=5, generator=torch.Generator(), noise_sampler=lambda s, t: noise
        )
    with pytest.raises(TypeError, match="noise_sampler"):
        fewstep.sample(model, noise, schedule, "ddpm", nfe=5, noise_sampler=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator"):
        fewstep.sample(model, noise, schedule, "ddpm", nfe=5, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_sampler: must return a tensor of shape"):
        fewstep.sample(model, noise, schedule, "ddpm", nfe=5, noise_sampler=lambda s, t: torch.zeros(8, 3))


@pytest.mark.parametrize(
    ("solver", "options", "error", "name"),
    [
        ("euler_ancestral", {"eta": -0.1}, ValueError, "eta"),
        ("euler_ancestral", {"s_noise": "1"}, TypeError, "s_noise"),
        ("ddpm", {"eta": 1.5}, ValueError, "eta"),
        ("ddpm", {"eta": True}, TypeError, "eta"),
        ("dpm_solver_1_sde", {"eta": math.nan}, ValueError, "eta"),
        ("dpmpp_2m_sde", {"solver_type": "rk4"}, ValueError, "solver_type"),
        ("dpmpp_2m_sde", {"lower_order_final": 1}, TypeError, "lower_order_final"),
        ("dpmpp_3m_sde", {"d2_weight": "half"}, ValueError, "d2_weight"),
        ("dpmpp_3m_sde", {"eta": math.inf}, ValueError, "eta"),
        ("edm_sde", {"s_churn": -1.0}, ValueError, "s_churn"),
        ("edm_sde", {"s_tmin": 2.0, "s_tmax": 1.0}, ValueError, "s_tmax"),
        ("edm_sde", {"s_noise": None}, TypeError, "s_noise"),
        ("edm_sde", {"eta": 1.0}, TypeError, "eta"),
    ],
)
def test_options_are_validated(solver: str, options: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        fewstep.solvers.get_solver(solver, **options)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_noise_follows_the_state_device(generator_device: str) -> None:
    """The generator may live on another device than the state: the noise is drawn there and moved."""
    schedule = fewstep.VP()
    model = TARGET.model(schedule, "epsilon")
    noise = randn(16, 2, seed=0).cuda()

    def run() -> Tensor:
        g = torch.Generator(device=generator_device).manual_seed(0)
        return fewstep.sample(model, noise, schedule, "dpmpp_2m_sde", nfe=8, generator=g)

    out = run()
    assert out.device == noise.device and torch.equal(out, run())
