"""The linear multistep family (DEIS, iPNDM, LMS) against diffusers, k-diffusion, the papers' definitions and
the exact PF-ODE solution.

Agreement on identical configurations (same schedule table, times, model, noise and final step):

- diffusers ``DEISMultistepScheduler`` (orders 1-3, ``algorithm_type="deis"``, ``solver_type="logrho"``) is
  fewstep's ``deis_k`` (default ``basis="logrho"``), to 1e-4 relative (observed up to 3e-5 for order 3 with 20
  steps: diffusers evaluates its closed-form log-rho integrals in float32, where they cancel; 1e-6 otherwise).
- diffusers ``IPNDMScheduler`` is ``ipndm`` to 1e-4 (observed 1e-7) from its second timestep on (see the
  first-step finding below).
- diffusers ``LMSDiscreteScheduler`` is ``lms`` to 1e-4 (observed 5e-6 for "linspace", whose fractional
  timesteps diffusers maps to noise levels by interpolating sigma linearly in the index, fewstep's
  ``DiscreteVP`` log alpha linearly in t; 1e-7 on the integer timesteps of "leading"/"trailing").
- k-diffusion ``sample_lms`` on EDM in float64 is ``lms`` to 1e-8 (observed 5e-13): k-diffusion integrates
  the Lagrange basis with ``scipy.integrate.quad``, which is exact for these cubics; fewstep integrates it
  exactly before the loop.

Findings (see the individual tests):

- diffusers' DEIS is not the paper's tAB: it interpolates eps in log rho (= -lambda), not in the time t.
  fewstep's ``deis_k`` follow diffusers by default, as tAB depends on how the schedule labels its time (on EDM,
  t = sigma, and so in the k-diffusion wrapper, it is rhoAB); ``basis="t"`` is the paper's tAB, checked here
  against the paper's coefficient integrals, its theoretical order and the exact solution.
- diffusers' DEIS has no ``final_sigmas_type``: its last step goes to ``alphas_cumprod[0]`` (t_min), not to
  the clean data; the comparison therefore runs fewstep with ``final="t_min"`` on the times plus t_min.
- diffusers' ``IPNDMScheduler`` starts at alpha = 0 (its first "beta" is sin(pi/2)^2 = 1 in float32) and
  writes x0 = (x - sigma eps) / max(alpha, 1e-8), which is 0/1e-8 = 0 there: its first step returns
  ``sigma_1 x`` whatever the model says, dropping ``alpha_1 x0_hat``. That is an O(1/n) error, so the whole
  run converges at first order on data with a non-zero mean (observed error ratio 2.0 per doubling), where
  fewstep's first step ``alpha_1 x0_hat + sigma_1 eps_hat`` keeps iPNDM's order (2 on this grid).
- diffusers' iPNDM uses Adams-Bashforth weights for equal steps on unequal steps in rho; the method is then
  second order, not fourth (fewstep's ``ipndm`` says order 2; ``ipndm_v``/``lms`` use the variable-step
  weights and are fourth order).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from helpers import BETAS, DIFFUSERS_RTOL, KDIFF_RTOL, N_TRAIN, karras_sigmas, node_table, randn, rel, schedule_of
from scipy import integrate
from torch import Tensor

import fewstep
from fewstep import EDM, DiscreteVP
from fewstep.bench.targets import GaussianMixture, mixture_2d, reference_solution_from_time
from fewstep.solvers.ode.deis import t_weights

diffusers = pytest.importorskip("diffusers")

F64 = torch.float64
TARGET_2D = mixture_2d("default")
WIDE = mixture_2d("wide")
SINGLE = GaussianMixture.single(2, [0.5, -0.3], 0.6)
# a smooth mixture away from the origin: its data estimate at pure noise (the mean, (2.2, 0.77)) is not 0
SHIFTED = GaussianMixture([[1.0, 1.0], [3.0, 1.5], [2.0, -0.2]], [0.8, 1.0, 0.7], [0.3, 0.5, 0.2])


def times_of(scheduler: object, sched: DiscreteVP) -> Tensor:
    return sched.t_of_index(scheduler.timesteps.to(F64))  # type: ignore[attr-defined]


# --- DEIS -------------------------------------------------------------------------------------------------


def deis_scheduler(order: int, beta: str, spacing: str, prediction: str, steps: int, lof: bool = True) -> object:
    s = diffusers.DEISMultistepScheduler(
        num_train_timesteps=N_TRAIN,
        solver_order=order,
        algorithm_type="deis",
        solver_type="logrho",
        lower_order_final=lof,
        timestep_spacing=spacing,
        prediction_type=prediction,
        **BETAS[beta],
    )
    s.set_timesteps(steps)
    return s


def run_diffusers(scheduler: object, model, x: Tensor, start: int = 0) -> Tensor:
    for t in scheduler.timesteps[start:]:  # type: ignore[attr-defined]
        x = scheduler.step(model(x, t.to(F64)), t, x).prev_sample  # type: ignore[attr-defined]
    return x


def deis_times(s: object, sched: DiscreteVP) -> Tensor:
    """diffusers' DEIS times and its last target, ``alphas_cumprod[0]`` at t_min (a step to t_min, not to 0)."""
    return torch.cat([times_of(s, sched), torch.tensor([sched.t_min], dtype=F64)])


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("beta", list(BETAS))
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [5, 8, 20])  # both sides of diffusers' 15-step lower_order_final rule
def test_deis_logrho_matches_diffusers(order: int, prediction: str, beta: str, spacing: str, steps: int) -> None:
    s = deis_scheduler(order, beta, spacing, prediction, steps)
    sched = schedule_of(s)
    model = TARGET_2D.model(sched, prediction)
    noise = randn(64, 2, seed=10 * order + steps)
    x_diffusers = run_diffusers(s, model, noise)
    x = fewstep.sample(
        model, noise, sched, f"deis_{order}", spacing=deis_times(s, sched), prediction=prediction, final="t_min"
    )
    assert rel(x, x_diffusers) < DIFFUSERS_RTOL


