"""Heavy-ball (HB) and generalized heavy-ball (GHVB) momentum on DPM-Solver++ multistep (Wizadwongsa et al.
2023): beta = 1 is the base solver, HB is first order for beta < 1, GHVB keeps the solver's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from test_convergence import SUPERCONVERGENT, TOL, measured_order
from test_properties import SCHEDULES, TARGET, make_noise, pure_noise_start

import fewstep
from fewstep.solvers.momentum import previous_mean_weights


def _run(solver: str, schedule_name: str = "vp", nfe: int = 10, final: str = "zero", **options) -> torch.Tensor:
    schedule = SCHEDULES[schedule_name]
    prediction = "velocity" if pure_noise_start(schedule) else "epsilon"
    noise = make_noise(schedule, (16, 2), torch.float64, 3)
    return fewstep.sample(
        TARGET.model(schedule, prediction), noise, schedule, solver, nfe=nfe, prediction=prediction, final=final,
        progress=False, **options,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["hb", "ghvb"])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "res_multistep"])
def test_beta_one_is_the_base_solver(solver: str, kind: str) -> None:
    base = _run(solver)
    assert torch.equal(_run(solver, momentum=1.0, momentum_type=kind), base)
    assert torch.equal(_run(solver, momentum=None, momentum_type=kind), base)
    # the momentum loop itself, at beta just below 1
    torch.testing.assert_close(_run(solver, momentum=1.0 - 1e-13, momentum_type=kind), base, rtol=0, atol=1e-10)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "res_multistep"])
def test_momentum_changes_the_run(solver: str) -> None:
    base = _run(solver)
    hb = _run(solver, momentum=0.8)
    ghvb = _run(solver, momentum=0.8, momentum_type="ghvb")
    assert not torch.allclose(hb, base) and not torch.allclose(ghvb, base) and not torch.allclose(hb, ghvb)


@pytest.mark.parametrize("target_name", ["single", "wide"])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "res_multistep"])
@pytest.mark.parametrize(("kind", "beta"), [("hb", 0.8), ("hb", 0.5), ("ghvb", 0.8)])
def test_measured_order(kind: str, beta: float, solver: str, target_name: str) -> None:
    """HB reduces to first order (measured 0.93-1.02 at beta = 0.8, res_multistep 0.83-0.86); GHVB keeps the base
    order (2M: 1.89-1.98, res_multistep 2.00-2.04;
    3M: 2.9 on the wide mixture and, as the base 3M, 4 on the single Gaussian). Smaller beta keeps the order but
    lengthens the pre-asymptotic range (GHVB-2M at beta = 0.5: 1.67 over 20..160 steps, 1.94 over the last pair)."""
    base = {"dpmpp_2m": 2, "dpmpp_3m": 3, "res_multistep": 2}[solver]
    expected = 1 if kind == "hb" else SUPERCONVERGENT.get((solver, target_name), base)
    slope, errors = measured_order(
        "vp", solver, target_name, lower_order_final=False, momentum=beta, momentum_type=kind
    )
    assert abs(slope - expected) <= TOL, f"{kind} beta={beta} {solver}/{target_name}: slope {slope:.3f}, {errors}"
    assert errors[-1] < errors[0]


def test_ghvb_on_equal_steps_has_the_papers_coefficients() -> None:
    """On equal lambda-steps, D_i - (1 - beta) M_{i-1} with the Adams-Bashforth combination is the paper's GHVB
    (order 2: ((2 + b) f_n - (2 - b) f_{n-1}) / 2; order 3: ((18 + 5b), -(24 - 8b), (6 - b)) / 12) in the limit
    of small steps (the e^lambda weight tends to uniform)."""
    h = np.full(5, 1e-6)
    b = 0.7
    ab2, ab3 = np.array([3, -1]) / 2, np.array([23, -16, 5]) / 12
    c2 = ab2 - (1 - b) * np.array(previous_mean_weights(h, 3, 2))
    c3 = ab3 - (1 - b) * np.array(previous_mean_weights(h, 3, 3))
    np.testing.assert_allclose(c2, [(2 + b) / 2, -(2 - b) / 2], atol=1e-6)
    np.testing.assert_allclose(c3, np.array([18 + 5 * b, -(24 - 8 * b), 6 - b]) / 12, atol=1e-6)


def test_previous_mean_weights_are_exact_for_polynomials() -> None:
    h = np.array([0.7, 0.4, 1.3, 0.9])
    lam = np.concatenate([[0.0], np.cumsum(h)])
    i = 3
    for order in (1, 2, 3):
        w = previous_mean_weights(h, i, order)
        for degree in range(order):
            f = lam**degree
            num = quad(lambda x, d=degree: np.exp(x) * x**d, lam[i - 1], lam[i], epsabs=0, epsrel=1e-13)[0]
            mean = num / (np.exp(lam[i]) - np.exp(lam[i - 1]))
            got = sum(w[j] * f[i - j] for j in range(order))
            assert got == pytest.approx(mean, rel=1e-12), (order, degree)


@pytest.mark.parametrize("kind", ["hb", "ghvb"])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "res_multistep"])
@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
def test_finite_everywhere(schedule_name: str, solver: str, kind: str) -> None:
    for final in ("zero", "t_min"):
        for nfe in (1, 2, 3, 5, 8, 20):
            for beta in (0.1, 0.8):
                out = _run(solver, schedule_name, nfe, final, momentum=beta, momentum_type=kind)
                assert bool(torch.isfinite(out).all()), (final, nfe, beta)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"momentum": 0.0}, "momentum"),
        ({"momentum": 1.5}, "momentum"),
        ({"momentum": True}, "momentum"),
        ({"momentum": 0.5, "momentum_type": "nesterov"}, "momentum_type"),
        ({"momentum": 0.5, "corrector": "unic"}, "corrector"),
    ],
)
def test_bad_momentum_options(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fewstep.solvers.get_solver("dpmpp_2m", **options)
