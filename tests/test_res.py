"""res_multistep (RES coefficients) and gradient_estimation (Permenter & Yuan): closed-form first steps,
measured orders (also in test_convergence.py) and finiteness (also in test_properties.py)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import node_table, run_solver
from test_convergence import TOL, measured_order
from test_properties import SCHEDULES, TARGET, make_noise, pure_noise_start

import fewstep
from fewstep.nodes import NodeTable
from fewstep.solvers import get_solver


def _grid(schedule, times: list[float]) -> NodeTable:
    den = fewstep.Denoiser(lambda x, t: torch.zeros_like(x), schedule, "velocity")
    return node_table(den, times, False, batch=3)


def _answers():
    g = torch.Generator().manual_seed(5)
    return [
        (torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64))
        for _ in range(3)
    ]


def _drive(solver, x, grid, answers):
    calls = iter(answers)
    return run_solver(solver, x, grid, lambda x_, p: next(calls))


def test_res_multistep_first_two_steps_in_closed_form() -> None:
    sched = fewstep.VP()
    times = [0.9, 0.5, 0.2]
    grid = _grid(sched, times)
    a = [float(sched.alpha(t)) for t in times]
    s = [float(sched.sigma(t)) for t in times]
    lam = [math.log(ai / si) for ai, si in zip(a, s, strict=True)]
    (d0, _), (d1, _), _ = answers = _answers()
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out = _drive(get_solver("res_multistep"), x, grid, answers)
    h0, h1 = lam[1] - lam[0], lam[2] - lam[1]
    x1 = s[1] / s[0] * x + a[1] * (1 - math.exp(-h0)) * d0  # first step: DPM-Solver++(1) (Euler in sigma/alpha)
    c = -h0 / h1
    phi1 = (1 - math.exp(-h1)) / h1  # phi_1(-h)
    phi2 = (math.exp(-h1) - 1 + h1) / h1**2  # phi_2(-h)
    b1, b2 = phi1 - phi2 / c, phi2 / c
    x2 = s[2] / s[1] * x1 + a[2] * h1 * (b1 * d1 + b2 * d0)
    torch.testing.assert_close(out, x2, rtol=1e-12, atol=1e-12)
    # and it differs from DPM-Solver++(2M), whose difference weight is phi_1/2 instead of phi_2
    assert not torch.allclose(_drive(get_solver("dpmpp_2m", lower_order_final=False), x, grid, answers), out)


@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_gradient_estimation_first_two_steps_in_closed_form(gamma: float) -> None:
    sched = fewstep.VP()
    times = [0.9, 0.5, 0.2]
    grid = _grid(sched, times)
    a = [float(sched.alpha(t)) for t in times]
    tau = [float(sched.sigma(t)) / ai for t, ai in zip(times, a, strict=True)]
    (_, e0), (_, e1), _ = answers = _answers()
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out = _drive(get_solver("gradient_estimation", gamma=gamma), x, grid, answers)
    y1 = x / a[0] + (tau[1] - tau[0]) * e0  # Euler on dy/dtau = eps, y = x/alpha, tau = sigma/alpha
    y2 = y1 + (tau[2] - tau[1]) * (gamma * e1 + (1 - gamma) * e0)
    torch.testing.assert_close(out, a[2] * y2, rtol=1e-12, atol=1e-12)


def test_gradient_estimation_on_a_flow_steps_in_t() -> None:
    sched = fewstep.Flow()
    times = [1.0, 0.6, 0.3]
    grid = _grid(sched, times)
    (x0a, e0), (x0b, e1), _ = answers = _answers()
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out = _drive(get_solver("gradient_estimation"), x, grid, answers)
    v0, v1 = e0 - x0a, e1 - x0b  # dx/dt = -x0_hat + eps_hat for x_t = (1 - t) x0 + t eps
    x1 = x + (times[1] - times[0]) * v0
    torch.testing.assert_close(out, x1 + (times[2] - times[1]) * (2 * v1 - v0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target_name", ["single", "wide"])
@pytest.mark.parametrize(("solver", "expected"), [("res_multistep", 2), ("gradient_estimation", 1)])
def test_measured_orders(solver: str, expected: int, target_name: str) -> None:
    """res_multistep: 2.02-2.06 (VP, EDM); gradient_estimation: first order, pre-asymptotic at few steps."""
    slope, errors = measured_order("vp", solver, target_name)
    assert abs(slope - expected) <= TOL, (slope, errors)
    assert fewstep.solvers.get_solver(solver).order == expected


def test_gradient_estimation_gamma_one_is_euler() -> None:
    sched = SCHEDULES["vp"]
    noise = make_noise(sched, (8, 2), torch.float64, 1)
    model = TARGET.model(sched, "epsilon")
    out = fewstep.sample(model, noise, sched, "gradient_estimation", nfe=7, gamma=1.0)
    torch.testing.assert_close(out, fewstep.sample(model, noise, sched, "euler", nfe=7), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("solver", ["res_multistep", "gradient_estimation"])
@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
def test_finite_on_every_schedule(schedule_name: str, solver: str) -> None:
    schedule = SCHEDULES[schedule_name]
    prediction = "velocity" if pure_noise_start(schedule) else "epsilon"
    noise = make_noise(schedule, (8, 2), torch.float64, 2)
    for final in ("zero", "t_min"):
        for nfe in (1, 2, 3, 10):
            out = fewstep.sample(
                TARGET.model(schedule, prediction), noise, schedule, solver, nfe=nfe, final=final, prediction=prediction
            )
            assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("gamma", [float("nan"), True, "2"])
def test_bad_gamma(gamma) -> None:
    with pytest.raises(ValueError, match="gamma"):
        get_solver("gradient_estimation", gamma=gamma)


def _comfy_style(name: str, model, x: torch.Tensor, sigmas: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """A transcription of ComfyUI's k-diffusion loops (eta = 0) in the sigma of an EDM denoiser D(x, sigma)."""
    old_denoised, old_d = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma.expand(x.shape[0]))
        d = (x - denoised) / sigma
        if name == "gradient_estimation":
            x = x + (d if old_d is None else gamma * d + (1 - gamma) * old_d) * (sigma_next - sigma)
        elif sigma_next == 0 or old_denoised is None:
            x = x + d * (sigma_next - sigma)
        else:
            t, t_next, t_prev = -sigma.log(), -sigma_next.log(), -sigmas[i - 1].log()
            h = t_next - t
            c2 = (t_prev - t) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            x = torch.exp(-h) * x + h * ((phi1 - phi2 / c2) * denoised + (phi2 / c2) * old_denoised)
        old_denoised, old_d = denoised, d
    return x


@pytest.mark.parametrize("solver", ["res_multistep", "gradient_estimation"])
def test_equals_a_transcription_of_comfyui_on_edm(solver: str) -> None:
    edm = fewstep.EDM()
    model = TARGET.model(edm, "sample")
    times = fewstep.spacing.model_times(edm, 9, "karras")
    noise = make_noise(edm, (16, 2), torch.float64, 4)
    out = fewstep.sample(model, noise, edm, solver, spacing=times, prediction="sample", final="zero")
    ref = _comfy_style(solver, model, noise, torch.cat([times, torch.zeros(1, dtype=torch.float64)]))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