@pytest.mark.parametrize("order", [2, 3])
def test_deis_without_lower_order_final_matches_diffusers(order: int) -> None:
    for steps in (6, 10):
        s = deis_scheduler(order, "scaled_linear", "trailing", "epsilon", steps, lof=False)
        sched = schedule_of(s)
        model = TARGET_2D.model(sched, "epsilon")
        noise = randn(64, 2, seed=steps)
        x_diffusers = run_diffusers(s, model, noise)
        times = deis_times(s, sched)
        x = fewstep.sample(model, noise, sched, f"deis_{order}", spacing=times, final="t_min", lower_order_final=False)
        assert rel(x, x_diffusers) < DIFFUSERS_RTOL
        x_lof = fewstep.sample(model, noise, sched, f"deis_{order}", spacing=times, final="t_min")
        assert rel(x_lof, x_diffusers) > 10 * DIFFUSERS_RTOL  # the option does change the run


def test_diffusers_deis_ends_at_the_first_training_noise_level_not_at_zero() -> None:
    """Its last sigma is ``sqrt((1 - ac[0]) / ac[0])`` (~0.01 for linear betas): the run ends at t_min."""
    s = deis_scheduler(2, "linear", "trailing", "epsilon", 10)
    ac0 = float(s.alphas_cumprod[0])  # type: ignore[attr-defined]
    assert float(s.sigmas[-1]) == pytest.approx(math.sqrt((1 - ac0) / ac0), rel=1e-6)  # type: ignore[attr-defined]
    assert float(s.sigmas[-1]) > 0.005  # type: ignore[attr-defined]
    assert not hasattr(s.config, "final_sigmas_type")  # type: ignore[attr-defined]


def tab_integral(sched: fewstep.VP, t_nodes: list[float], t0: float, t1: float, j: int) -> float:
    """The paper's tAB weight (eq. 15) divided by ``alpha(t1)``: ``int_{t0}^{t1} (d rho/d tau) l_j(tau) dtau``."""

    def integrand(tau: float) -> float:
        a, s = float(sched.alpha(tau)), float(sched.sigma(tau))
        drho = (float(sched.dsigma(tau)) * a - s * float(sched.dalpha(tau))) / a**2
        basis = math.prod((tau - tm) / (t_nodes[j] - tm) for m, tm in enumerate(t_nodes) if m != j)
        return drho * basis

    return integrate.quad(integrand, t0, t1, epsabs=0.0, epsrel=1e-13, limit=200)[0]


@pytest.mark.parametrize("schedule", [fewstep.VP(), fewstep.Cosine()], ids=["vp", "cosine"])
def test_deis_tab_weights_are_the_papers_integrals(schedule: fewstep.schedules.NoiseSchedule) -> None:
    """The tAB weights (composite Gauss-Legendre in log rho) equal the paper's integrals in t (quad), 1e-10."""
    n = 7
    times = fewstep.spacing.model_times(schedule, n, "logsnr").numpy()
    denoiser = fewstep.Denoiser(WIDE.model(schedule, "epsilon"), schedule, "epsilon")
    grid = node_table(denoiser, times)
    steps = [(i, min(3, i + 1)) for i in range(1, n - 1)]
    for (i, k), weights in zip(steps, t_weights(grid, steps), strict=True):
        nodes = [float(times[i - m]) for m in range(k)]
        expected = [tab_integral(schedule, nodes, float(times[i]), float(times[i + 1]), j) for j in range(k)]
        np.testing.assert_allclose(weights, expected, rtol=1e-10, atol=1e-12 * abs(sum(expected)))


