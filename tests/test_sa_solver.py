"""SA-Solver (``sa_solver``): agreement with diffusers' ``SASolverScheduler``, the exact Lagrange-exponential
weights, deterministic orders at tau = 0, strong convergence at tau = 1, noise plumbing and option checks.

- diffusers, identical configuration (its linspace timesteps ending at training index 0, so ``final="t_min"``; its
  ``tau_func`` window in training indices reproduced by a ``tau`` callable of the noise level; its per-step
  ``randn_tensor`` draws fed in through ``noise_sampler``; ``second_order="reference"``, its O(h^3) order-2 variant):
  1e-4 relative (observed 2e-7 to 1e-5; the order-4 basis is expanded into monomials in float32 there).
- At tau = 0 the predictor alone is of order p and predictor + corrector (q = p + 1) of order p + 1, measured
  against the exact PF-ODE solution of the "wide" mixture (``lower_order_final=False``).
- At tau = 1 on every step it solves the reverse SDE (tau^2 is k-diffusion's eta): strong order 1 towards the
  pathwise solution of test_stochastic's fine Brownian path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from helpers import BETAS, DIFFUSERS_RTOL, N_TRAIN, randn, rel, schedule_of
from torch import Tensor

import fewstep
from fewstep.bench.targets import mixture_2d, reference_solution
from fewstep.solvers.frame import lagrange_integrals
from fewstep.solvers.sde.sa_solver import adams_weights

diffusers = pytest.importorskip("diffusers")
randn_tensor = pytest.importorskip("diffusers.utils.torch_utils").randn_tensor

F64 = torch.float64
TARGET = mixture_2d("default")
WIDE = mixture_2d("wide")


# --- diffusers -------------------------------------------------------------------------------------------


def diffusers_run(p: int, q: int, steps: int, prediction: str, **options: Any) -> tuple[Tensor, Tensor]:
    """diffusers' SASolverScheduler and fewstep's sa_solver on the same times, model, noise and tau."""
    s = diffusers.SASolverScheduler(
        num_train_timesteps=N_TRAIN, predictor_order=p, corrector_order=q, prediction_type=prediction,
        **BETAS["scaled_linear"],
    )  # fmt: skip
    s.set_timesteps(steps)
    sched = schedule_of(s)
    model = TARGET.model(sched, prediction)
    x = randn(64, 2, seed=steps + p)
    g, x_d = torch.Generator().manual_seed(7), x
    for t in s.timesteps:
        x_d = s.step(model(x_d, t.to(F64)), t, x_d, generator=g).prev_sample
    g = torch.Generator().manual_seed(7)
    draws = [randn_tensor(x.shape, generator=g, dtype=F64) for _ in s.timesteps]  # one per step, as diffusers
    times = sched.t_of_index(torch.cat([s.timesteps.to(F64), torch.zeros(1, dtype=F64)]))  # ends at index 0
    levels = (sched.sigma(times) / sched.alpha(times)).numpy()

    def by_step(level_s: float, level_t: float) -> Tensor:  # the draw of the step starting at level_s
        i = int(np.argmin(np.abs(levels - level_s)))
        assert math.isclose(levels[i + 1], level_t, rel_tol=1e-12)
        return draws[i]

    def tau(level: float) -> float:  # diffusers' default tau_func: 1 for training indices 200..800
        index = round(float(sched.t_of_level(torch.tensor(level, dtype=F64))) * N_TRAIN - 1)
        return 1.0 if 200 <= index <= 800 else 0.0

    out = fewstep.sample(
        model, x, sched, "sa_solver", spacing=times, final="t_min", prediction=prediction, noise_sampler=by_step,
        predictor_order=p, corrector_order=q, tau=tau, tau_window=None, **options,
    )  # fmt: skip
    return out, x_d


@pytest.mark.parametrize(("p", "q"), [(1, 1), (2, 2), (3, 3), (4, 4), (2, 3), (1, 2)])
@pytest.mark.parametrize("steps", [8, 20])
def test_matches_diffusers_sasolver_scheduler(p: int, q: int, steps: int) -> None:
    out, x_d = diffusers_run(p, q, steps, "epsilon", second_order="reference")
    assert rel(out, x_d) < DIFFUSERS_RTOL


def test_matches_diffusers_with_v_prediction_and_differs_without_its_order_2_variant() -> None:
    out, x_d = diffusers_run(2, 2, 10, "v_prediction", second_order="reference")
    assert rel(out, x_d) < DIFFUSERS_RTOL
    exact, _ = diffusers_run(2, 2, 10, "v_prediction")  # phi_2(-H) kept: an O(h^3) change per step
    assert rel(exact, x_d) > 100 * DIFFUSERS_RTOL


# --- the weights -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [[0.0], [0.0, -0.7], [1.0, 0.0, -1.3], [0.0, -1.0, -2.5, -3.1]])
@pytest.mark.parametrize("big_h", [1e-6, 0.3, 2.0])
def test_adams_weights_integrate_the_lagrange_basis_against_the_exponential(theta: list[float], big_h: float) -> None:
    """``int_0^1 H e^{-H (1 - v)} l_j(v) dv``: against scipy quadrature, and H times the plain integrals as H -> 0."""
    from scipy.integrate import quad

    from fewstep.solvers.frame import lagrange_basis

    weights = adams_weights(theta, big_h)
    for j, w in enumerate(weights):
        exact = quad(lambda v, j=j: big_h * math.exp(-big_h * (1 - v)) * lagrange_basis(theta, np.array(v))[j], 0, 1)
        assert w == pytest.approx(exact[0], rel=1e-10, abs=1e-14)
    assert sum(weights) == pytest.approx(-math.expm1(-big_h), rel=1e-12)  # constants integrate exactly
    if big_h < 1e-3:
        plain = lagrange_integrals(theta, 0.0, 1.0)
        np.testing.assert_allclose(np.array(weights) / big_h, plain, rtol=1e-5, atol=1e-9)


# --- orders ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exact_problem() -> tuple[Tensor, Tensor]:
    sched = fewstep.VP()
    g = torch.Generator().manual_seed(1234)
    a, s = float(sched.alpha(sched.t_max)), float(sched.sigma(sched.t_max))
    noise = a * WIDE.sample(64, g) + s * torch.randn(64, 2, generator=g, dtype=F64)
    a1, s1 = float(sched.alpha(sched.t_min)), float(sched.sigma(sched.t_min))
    return noise, reference_solution(WIDE, noise, a, s, alpha_end=a1, sigma_end=s1)


@pytest.mark.parametrize(
    ("p", "q", "expected", "counts"),
    [
        (1, 0, 1, [10, 20, 40, 80]),
        (2, 0, 2, [20, 40, 80, 160]),
        (3, 0, 3, [40, 80, 160, 320]),
        (1, 2, 2, [20, 40, 80, 160]),
        (2, 3, 3, [40, 80, 160, 320]),
        (3, 4, 4, [40, 80, 160, 320]),
    ],
)
def test_deterministic_order_at_tau_zero(p: int, q: int, expected: int, counts: list[int], exact_problem) -> None:
    noise, ref = exact_problem
    sched = fewstep.VP()
    model = WIDE.model(sched, "epsilon")
    errors = []
    for n in counts:
        out = fewstep.sample(
            model, noise, sched, "sa_solver", steps=n, final="t_min", tau=0.0, predictor_order=p, corrector_order=q,
            lower_order_final=False,
        )  # fmt: skip
        errors.append(float((out - ref).abs().max()))
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert abs(slope - expected) <= 0.3, (slope, errors)


# --- strong convergence ----------------------------------------------------------------------------------


def test_strong_convergence_to_the_reverse_sde_solution() -> None:
    """tau = 1 everywhere is the reverse SDE; with test_stochastic's fine Brownian path the runs on nested grids
    approach its pathwise solution (SDE-DPM-Solver++(2M)-heun on the 2048-step grid) at strong order 1."""
    from test_stochastic import FINE, STRONG_N, rms, strong_order, strong_setup

    solve = strong_setup("logsnr", batch=256)
    reference = solve(FINE, "dpmpp_2m_sde", solver_type="heun")
    options = {"tau": 1.0, "tau_window": None, "predictor_order": 2, "corrector_order": 2}
    errors = [rms(solve(n, "sa_solver", **options), reference) for n in STRONG_N]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert abs(strong_order(errors) - 1.0) < 0.3, errors
    # its own fine-step solution on the same path is that solution too (measured 0.22 of the 128-step error)
    assert rms(solve(FINE // 4, "sa_solver", **options), reference) < 0.3 * errors[-1]


# --- noise plumbing, special cases, options --------------------------------------------------------------


def run(noise: Tensor, nfe: int = 10, **kw: Any) -> Tensor:
    schedule = fewstep.VP()
    return fewstep.sample(TARGET.model(schedule, "epsilon"), noise, schedule, "sa_solver", nfe=nfe, **kw)


def test_deterministic_given_the_seed_and_a_batch_equals_its_samples() -> None:
    noise = randn(8, 2, seed=1)
    seeds = [3, 17, 4, 99, 2**40, 0, 5, 6]
    batch = run(noise, seed=seeds)
    assert torch.equal(batch, run(noise, seed=seeds))
    alone = torch.cat([run(noise[b : b + 1], seed=[seeds[b]]) for b in range(8)])
    assert torch.equal(batch, alone)
    assert (batch - run(noise, seed=[s + 1 for s in seeds])).abs().max() > 1e-3


def test_tau_zero_and_first_order_is_dpm_solver_pp_1_and_tau_window_limits_the_noise() -> None:
    noise = randn(16, 2, seed=2)
    torch.testing.assert_close(
        run(noise, tau=0.0, predictor_order=1, corrector_order=0), run(noise, tau=1.0, tau_window=(0.0, 0.0),
        predictor_order=1, corrector_order=0), rtol=0, atol=0,
    )  # fmt: skip
    ddim = fewstep.sample(TARGET.model(fewstep.VP(), "epsilon"), noise, fewstep.VP(), "ddim", nfe=10)
    torch.testing.assert_close(run(noise, tau=0.0, predictor_order=1, corrector_order=0), ddim, rtol=1e-12, atol=1e-12)
    calls: list[float] = []

    def sampler(s: float, t: float) -> Tensor:
        calls.append(s)
        return randn(16, 2, seed=len(calls))

    run(noise, noise_sampler=sampler)  # default: tau = 1 on steps starting at t in [0.2, 0.8] (VP: t_max = 1)
    times = fewstep.spacing.model_times(fewstep.VP(), 10, "logsnr")
    inside = [float(t) for t in times if 0.2 <= (float(t) - 1e-3) / (1 - 1e-3) <= 0.8]
    assert 0 < len(calls) == len(inside) < 10


def test_predictor_only_records_gaussian_transitions() -> None:
    """Without corrector each step is a Gaussian transition: recorded, and replayed exactly."""
    from fewstep import sample_with_logprob

    noise = randn(4, 2, seed=3)
    traj = sample_with_logprob(
        TARGET.model(fewstep.VP(), "epsilon"), noise, fewstep.VP(), "sa_solver", nfe=8, corrector_order=0,
        tau_window=None, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert sum(traj.stochastic) == 7 and torch.isfinite(traj.log_prob).all()
    again = run(noise, nfe=8, corrector_order=0, tau_window=None, noise_sampler=traj.replay())
    assert traj.sample is not None and torch.equal(again, traj.sample)
    # with the corrector the predicted states are recorded (tests/test_trajectory_stages.py)
    corrected = sample_with_logprob(TARGET.model(fewstep.VP(), "epsilon"), noise, fewstep.VP(), "sa_solver", nfe=8)
    assert any(corrected.stochastic) and torch.isfinite(corrected.log_prob).all()


@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"predictor_order": 5}, ValueError, "predictor_order"),
        ({"predictor_order": 0}, ValueError, "predictor_order"),
        ({"corrector_order": 2.0}, TypeError, "corrector_order"),
        ({"tau": -1.0}, ValueError, "tau"),
        ({"tau": "1"}, TypeError, "tau"),
        ({"tau_window": (0.5, 0.2)}, ValueError, "tau_window"),
        ({"s_noise": math.nan}, ValueError, "s_noise"),
        ({"lower_order_final": 1}, TypeError, "lower_order_final"),
        ({"second_order": "midpoint"}, ValueError, "second_order"),
    ],
)
def test_options_are_validated(options: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        fewstep.solvers.get_solver("sa_solver", **options)


def test_a_bad_tau_callable_fails_before_any_model_call() -> None:
    calls = []

    def model(x: Tensor, t: Tensor) -> Tensor:
        calls.append(1)
        return x

    with pytest.raises(ValueError, match="tau"):
        fewstep.sample(model, randn(2, 2), fewstep.VP(), "sa_solver", nfe=6, tau=lambda level: -1.0)
    assert not calls
