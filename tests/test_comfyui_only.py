"""The ComfyUI-only samplers (no installable reference): heunpp2, exp_heun_2_x0(_sde), lcm, res_multistep_ancestral,
sa_solver's PECE mode and the stage options of seeds_2/seeds_3.

Each is checked twice, without the code under test as its own oracle: its measured global order on the exact
probability-flow ODE solution of a single Gaussian (the closed-form flow of tests/test_convergence.py; the SDE forms at
eta = 0 / tau = 0), and one or two steps computed here with plain torch from the published update, through the
k-diffusion-signature functions with a fixed noise. lcm has no order: its step is checked to be denoise-then-renoise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_convergence import TARGETS, problem

import fewstep
from fewstep.integrations import kdiffusion as kd

MU, STD = 0.7, 0.5  # the target of the hand-computed steps: N(MU, STD^2) per coordinate


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """k-diffusion's D(x, sigma) for N(MU, STD^2 I): the posterior mean (STD^2 x + sigma^2 MU)/(STD^2 + sigma^2)."""
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (STD**2 * x + s2 * MU) / (STD**2 + s2)


def D(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return (STD**2 * x + sigma**2 * MU) / (STD**2 + sigma**2)


def fixed_noise(z: torch.Tensor):
    """A noise sampler returning the same normal at every draw (and counting the draws)."""
    draws: list[tuple[float, float]] = []

    def sampler(s, t):
        draws.append((float(s), float(t)))
        return z

    sampler.draws = draws  # type: ignore[attr-defined]
    return sampler


def start(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 3.0 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return x, z


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --- measured orders -------------------------------------------------------------------------------------------


def measured_order(solver: str, counts: list[int], **options) -> tuple[float, list[float]]:
    """The slope of log(max error) against log(steps) on VP, logSNR steps, to t_min (tests/test_convergence.py)."""
    sched = fewstep.VP()
    noise, ref = problem("vp", "single")
    model = TARGETS["single"].model(sched, "epsilon")
    errors = []
    for n in counts:
        out = fewstep.sample(
            model, noise, sched, solver, steps=n, spacing="logsnr", prediction="epsilon", final="t_min",
            progress=False, **options,
        )  # fmt: skip
        errors.append(float((out - ref).abs().max()))
    return float(-np.polyfit(np.log(counts), np.log(errors), 1)[0]), errors


ORDERS = [
    pytest.param("heunpp2", {}, 1, [10, 20, 40, 80], id="heunpp2"),
    pytest.param("exp_heun_2_x0", {}, 2, [10, 20, 40, 80], id="exp_heun_2_x0"),
    pytest.param("exp_heun_2_x0", {"solver_type": "phi_1"}, 2, [10, 20, 40, 80], id="exp_heun_2_x0-phi_1"),
    pytest.param("exp_heun_2_x0_sde", {"eta": 0.0}, 2, [10, 20, 40, 80], id="exp_heun_2_x0_sde-eta0"),
    pytest.param(
        "seeds_2", {"eta": 0.0, "r": 0.3, "solver_type": "phi_2"}, 2, [20, 40, 80, 160], id="seeds_2-r0.3-phi_2"
    ),
    pytest.param("seeds_2", {"eta": 0.0, "r": 0.8}, 2, [20, 40, 80, 160], id="seeds_2-r0.8-phi_1"),
    # DPM-Solver-3's final update weights D_2 alone: third order needs r_2 = 2/3, any r_1 < r_2
    pytest.param("seeds_3", {"eta": 0.0, "r_1": 0.5, "r_2": 2 / 3}, 3, [10, 20, 40, 80], id="seeds_3-r2=2/3"),
    pytest.param("seeds_3", {"eta": 0.0, "r_1": 0.25, "r_2": 0.5}, 2, [10, 20, 40, 80], id="seeds_3-r2=1/2"),
    pytest.param("res_multistep_ancestral", {"eta": 0.0}, 2, [20, 40, 80, 160], id="res_multistep_ancestral-eta0"),
    pytest.param(
        "sa_solver",
        {"tau": 0.0, "predictor_order": 1, "corrector_order": 2, "use_pece": True},
        2,
        [20, 40, 80, 160],
        id="sa_solver-pece",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("solver", "options", "order", "counts"), ORDERS)
def test_measured_order(solver: str, options: dict, order: int, counts: list[int]) -> None:
    slope, errors = measured_order(solver, counts, **options)
    assert abs(slope - order) <= 0.3, f"{solver} {options}: slope {slope:.3f}, errors {errors}"


def test_pece_reduces_the_error_of_the_predictor_corrector() -> None:
    """PECE re-evaluates the corrected state: at tau = 0 its error is below the plain predictor-corrector's."""
    opts = {"tau": 0.0, "predictor_order": 1, "corrector_order": 2}
    _, pec = measured_order("sa_solver", [20, 40], **opts)
    _, pece = measured_order("sa_solver", [20, 40], use_pece=True, **opts)
    assert all(b < a for a, b in zip(pec, pece, strict=True)), (pec, pece)


# --- steps computed by hand --------------------------------------------------------------------------------------


def phi1(h: float) -> float:  # h phi_1(-h) = 1 - e^{-h}
    return -math.expm1(-h)


def phi2(h: float) -> float:  # h phi_2(-h) = (e^{-h} - 1 + h) / h
    return (math.expm1(-h) + h) / h


@pytest.mark.parametrize("solver_type", ["phi_1", "phi_2"])
@pytest.mark.parametrize("r", [0.3, 0.5, 1.0])
def test_seeds_2_step_by_hand(r: float, solver_type: str) -> None:
    x, z = start()
    s0, s1 = 4.0, 1.5
    h = math.log(s0 / s1)
    d0 = D(x, s0)
    sr = s0 * math.exp(-r * h)
    u = (sr / s0) * x + phi1(r * h) * d0  # DPM-Solver++(1) to lambda_s + r h
    dr = D(u, sr)
    if solver_type == "phi_1":
        want = (s1 / s0) * x + phi1(h) * ((1 - 1 / (2 * r)) * d0 + 1 / (2 * r) * dr)
    else:
        want = (s1 / s0) * x + phi1(h) * d0 + phi2(h) / r * (dr - d0)
    sigmas = torch.tensor([s0, s1], dtype=torch.float64)
    got = kd.sample_seeds_2(gaussian_denoiser, x, sigmas, eta=0.0, r=r, solver_type=solver_type)
    close(got, want)


def test_exp_heun_2_x0_sde_step_by_hand() -> None:
    """One stochastic step (eta = 1): the SEEDS-1 predictor to the step's end carries sigma_t sqrt(1 - e^{-2h}) z, and
    the phi_2 corrector adds the same noise (one draw per step)."""
    x, z = start(1)
    s0, s1, eta, s_noise = 3.0, 1.2, 1.0, 0.8
    h = math.log(s0 / s1)
    big_h = (1 + eta) * h
    noise = s1 * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise * z
    d0 = D(x, s0)
    u = (s1 / s0) * math.exp(-eta * h) * x + phi1(big_h) * d0 + noise
    d1 = D(u, s1)
    want = (s1 / s0) * math.exp(-eta * h) * x + phi1(big_h) * d0 + phi2(big_h) * (d1 - d0) + noise
    sampler = fixed_noise(z)
    sigmas = torch.tensor([s0, s1], dtype=torch.float64)
    got = kd.sample_exp_heun_2_x0_sde(gaussian_denoiser, x, sigmas, eta=eta, s_noise=s_noise, noise_sampler=sampler)
    close(got, want)
    assert sampler.draws == [pytest.approx((s0, s1), rel=1e-12)]
    ode = kd.sample_exp_heun_2_x0(gaussian_denoiser, x, sigmas)
    u0 = (s1 / s0) * x + phi1(h) * d0
    close(ode, (s1 / s0) * x + phi1(h) * d0 + phi2(h) * (D(u0, s1) - d0))


def test_seeds_3_step_by_hand() -> None:
    x, _ = start(2)
    s0, s1, r1, r2 = 5.0, 2.0, 0.25, 0.6
    h = math.log(s0 / s1)
    d0 = D(x, s0)
    sa, sb = s0 * math.exp(-r1 * h), s0 * math.exp(-r2 * h)
    u1 = (sa / s0) * x + phi1(r1 * h) * d0
    d1 = D(u1, sa)
    u2 = (sb / s0) * x + phi1(r2 * h) * d0 + (r2 / r1) * phi2(r2 * h) * (d1 - d0)
    d2 = D(u2, sb)
    want = (s1 / s0) * x + phi1(h) * d0 + phi2(h) / r2 * (d2 - d0)
    sigmas = torch.tensor([s0, s1], dtype=torch.float64)
    close(kd.sample_seeds_3(gaussian_denoiser, x, sigmas, eta=0.0, r_1=r1, r_2=r2), want)


def test_heunpp2_by_hand() -> None:
    """Three steps on a grid ending above 0: Heun++ (look-ahead to the next node, weights sigma/(3 sigma_0)), the
    weighted Heun step (sigma/(2 sigma_0)), then Euler."""
    x, _ = start(3)
    sig = [6.0, 3.0, 1.0, 0.4]

    def d(y, s):
        return (y - D(y, s)) / s

    d1 = d(x, sig[0])
    x2 = x + d1 * (sig[1] - sig[0])
    d2 = d(x2, sig[1])
    x3 = x2 + d2 * (sig[2] - sig[1])
    d3 = d(x3, sig[2])
    w2, w3 = sig[1] / (3 * sig[0]), sig[2] / (3 * sig[0])
    y = x + (sig[1] - sig[0]) * ((1 - w2 - w3) * d1 + w2 * d2 + w3 * d3)
    e1 = d(y, sig[1])
    y2 = y + e1 * (sig[2] - sig[1])
    e2 = d(y2, sig[2])
    v2 = sig[2] / (2 * sig[0])
    y = y + (sig[2] - sig[1]) * ((1 - v2) * e1 + v2 * e2)
    want = y + d(y, sig[2]) * (sig[3] - sig[2])
    calls = []

    def model(v, s):
        calls.append(float(s[0]))
        return gaussian_denoiser(v, s)

    close(kd.sample_heunpp2(model, x, torch.tensor(sig, dtype=torch.float64)), want)
    assert calls == pytest.approx([6.0, 3.0, 1.0, 3.0, 1.0, 1.0], rel=1e-12)


def heunpp2_churned(x: torch.Tensor, sig: list[float], s_churn: float, s_noise: float) -> torch.Tensor:
    """ComfyUI's ``sample_heunpp2`` with churn on every step (``s_tmin = 0``, ``s_tmax = inf``): a normal from the
    global generator, ``sigma_hat = (1 + gamma) sigma_i``, the slopes from ``sigma_hat``, the weights from
    ``sigmas[0]``."""
    gamma = min(s_churn / (len(sig) - 1), 2**0.5 - 1)

    def d(y, s):
        return (y - D(y, s)) / s

    for i in range(len(sig) - 1):
        eps = torch.randn_like(x) * s_noise
        s_hat = sig[i] * (gamma + 1)
        x = x + eps * (s_hat**2 - sig[i] ** 2) ** 0.5
        d1, dt = d(x, s_hat), sig[i + 1] - s_hat
        if i == len(sig) - 2:
            x = x + d1 * dt
        elif i == len(sig) - 3:
            d2 = d(x + d1 * dt, sig[i + 1])
            w2 = sig[i + 1] / (2 * sig[0])
            x = x + ((1 - w2) * d1 + w2 * d2) * dt
        else:
            x2 = x + d1 * dt
            d2 = d(x2, sig[i + 1])
            d3 = d(x2 + d2 * (sig[i + 2] - sig[i + 1]), sig[i + 2])
            w2, w3 = sig[i + 1] / (3 * sig[0]), sig[i + 2] / (3 * sig[0])
            x = x + ((1 - w2 - w3) * d1 + w2 * d2 + w3 * d3) * dt
    return x


@pytest.mark.parametrize(("s_churn", "s_noise"), [(1.0, 1.0), (40.0, 0.8)])
def test_heunpp2_with_churn_by_hand(s_churn: float, s_noise: float) -> None:
    x, _ = start(4)
    sig = [6.0, 3.0, 1.6, 1.0, 0.4]
    torch.manual_seed(11)
    want = heunpp2_churned(x, sig, s_churn, s_noise)
    torch.manual_seed(11)
    got = kd.sample_heunpp2(gaussian_denoiser, x, torch.tensor(sig, dtype=torch.float64), s_churn=s_churn,
                            s_noise=s_noise)  # fmt: skip
    close(got, want)


def ancestral(s: float, s_next: float, eta: float) -> tuple[float, float]:
    up = min(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5)
    return (s_next**2 - up**2) ** 0.5, up


def test_res_multistep_ancestral_by_hand() -> None:
    """Two steps at eta = 0.7: Euler down to sigma_down + sigma_up z, then the RES step in lambda to sigma_down with
    c from the previous down-step, + sigma_up z."""
    x, z = start(4)
    sig, eta, s_noise = [5.0, 2.0, 0.7], 0.7, 0.9
    d0 = D(x, sig[0])
    down0, up0 = ancestral(sig[0], sig[1], eta)
    y = x + (x - d0) / sig[0] * (down0 - sig[0]) + s_noise * up0 * z
    d1 = D(y, sig[1])
    down1, up1 = ancestral(sig[1], sig[2], eta)
    t, t_old, t_next, t_prev = -math.log(sig[1]), -math.log(down0), -math.log(down1), -math.log(sig[0])
    h = t_next - t
    c2 = (t_prev - t_old) / h
    p1 = math.expm1(-h) / -h
    p2 = (p1 - 1) / -h
    want = math.exp(-h) * y + h * ((p1 - p2 / c2) * d1 + p2 / c2 * d0) + s_noise * up1 * z
    sampler = fixed_noise(z)
    got = kd.sample_res_multistep_ancestral(
        gaussian_denoiser, x, torch.tensor(sig, dtype=torch.float64), eta=eta, s_noise=s_noise, noise_sampler=sampler
    )
    close(got, want)
    assert sampler.draws == [pytest.approx((sig[0], sig[1]), rel=1e-12), pytest.approx((sig[1], sig[2]), rel=1e-12)]


def test_sa_solver_pece_by_hand() -> None:
    """tau = 0, orders 1/1 on two steps: predict, evaluate, correct (order 1: D at the predicted state), evaluate the
    corrected state, predict from it: three evaluations (2N - 1)."""
    x, _ = start(5)
    s0, s1, s2 = 4.0, 1.6, 0.5
    h0, h1 = math.log(s0 / s1), math.log(s1 / s2)
    xp1 = (s1 / s0) * x + phi1(h0) * D(x, s0)
    x1 = (s1 / s0) * x + phi1(h0) * D(xp1, s1)  # the order-1 corrector: the estimate at lambda_1
    want = (s2 / s1) * x1 + phi1(h1) * D(x1, s1)  # PECE: the predictor uses D at the corrected state
    calls = []

    def model(v, s):
        calls.append(float(s[0]))
        return gaussian_denoiser(v, s)

    sigmas = torch.tensor([s0, s1, s2], dtype=torch.float64)
    got = kd.sample_sa_solver_pece(
        model, x, sigmas, tau_func=lambda s: 0.0, predictor_order=1, corrector_order=1, disable=True
    )
    close(got, want)
    assert calls == pytest.approx([s0, s1, s1], rel=1e-12)


def test_lcm_is_denoise_then_renoise() -> None:
    """LCM is not a convergent ODE solver: a step is x_{i+1} = D(x_i) + sigma_{i+1} s_i z (k-diffusion levels), the
    last step to sigma = 0 returns D; s_i goes linearly from s_noise to s_noise_end; noise_clip_std clamps z."""
    x, z = start(6)
    sig = [4.0, 1.0, 0.3, 0.0]
    sampler = fixed_noise(z)
    got = kd.sample_lcm(
        gaussian_denoiser, x, torch.tensor(sig, dtype=torch.float64), noise_sampler=sampler, s_noise=1.0,
        s_noise_end=0.5,
    )  # fmt: skip
    y = D(x, sig[0]) + sig[1] * 1.0 * z
    y = D(y, sig[1]) + sig[2] * 0.75 * z  # s_1 = 1 + (0.5 - 1) * 1/2
    close(got, D(y, sig[2]))
    assert len(sampler.draws) == 2
    bound = 0.5 * z.std()
    clipped = kd.sample_lcm(
        gaussian_denoiser, x, torch.tensor(sig[:2], dtype=torch.float64), noise_sampler=fixed_noise(z),
        noise_clip_std=0.5,
    )  # fmt: skip
    close(clipped, D(x, sig[0]) + sig[1] * z.clamp(-bound, bound))


def test_lcm_on_a_vp_schedule_renoises_with_alpha_and_sigma() -> None:
    """On any schedule one step is alpha_{i+1} x0_hat + sigma_{i+1} z (the forward process at the next node)."""
    sched = fewstep.VP()
    x, z = start(7)
    times = torch.tensor([0.8, 0.3], dtype=torch.float64)
    model = TARGETS["single"].model(sched, "epsilon")
    got = fewstep.sample(
        model, x[:, :2], sched, "lcm", spacing=times, final="t_min", noise_sampler=fixed_noise(z[:, :2])
    )
    a0, s0 = float(sched.alpha(times[0])), float(sched.sigma(times[0]))
    x0, _ = TARGETS["single"].denoise(x[:, :2], a0, s0)
    close(got, float(sched.alpha(times[1])) * x0 + float(sched.sigma(times[1])) * z[:, :2])


@pytest.mark.parametrize(
    ("solver", "options", "match"),
    [
        ("seeds_2", {"r": 0.0}, "r"),
        ("seeds_2", {"r": 1.5}, "r"),
        ("seeds_2", {"solver_type": "phi_3"}, "solver_type"),
        ("seeds_3", {"r_1": 0.7, "r_2": 0.5}, "r_1, r_2"),
        ("sa_solver", {"use_pece": 1}, "use_pece"),
        ("lcm", {"noise_clip_std": -1.0}, "noise_clip_std"),
        ("res_multistep_ancestral", {"eta": -0.5}, "eta"),
    ],
)
def test_invalid_options_name_the_option(solver: str, options: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        fewstep.solvers.get_solver(solver, **options)


def test_pece_budgets() -> None:
    """PECE spends 2N - 1 evaluations on N steps; an even budget is refused, naming nfe."""
    sched = fewstep.VP()
    model = TARGETS["single"].model(sched, "epsilon")
    noise = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = fewstep.CallCount()
    fewstep.sample(model, noise, sched, "sa_solver", nfe=9, use_pece=True, seed=0, calls=calls)
    assert calls.nfe == 9
    with pytest.raises(ValueError, match="nfe"):
        fewstep.sample(model, noise, sched, "sa_solver", nfe=8, use_pece=True, seed=0)