@functools.cache
def vp_problem(target_name: str) -> tuple[Tensor, Tensor]:
    """Noise at t_max of the VP schedule and its exact image at t_min."""
    vp = fewstep.VP()
    tgt = SINGLE if target_name == "single" else WIDE
    noise = randn(32, 2, seed=6)
    return noise, reference_solution_from_time(tgt, noise, vp, vp.t_max, t_end=vp.t_min)


@pytest.mark.parametrize("target_name", ["single", "wide"])
@pytest.mark.parametrize("order", [2, 3])
def test_deis_tab_has_its_order(order: int, target_name: str) -> None:
    """tAB (``basis="t"``) on the continuous VP schedule, logSNR grid to t_min: the measured global order (least
    squares slope over 4 step counts) is within 0.3 of k (observed 1.88/1.90 and 2.91/2.93)."""
    vp = fewstep.VP()
    model = (SINGLE if target_name == "single" else WIDE).model(vp, "epsilon")
    noise, ref = vp_problem(target_name)
    counts = [20, 40, 80, 160] if order == 2 else [40, 80, 160, 320]
    errors = [
        float((fewstep.sample(model, noise, vp, f"deis_{order}", steps=n, final="t_min", basis="t") - ref).abs().max())
        for n in counts
    ]
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert abs(slope - order) <= 0.3, (slope, errors)


def test_deis_tab_depends_on_the_time_variable() -> None:
    """On EDM the schedule time is sigma = rho, so tAB there is rhoAB (the k-diffusion wrapper, which writes
    every schedule as EDM, would turn tAB into rhoAB); the default log-rho basis does not depend on it."""
    edm = EDM()
    model = WIDE.model(edm, "sample")
    noise = 80.0 * randn(32, 2, seed=7)
    tab = fewstep.sample(model, noise, edm, "deis_3", nfe=12, prediction="sample", basis="t")
    rho = fewstep.sample(model, noise, edm, "deis_rho_3", nfe=12, prediction="sample")
    torch.testing.assert_close(tab, rho, rtol=1e-12, atol=1e-12)
    logrho = fewstep.sample(model, noise, edm, "deis_3", nfe=12, prediction="sample")
    assert rel(logrho, tab) > 1e-4


@pytest.mark.parametrize(
    ("solver", "options"),
    [("deis_2", {}), ("deis_2", {"basis": "t"}), ("deis_3", {}), ("deis_3", {"basis": "t"}),
     ("deis_rho_2", {}), ("deis_rho_3", {})],
)  # fmt: skip
def test_deis_variants_converge_to_the_exact_solution_on_a_discrete_schedule(solver: str, options: dict) -> None:
    """On a DiscreteVP (log alpha piecewise linear in t, so t(rho) has kinks that tAB's interpolation in t sees)
    every variant approaches the exact solution at about its order: the error falls by more than
    4^(order - 0.6) from 20 to 80 steps (observed 36.7 tAB-3, 33 logrho-3, 41 rhoAB-3, 14-15 for order 2)."""
    sched = DiscreteVP.scaled_linear()
    model = WIDE.model(sched, "epsilon")
    noise = randn(64, 2, seed=4)
    ref = reference_solution_from_time(WIDE, noise, sched, sched.t_max, t_end=sched.t_min)
    errors = [
        rel(fewstep.sample(model, noise, sched, solver, steps=n, spacing="logsnr", final="t_min", **options), ref)
        for n in (20, 40, 80)
    ]
    order = fewstep.solvers.get_solver(solver).order
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] / errors[2] > 4 ** (order - 0.6), errors


# --- iPNDM ------------------------------------------------------------------------------------------------


