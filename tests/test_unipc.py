"""UniPC (``unipc_bh1``, ``unipc_bh2``) and the UniC corrector on ``dpmpp_2m``/``dpmpp_3m``.

- Agreement with diffusers' ``UniPCMultistepScheduler`` (predict_x0=True) on identical configurations, to
  1e-4 relative (diffusers computes its coefficients in float32; observed about 1e-7), with the helpers and
  the setup of tests/test_peers.py.
- Where diffusers is wrong, documented below and checked against diffusers' own last data estimate and the
  exact PF-ODE solution instead: bh1 returns NaN on its step to sigma = 0 (``B(h) = h = inf`` times a zero
  correction) at every order; with ``lower_order_final=False`` bh2 fails on that step too from order 2 on
  (+-inf, or a singular system at order 3).
- diffusers' UniPC lowers the order of its final steps at every step count (``min(solver_order, steps left)``),
  although its docstring says "only valid for < 15 inference steps" (the rule of its DPMSolverMultistepScheduler,
  fewstep's default): ``lower_order_final="always"`` reproduces the code.
- Measured convergence orders (the pattern and references of tests/test_convergence.py: float64, VP, logSNR
  spacing, ``final="t_min"``, no lower-order final steps): UniP-p has order p, UniPC-p order p + 1, and the UniC
  corrector raises DPM-Solver++(2M) from order 2 to 3 at the same NFE.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import node_table, run_solver
from test_convergence import CASES, TARGETS, problem
from test_peers import BETAS, DIFFUSERS_RTOL, N_TRAIN, TARGET_2D, randn, rel, run_diffusers, schedule_of

import fewstep
from fewstep.bench.targets import reference_solution_from_time
from fewstep.solvers.unic import unic_weights, unip_weights

diffusers = pytest.importorskip("diffusers")

F64 = torch.float64
TOL = 0.3


def unipc_scheduler(
    variant: str,
    final: str,
    order: int,
    steps: int,
    *,
    beta: str = "scaled_linear",
    spacing: str = "trailing",
    prediction: str = "epsilon",
    lower_order_final: bool = True,
    disable_corrector: tuple[int, ...] = (),
) -> object:
    s = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=N_TRAIN,
        solver_order=order,
        solver_type=variant,
        predict_x0=True,
        lower_order_final=lower_order_final,
        disable_corrector=list(disable_corrector),
        final_sigmas_type=final,
        timestep_spacing=spacing,
        prediction_type=prediction,
        **BETAS[beta],
    )
    s.set_timesteps(steps)
    return s


def fewstep_times(scheduler: object, sched: fewstep.DiscreteVP, final: str) -> torch.Tensor:
    """The model times of diffusers' timesteps; with final_sigmas_type="sigma_min" diffusers' last sigma is
    sqrt((1 - ac[0]) / ac[0]), the noise level of training index 0, which fewstep reaches as a last node
    (``final="t_min"``) without evaluating the model there."""
    times = sched.t_of_index(scheduler.timesteps.to(F64))  # type: ignore[attr-defined]
    if final == "sigma_min":
        times = torch.cat([times, sched.t_of_index(torch.zeros(1, dtype=F64))])
    return times


def compare(variant: str, final: str, order: int, steps: int, fewstep_options: dict | None = None, **kw) -> float:
    s = unipc_scheduler(variant, final, order, steps, **kw)
    sched = schedule_of(s)
    prediction = kw.get("prediction", "epsilon")
    model = TARGET_2D.model(sched, prediction)
    noise = randn(64, 2, seed=10 * order + steps)
    x_diffusers = run_diffusers(s, model, noise)
    assert bool(torch.isfinite(x_diffusers).all())
    options = {"solver_order": order, "lower_order_final": "always" if kw.get("lower_order_final", True) else False}
    options.update(fewstep_options or {})
    x = fewstep.sample(
        model,
        noise,
        sched,
        f"unipc_{variant}",
        spacing=fewstep_times(s, sched, final),
        prediction=prediction,
        final="zero" if final == "zero" else "t_min",
        **options,
    )
    return rel(x, x_diffusers)


# --- diffusers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "final"), [("bh1", "sigma_min"), ("bh2", "zero"), ("bh2", "sigma_min")])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(("spacing", "steps"), [("trailing", 6), ("linspace", 10), ("leading", 20)])
def test_matches_diffusers(variant: str, final: str, order: int, prediction: str, spacing: str, steps: int) -> None:
    """20 steps: diffusers' final lower-order steps at any step count, lower_order_final="always" here."""
    assert compare(variant, final, order, steps, spacing=spacing, prediction=prediction) < DIFFUSERS_RTOL


@pytest.mark.parametrize("order", [2, 3])
def test_lower_order_final_rules(order: int) -> None:
    """Below 15 steps fewstep's default lower_order_final=True is diffusers' UniPC rule; at 20 steps diffusers
    still lowers the final steps (its code) where fewstep's default does not (its docstring, DPM-Solver++)."""
    assert compare("bh2", "sigma_min", order, 10, {"lower_order_final": True}) < DIFFUSERS_RTOL
    assert compare("bh2", "sigma_min", order, 20, {"lower_order_final": True}) > 10 * DIFFUSERS_RTOL
    assert compare("bh2", "sigma_min", order, 20, {"lower_order_final": "always"}) < DIFFUSERS_RTOL


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
def test_without_lower_order_final_matches_diffusers(variant: str, order: int) -> None:
    for steps in (6, 20):
        assert compare(variant, "sigma_min", order, steps, lower_order_final=False) < DIFFUSERS_RTOL


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_disable_corrector_matches_diffusers(variant: str) -> None:
    """diffusers' semantics: ``disable_corrector=[i]`` leaves the result of step i uncorrected; disabling every
    step is UniP alone (``corrector=False``)."""
    assert compare(variant, "sigma_min", 3, 8, {"disable_corrector": [0, 1, 4]}, disable_corrector=(0, 1, 4)) < (
        DIFFUSERS_RTOL
    )
    every = tuple(range(8))
    assert compare(variant, "sigma_min", 3, 8, {"corrector": False}, disable_corrector=every) < DIFFUSERS_RTOL
    assert compare(variant, "sigma_min", 3, 8, {"corrector": False}) > 10 * DIFFUSERS_RTOL  # the corrector acts


_EXACT: dict[tuple[bytes, float], torch.Tensor] = {}


def exact_clean(noise: torch.Tensor, sched: fewstep.DiscreteVP) -> torch.Tensor:
    """The exact PF-ODE image at the clean data of ``noise`` at t = 1 (cached: the same for every order)."""
    key = (noise.numpy().tobytes(), float(sched.alphas_cumprod[-1]))
    if key not in _EXACT:
        _EXACT[key] = reference_solution_from_time(TARGET_2D, noise, sched, 1.0)
    return _EXACT[key]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_bh1_to_sigma_zero(order: int) -> None:
    """diffusers' bh1 returns NaN on its step to sigma = 0, at every order: there ``B(h) = h = inf`` multiplies
    the (zero) higher-order correction of the first-order step. fewstep's step to sigma = 0 is first order and
    finite: it returns ``alpha_clean`` times the last data estimate, which diffusers has computed (its
    ``model_outputs[-1]``) before failing. Against the exact PF-ODE solution, fewstep's bh1 is as accurate as
    bh2 (which diffusers computes correctly) and converges."""
    errors: dict[str, list[float]] = {"bh1": [], "bh2": []}
    noise = randn(64, 2, seed=1)
    for steps in (5, 10, 20, 40):
        s = unipc_scheduler("bh1", "zero", order, steps)
        sched = schedule_of(s)
        model = TARGET_2D.model(sched, "epsilon")
        x_diffusers = run_diffusers(s, model, noise)
        assert bool(torch.isnan(x_diffusers).all())
        times = fewstep_times(s, sched, "zero")
        x = fewstep.sample(
            model, noise, sched, "unipc_bh1", spacing=times, solver_order=order, lower_order_final="always"
        )
        assert bool(torch.isfinite(x).all())
        assert rel(x, sched.alpha_clean * s.model_outputs[-1]) < DIFFUSERS_RTOL  # type: ignore[attr-defined]
        assert float(times[0]) == 1.0  # trailing spacing: every run starts at the last training index
        ref = exact_clean(noise, sched)
        errors["bh1"].append(rel(x, ref))
        x2 = fewstep.sample(
            model, noise, sched, "unipc_bh2", spacing=times, solver_order=order, lower_order_final="always"
        )
        errors["bh2"].append(rel(x2, ref))
    assert all(a > b for a, b in zip(errors["bh1"], errors["bh1"][1:], strict=False)), errors
    assert all(0.67 < a / b < 1.5 for a, b in zip(errors["bh1"], errors["bh2"], strict=True)), errors