class TrigVP(fewstep.Interpolant):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2) in the angle time t that diffusers' IPNDMScheduler gives its
    model, stepped in sigma/alpha like the other diffusion schedules (fewstep's Interpolant steps in t)."""

    ode_variable = "sigma"


def trig_vp() -> TrigVP:
    return TrigVP(lambda t: torch.cos(0.5 * math.pi * t), lambda t: torch.sin(0.5 * math.pi * t), t_min=1e-5)


def ipndm_scheduler(steps: int) -> object:
    s = diffusers.IPNDMScheduler(num_train_timesteps=N_TRAIN)
    s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("target", ["default", "shifted"])
@pytest.mark.parametrize("steps", [5, 8, 12, 25])
def test_ipndm_matches_diffusers_from_its_second_timestep(target: str, steps: int) -> None:
    """Both start from the same state at diffusers' second timestep (``set_begin_index(1)``) and run to sigma = 0
    with the equal-step AB weights at orders 1, 2, 3, 4, 4, ..., including the step to sigma = 0."""
    tgt = TARGET_2D if target == "default" else SHIFTED
    sched = trig_vp()
    model = tgt.model(sched, "v_prediction", time_input="t")  # diffusers' iPNDM expects v = alpha eps - sigma x0
    s = ipndm_scheduler(steps)
    s.set_begin_index(1)  # type: ignore[attr-defined]
    x0 = randn(64, 2, seed=steps)
    x_diffusers = run_diffusers(s, model, x0, start=1)
    times = s.timesteps.to(F64)[1:]  # type: ignore[attr-defined]
    x = fewstep.sample(model, x0, sched, "ipndm", spacing=times, prediction="v_prediction", time_input="t")
    assert rel(x, x_diffusers) < DIFFUSERS_RTOL


def test_diffusers_ipndm_first_step_ignores_the_model() -> None:
    """From alpha = 0 diffusers' first step is ``sigma_1 x`` whatever the model returns (x0 = 0/1e-8 = 0), so
    the run is first order on data with a non-zero mean; fewstep's run from the same time converges at the
    order of its method (about 2 on this grid)."""
    s = ipndm_scheduler(10)
    assert float(s.alphas[0]) == 0.0 and float(s.betas[0]) == 1.0  # type: ignore[attr-defined]
    x = randn(16, 2, seed=1).float()
    t0 = s.timesteps[0]  # type: ignore[attr-defined]
    outs = [ipndm_scheduler(10).step(randn(16, 2, seed=k).float() * 3, t0, x).prev_sample for k in range(3)]
    for out in outs:
        torch.testing.assert_close(out, float(s.betas[1]) * x, rtol=1e-6, atol=1e-6)  # type: ignore[attr-defined]

    sched = trig_vp()
    model = SHIFTED.model(sched, "v_prediction", time_input="t")
    noise = randn(64, 2, seed=3)
    ref = reference_solution_from_time(SHIFTED, noise, sched, 1.0)
    err_d, err_f = [], []
    for steps in (20, 40, 80):
        sd = ipndm_scheduler(steps)
        err_d.append(rel(run_diffusers(sd, model, noise), ref))
        times = sd.timesteps.to(F64)  # type: ignore[attr-defined]
        x = fewstep.sample(model, noise, sched, "ipndm", spacing=times, prediction="v_prediction", time_input="t")
        err_f.append(rel(x, ref))
    d_rates = [err_d[i] / err_d[i + 1] for i in range(2)]
    f_rates = [err_f[i] / err_f[i + 1] for i in range(2)]
    assert all(1.8 < r < 2.2 for r in d_rates), err_d  # first order
    assert all(r > 3.5 for r in f_rates), err_f  # second order (observed 4.4, 4.6)
    assert err_f[-1] < err_d[-1] / 20


@pytest.mark.parametrize("case", ["edm", "flow"])
def test_ipndm_v_is_lms_and_ipndm_is_lms_on_equal_steps(case: str) -> None:
    """``ipndm_v`` and ``lms`` are the same method (exact variable-step AB4), on any grid; ``ipndm``'s
    equal-step weights agree with them where the steps are equal in the noise level (EDM, uniform in sigma;
    a flow, uniform in t) and not elsewhere."""
    sched = EDM(sigma_min=0.5) if case == "edm" else fewstep.Flow()
    prediction = "sample" if case == "edm" else "velocity"
    model = WIDE.model(sched, prediction)
    noise = (80.0 if case == "edm" else 1.0) * randn(32, 2, seed=1)

    def run(solver: str, spacing: str) -> Tensor:
        return fewstep.sample(
            model, noise, sched, solver, steps=12, spacing=spacing, prediction=prediction, final="t_min"
        )

    for spacing in ("uniform", "logsnr"):
        torch.testing.assert_close(run("ipndm_v", spacing), run("lms", spacing), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run("ipndm", "uniform"), run("lms", "uniform"), rtol=1e-10, atol=1e-10)
    assert rel(run("ipndm", "logsnr"), run("lms", "logsnr")) > 1e-6


# --- LMS --------------------------------------------------------------------------------------------------


def lms_scheduler(beta: str, spacing: str, prediction: str, steps: int) -> object:
    s = diffusers.LMSDiscreteScheduler(
        num_train_timesteps=N_TRAIN, timestep_spacing=spacing, prediction_type=prediction, **BETAS[beta]
    )
    s.set_timesteps(steps)
    return s


def run_diffusers_lms(scheduler, model, noise: Tensor, alpha0: float) -> Tensor:
    """diffusers' LMS works on k-diffusion's scaled state x / alpha and hands the model x (scale_model_input)."""
    x = noise / alpha0
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t.to(F64))
        x = scheduler.step(out, t, x).prev_sample
    return x  # at sigma = 0, where alpha = 1


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("beta", list(BETAS))
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [5, 8, 20])
def test_lms_matches_diffusers(prediction: str, beta: str, spacing: str, steps: int) -> None:
    s = lms_scheduler(beta, spacing, prediction, steps)
    sched = schedule_of(s)
    model = TARGET_2D.model(sched, prediction)
    noise = randn(64, 2, seed=steps)
    times = times_of(s, sched)
    x_diffusers = run_diffusers_lms(s, model, noise, float(sched.alpha(times[0])))
    x = fewstep.sample(model, noise, sched, "lms", spacing=times, prediction=prediction, final="zero")
    assert rel(x, x_diffusers) < DIFFUSERS_RTOL


class Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def mixture_16d() -> GaussianMixture:
    return GaussianMixture(1.5 * randn(4, 16, seed=11), [0.3, 0.5, 0.4, 0.6], [0.2, 0.3, 0.1, 0.4])


@pytest.mark.kdiffusion
@pytest.mark.parametrize("target", ["2d", "16d"])
@pytest.mark.parametrize("n", [2, 4, 7, 12, 25])
def test_lms_matches_k_diffusion(target: str, n: int) -> None:
    """k-diffusion's convention: ``model(x, sigma)`` returns the denoised x0; Karras sigmas with the appended 0
    (fewstep: final="zero"); the step to 0 keeps the full order on both sides."""
    from k_diffusion import sampling as k_sampling

    tgt = TARGET_2D if target == "2d" else mixture_16d()
    edm = EDM()
    denoiser = tgt.model(edm, "sample", time_input="sigma")
    sigmas = karras_sigmas(n)
    noise = 80.0 * randn(32, tgt.dim, seed=n)
    k_model, f_model = Counted(denoiser), Counted(denoiser)
    x_k = k_sampling.sample_lms(k_model, noise, sigmas, disable=True)
    x = fewstep.sample(
        f_model, noise, edm, "lms", spacing=sigmas[:-1], prediction="sample", time_input="sigma", final="zero"
    )
    assert x.dtype == F64
    assert rel(x, x_k) < KDIFF_RTOL
    assert f_model.calls == k_model.calls == n


# --- all of them ------------------------------------------------------------------------------------------

FAMILY = ["deis_1", "deis_2", "deis_3", "deis_rho_2", "deis_rho_3", "ipndm", "ipndm_v", "lms"]


@pytest.mark.parametrize("solver", FAMILY)
def test_flow_from_pure_noise_to_zero_is_finite_and_converges(solver: str) -> None:
    """A rectified flow from alpha = 0 to sigma = 0: DEIS steps in rho (first order on the two infinite steps),
    iPNDM/LMS in t with the velocity (their first step is DDIM). All approach the exact clean image."""
    flow = fewstep.Flow()
    model = WIDE.model(flow, "velocity")
    noise = randn(64, 2, seed=5)
    ref = reference_solution_from_time(WIDE, noise, flow, 1.0)
    errors = [rel(fewstep.sample(model, noise, flow, solver, nfe=n, prediction="velocity"), ref) for n in (10, 40)]
    assert all(math.isfinite(e) for e in errors)
    assert errors[1] < 0.1 and errors[1] < errors[0] / 3, errors  # deis_1: 0.31 -> 0.079; lms: 0.088 -> 5.6e-4


def test_solvers_are_registered_with_their_orders() -> None:
    info = {i.name: i for i in fewstep.solvers.available()}
    assert {name: info[name].order for name in FAMILY} == {
        "deis_1": 1, "deis_2": 2, "deis_3": 3, "deis_rho_2": 2, "deis_rho_3": 3, "ipndm": 2, "ipndm_v": 4, "lms": 4,
    }  # fmt: skip
    assert all(info[name].nfe_per_step == 1 and not info[name].stochastic for name in FAMILY)
    with pytest.raises(ValueError, match="basis"):
        fewstep.solvers.get_solver("deis_3", basis="rho")  # rhoAB is deis_rho_k
    with pytest.raises(TypeError, match="unknown option"):
        fewstep.solvers.get_solver("deis_rho_3", basis="t")