@pytest.mark.parametrize("order", [2, 3])
def test_without_lower_order_final_to_sigma_zero(order: int) -> None:
    """With lower_order_final=False and final_sigmas_type="zero", diffusers takes its step to sigma = 0 at full
    order: r_k = (lambda_k - lambda_s) / h = 0 there, so bh2 returns +-inf (order 2) or fails to solve its singular
    system (order 3). fewstep keeps that step first order; it then equals its lower_order_final run below 15 steps
    only in the last step, and both are about as far from the exact solution."""
    s = unipc_scheduler("bh2", "zero", order, 8, lower_order_final=False)
    sched = schedule_of(s)
    model = TARGET_2D.model(sched, "epsilon")
    noise = randn(64, 2, seed=order)
    if order == 2:
        assert not bool(torch.isfinite(run_diffusers(s, model, noise)).any())  # +-inf
    else:
        with pytest.raises(RuntimeError, match="singular"):
            run_diffusers(s, model, noise)
    times = fewstep_times(s, sched, "zero")
    x = fewstep.sample(model, noise, sched, "unipc_bh2", spacing=times, solver_order=order, lower_order_final=False)
    ref = reference_solution_from_time(TARGET_2D, noise, sched, float(times[0]))
    x_lof = fewstep.sample(model, noise, sched, "unipc_bh2", spacing=times, solver_order=order)
    assert bool(torch.isfinite(x).all())
    assert rel(x, ref) < 1.5 * rel(x_lof, ref) and rel(x, ref) < 0.2


# --- identities and the coefficient functions -----------------------------------------------------------------


def test_unip_is_dpm_solver_pp_and_unic_attaches_to_it() -> None:
    """With bh2, UniP-2 is DPM-Solver++(2M) and UniP-3 (warm-up included) is fewstep's Taylor-exact 3M (not
    the reference-weight 3M of diffusers' DPMSolverMultistepScheduler): so UniPC-p with bh2 and DPM-Solver++
    with the UniC corrector are the same runs."""
    sched = fewstep.VP()
    model = TARGET_2D.model(sched, "epsilon")
    noise = randn(16, 2, seed=5)
    for n in (6, 25):
        for p, dpm in ((2, "dpmpp_2m"), (3, "dpmpp_3m")):
            for corrector in (False, True):
                x = fewstep.sample(model, noise, sched, "unipc_bh2", steps=n, solver_order=p, corrector=corrector)
                opts = {"corrector": "unic"} if corrector else {}
                y = fewstep.sample(model, noise, sched, dpm, steps=n, **opts)
                torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def random_lam(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.uniform(0.05, 0.6, n)) - 3.0


@pytest.mark.parametrize("seed", range(4))
def test_coefficients_are_exact_for_polynomial_data_estimates(seed: int) -> None:
    """UniC-p (p = 2, 3) and UniP-3 integrate the exact solution's ``int_s^t e^{-(t - u)} m(u) du`` (in lambda,
    scaled by alpha_t) without error when the data estimate m is a polynomial of degree p (UniC) or p - 1
    (UniP); their B(h) cancels, so bh1 and bh2 agree. UniP-2 and UniC-1 use the simplified coefficient 1/2,
    exact only for constant m, where B(h) matters."""
    lam = random_lam(6, seed)
    i = 3
    s, t = lam[i], lam[i + 1]
    h = t - s

    def exact(q: int) -> float:  # int_0^h e^{-(h - u)} u^q du
        return math.factorial(q) * float(fewstep.solvers.phi.hphi(q + 1, h))

    def apply(weights: list[float], nodes: list[float], q: int) -> float:
        return sum(w * (x - s) ** q for w, x in zip(weights, nodes, strict=True))

    past = [lam[i - k] for k in range(4)]  # lambda_i, lambda_{i-1}, ...
    for p in (2, 3):
        w = {v: unic_weights(lam, i, p, v) for v in ("bh1", "bh2")}
        np.testing.assert_allclose(w["bh1"], w["bh2"], rtol=1e-12, atol=1e-14)
        for q in range(p + 1):
            assert apply(w["bh2"], [t, *past[:p]], q) == pytest.approx(exact(q), rel=1e-10, abs=1e-13)
    w3 = {v: unip_weights(lam, i, 3, v) for v in ("bh1", "bh2")}
    np.testing.assert_allclose(w3["bh1"], w3["bh2"], rtol=1e-12, atol=1e-14)
    for q in range(3):
        assert apply(w3["bh2"], past[:3], q) == pytest.approx(exact(q), rel=1e-10, abs=1e-13)
    for weights in (unip_weights(lam, i, 2, "bh1"), unic_weights(lam, i, 1, "bh1")):
        assert sum(weights) == pytest.approx(exact(0), rel=1e-12)
    assert unip_weights(lam, i, 2, "bh1") != pytest.approx(unip_weights(lam, i, 2, "bh2"))


def test_infinite_steps_are_first_order_and_uncorrected() -> None:
    """From pure noise (alpha = 0, a flow at t = 1) and to sigma = 0 the step is first order and finite; neither
    is corrected (bh1's B(h) is infinite there), and the history restarts after the first one."""
    sched = fewstep.Flow()
    model = TARGET_2D.model(sched, "velocity")
    noise = randn(8, 2, seed=2)
    denoiser = fewstep.Denoiser(model, sched, "velocity")
    grid = node_table(denoiser, [1.0, 0.7, 0.4, 0.2, 0.1, math.nan], True, 8)
    for variant in ("unipc_bh1", "unipc_bh2"):
        solver = fewstep.solvers.get_solver(variant, solver_order=3, lower_order_final=False)
        assert solver.step_orders(grid) == [1, 1, 2, 3, 1]
        x = run_solver(solver, noise, grid, denoiser)
        assert bool(torch.isfinite(x).all())


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="solver_order"):
        fewstep.solvers.get_solver("unipc_bh2", solver_order=4)
    with pytest.raises(ValueError, match="lower_order_final"):
        fewstep.solvers.get_solver("unipc_bh2", lower_order_final="sometimes")
    with pytest.raises(ValueError, match="disable_corrector"):
        fewstep.solvers.get_solver("unipc_bh1", disable_corrector=[-1])
    with pytest.raises(TypeError, match="corrector"):
        fewstep.solvers.get_solver("unipc_bh1", corrector="unic")
    with pytest.raises(ValueError, match="corrector"):
        fewstep.solvers.get_solver("dpmpp_2m", corrector="heun")


# --- measured convergence orders ------------------------------------------------------------------------------


def measure(solver: str, target_name: str, counts: list[int], **options) -> tuple[float, list[float]]:
    """The global order on VP with logSNR spacing to t_min (tests/test_convergence.py's problem and reference)."""
    sched, prediction, spacing, _ = CASES["vp"]
    noise, ref = problem("vp", target_name)
    model = TARGETS[target_name].model(sched, prediction)
    errors = []
    for n in counts:
        out = fewstep.sample(
            model, noise, sched, solver, steps=n, spacing=spacing, prediction=prediction, final="t_min",
            progress=False, lower_order_final=False, **options,
        )  # fmt: skip
        errors.append(float((out - ref).abs().max()))
    assert all(e > 0 and math.isfinite(e) for e in errors), errors
    return float(-np.polyfit(np.log(counts), np.log(errors), 1)[0]), errors


COUNTS = {1: [10, 20, 40, 80], 2: [20, 40, 80, 160], 3: [40, 80, 160, 320], 4: [80, 160, 320, 640]}


# Measured (VP, max error, single/wide): UniP-1 0.95/0.97, UniP-2 1.96-2.12, UniP-3 4.04/2.90 (UniP-3 is the
# Taylor-exact 3M, superconvergent on the single Gaussian as in test_convergence.py); UniPC-1 1.97-2.12,
# UniPC-2 2.99-3.05, UniPC-3 3.88/3.96 (at 80..640 steps; 3.67/3.89 at 40..320, still pre-asymptotic).
@pytest.mark.parametrize("target_name", ["single", "wide"])
@pytest.mark.parametrize(
    ("variant", "p", "corrector"),
    [("bh2", 1, False), ("bh1", 2, False), ("bh2", 2, False), ("bh2", 3, False)]
    + [("bh1", 1, True), ("bh2", 1, True), ("bh1", 2, True), ("bh2", 2, True), ("bh2", 3, True)],
)
def test_measured_order(variant: str, p: int, corrector: bool, target_name: str) -> None:
    nominal = p + int(corrector)
    expected = 4 if (p, corrector, target_name) == (3, False, "single") else nominal
    slope, errors = measure(f"unipc_{variant}", target_name, COUNTS[nominal], solver_order=p, corrector=corrector)
    assert abs(slope - expected) <= TOL, f"UniP{'C' if corrector else ''}-{p} {variant}: {slope:.3f}, {errors}"


@pytest.mark.parametrize("target_name", ["single", "wide"])
def test_unic_raises_the_order_of_dpmpp_2m_at_equal_nfe(target_name: str) -> None:
    """Measured (single/wide): 1.96/2.01 without, 2.95/3.00 with the corrector (bh2; bh1 the same to three
    digits). With the corrector dpmpp_3m is UniPC-3 (test_unip_is_dpm_solver_pp_and_unic_attaches_to_it)."""
    counts = COUNTS[2]
    plain, plain_errors = measure("dpmpp_2m", target_name, counts)
    slope, errors = measure("dpmpp_2m", target_name, counts, corrector="unic")
    assert abs(plain - 2) <= TOL and abs(slope - 3) <= TOL, (plain, slope)
    assert all(e < pe for e, pe in zip(errors, plain_errors, strict=True))
    solver = fewstep.solvers.get_solver("dpmpp_2m", corrector="unic")
    denoiser = fewstep.Denoiser(TARGETS[target_name].model(fewstep.VP(), "epsilon"), fewstep.VP(), "epsilon")
    grid = node_table(denoiser, np.linspace(1.0, 0.001, 21))
    assert solver.nfe(grid) == fewstep.solvers.get_solver("dpmpp_2m").nfe(grid) == 20
