"""ComfyUI's sampler functions in fewstep.integrations.kdiffusion (ComfyUI is not installable: no peer run).

- Signatures: exactly ComfyUI's parameters and defaults (as published in ComfyUI's comfy/k_diffusion/sampling.py).
- Each update rule against an independent step-by-step implementation of its published formula, written here on
  the EDM frame (alpha = 1, lambda = -log sigma) with the exact mixture denoiser, options included: float64, 1e-12.
- ``extra_args["seed"]`` draws ComfyUI's default noise (one generator seeded seed + 1 on the CPU).
- Options fewstep cannot honour raise a ValueError naming them before any model call.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import rel
from torch import Tensor

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.integrations import kdiffusion as fk

F64 = torch.float64
DENOISER = mixture_2d("default").model(fewstep.EDM(), "sample")
BATCH = 32
EMPTY: Any = inspect.Parameter.empty
COMMON: list[tuple[str, Any]] = [
    ("model", EMPTY),
    ("x", EMPTY),
    ("sigmas", EMPTY),
    ("extra_args", None),
    ("callback", None),
]
NOISY = [("eta", 1.0), ("s_noise", 1.0), ("noise_sampler", None)]
SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "dpmpp_2m_sde_heun": [("disable", None), *NOISY, ("solver_type", "heun")],
    "dpmpp_2m_sde_gpu": [("disable", None), *NOISY, ("solver_type", "midpoint")],
    "dpmpp_2m_sde_heun_gpu": [("disable", None), *NOISY, ("solver_type", "heun")],
    "dpmpp_3m_sde_gpu": [("disable", None), *NOISY],
    "ddpm": [("disable", None), ("noise_sampler", None)],
    "ipndm": [("disable", None), ("max_order", 4)],
    "ipndm_v": [("disable", None), ("max_order", 4)],
    "res_multistep": [("disable", None), ("s_noise", 1.0), ("noise_sampler", None)],
    "gradient_estimation": [("disable", None), ("ge_gamma", 2.0), ("cfg_pp", False)],
    "er_sde": [("disable", None), ("s_noise", 1.0), ("noise_sampler", None), ("noise_scaler", None), ("max_stage", 3)],
    "seeds_2": [("disable", None), *NOISY, ("r", 0.5), ("solver_type", "phi_1")],
    "seeds_3": [("disable", None), *NOISY, ("r_1", 1.0 / 3), ("r_2", 2.0 / 3)],
    "sa_solver": [
        ("disable", False), ("tau_func", None), ("s_noise", 1.0), ("noise_sampler", None), ("predictor_order", 3),
        ("corrector_order", 4), ("use_pece", False), ("simple_order_2", False),
    ],
    "sa_solver_pece": [
        ("disable", False), ("tau_func", None), ("s_noise", 1.0), ("noise_sampler", None), ("predictor_order", 3),
        ("corrector_order", 4), ("simple_order_2", False),
    ],
    "exp_heun_2_x0": [("disable", None), ("solver_type", "phi_2")],
    "exp_heun_2_x0_sde": [("disable", None), *NOISY, ("solver_type", "phi_2")],
    "res_multistep_ancestral": [("disable", None), *NOISY],
    "lcm": [("disable", None), ("noise_sampler", None), ("s_noise", 1.0), ("s_noise_end", None), ("noise_clip_std", 0.0)],
    "heunpp2": [("disable", None), ("s_churn", 0.0), ("s_tmin", 0.0), ("s_tmax", float("inf")), ("s_noise", 1.0)],
}  # fmt: skip


def sigmas_of(n: int) -> Tensor:
    """Karras sigmas (rho = 7) from 80 to 0.002, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=F64)
    levels = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    return torch.cat([levels, torch.zeros(1, dtype=F64)])


def start(seed: int = 1) -> Tensor:
    return torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(seed), dtype=F64) * 80.0


def level_noise(sigma: Any, sigma_next: Any) -> Tensor:
    """Noise that is a deterministic function of the interval's levels."""
    seed = int(1e6 * float(sigma) + 1e3 * float(sigma_next)) % 2**31
    return torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def denoise(x: Tensor, sigma: float) -> Tensor:
    return DENOISER(x, torch.full((x.shape[0],), sigma, dtype=F64))


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signatures_are_comfyuis(name: str) -> None:
    params = inspect.signature(getattr(fk, f"sample_{name}")).parameters.values()
    assert [(p.name, p.default) for p in params] == COMMON + SIGNATURES[name]
    assert fk.KSAMPLERS[name] is getattr(fk, f"sample_{name}")


# --- independent implementations of the published update rules ------------------------------------------------

AB = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def ipndm_reference(x: Tensor, sigmas: Tensor, max_order: int) -> Tensor:
    """Adams-Bashforth with the equal-step weights on d = (x - D)/sigma; the last step to 0 returns D."""
    ds: list[Tensor] = []
    for s, s1 in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        den = denoise(x, s)
        ds = [(x - den) / s, *ds][:max_order]
        x = den if s1 == 0 else x + (s1 - s) * sum(c * d for c, d in zip(AB[len(ds)], ds, strict=True))
    return x


def ipndm_v2_reference(x: Tensor, sigmas: Tensor) -> Tensor:
    """Variable-step Adams-Bashforth 2: ``x + dt ((1 + dt/(2 dt_prev)) d - dt/(2 dt_prev) d_prev)``."""
    d_prev, dt_prev = None, 0.0
    for s, s1 in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        den = denoise(x, s)
        d, dt = (x - den) / s, s1 - s
        if s1 == 0:
            x = den
        elif d_prev is None:
            x = x + dt * d
        else:
            q = dt / (2 * dt_prev)
            x = x + dt * ((1 + q) * d - q * d_prev)
        d_prev, dt_prev = d, dt
    return x


def gradient_estimation_reference(x: Tensor, sigmas: Tensor, gamma: float) -> Tensor:
    """Euler with ``gamma d_i + (1 - gamma) d_{i-1}`` after the first step; the last step to 0 returns D."""
    d_old = None
    for s, s1 in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        den = denoise(x, s)
        d = (x - den) / s
        d_bar = d if d_old is None else gamma * d + (1 - gamma) * d_old
        x = den if s1 == 0 else x + (s1 - s) * d_bar
        d_old = d
    return x


def res_multistep_reference(x: Tensor, sigmas: Tensor) -> Tensor:
    """The exponential integrator of D linear in lambda through the last two estimates:
    ``x_t = e^{-h} x + (1 - e^{-h}) D_i + (h - 1 + e^{-h}) (D_i - D_{i-1}) / h_prev``; Euler on the first step."""
    old, h_prev = None, 0.0
    for s, s1 in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        den = denoise(x, s)
        if s1 == 0 or old is None:
            x = x + (s1 - s) * (x - den) / s
        else:
            h = math.log(s / s1)
            x = math.exp(-h) * x + (-math.expm1(-h)) * den + (h + math.expm1(-h)) * (den - old) / h_prev
        old, h_prev = den, (math.log(s / s1) if s1 > 0 else 0.0)
    return x


def ddpm_reference(x: Tensor, sigmas: Tensor, noise: Callable[[Any, Any], Tensor]) -> Tensor:
    """DDPM's posterior step (Ho et al. eq. 7) on the variance-preserving state ``x / sqrt(1 + sigma^2)``."""
    for s, s1 in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        den = denoise(x, s)
        if s1 == 0:
            x = den
            continue
        ab, ab1 = 1 / (1 + s * s), 1 / (1 + s1 * s1)
        a, beta = ab / ab1, 1 - ab / ab1
        mean = math.sqrt(ab1) * beta / (1 - ab) * den + math.sqrt(a) * (1 - ab1) / (1 - ab) * (x * math.sqrt(ab))
        std = math.sqrt((1 - ab1) / (1 - ab) * beta)
        x = (mean + std * noise(s, s1)) / math.sqrt(ab1)
    return x


def g(z: float) -> float:
    """``z phi_2(-z) = (e^{-z} - 1 + z) / z``."""
    return (math.expm1(-z) + z) / z


def seeds_reference(
    x: Tensor, sigmas: Tensor, stages: int, eta: float, s_noise: float, noise: Callable[[Any, Any], Tensor]
) -> Tensor:
    """SEEDS-2 (c = 1/2, D at the stage) and SEEDS-3 (c = 1/3, 2/3, DPM-Solver-3's weights) of the SDE with
    ``sqrt(eta)`` noise; stage k's noise carries the earlier sub-intervals' normals decayed by ``e^{-eta dc h}``."""
    fr = [0.0, 0.5, 1.0] if stages == 2 else [0.0, 1 / 3, 2 / 3, 1.0]
    for s, s1 in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        den = denoise(x, s)
        if s1 == 0:
            x = den
            continue
        h = math.log(s / s1)
        big_h, lv = (1 + eta) * h, [s * math.exp(-c * h) for c in fr]
        zs, ds, x0 = [], [den], x
        for k in range(1, len(fr)):
            c = fr[k]
            zs.append(noise(lv[k - 1], lv[k]))
            part = math.sqrt(-math.expm1(-2 * eta * (fr[k] - fr[k - 1]) * h))
            noise_k = sum(math.exp(-eta * (c - fr[j + 1]) * h) * part * z for j, z in enumerate(zs))
            drift = -math.expm1(-c * big_h) * den
            if stages == 2 and k == 2:
                drift = -math.expm1(-big_h) * ds[1]
            elif stages == 3 and k == 2:
                drift = drift + (fr[2] / fr[1]) * g(fr[2] * big_h) * (ds[1] - den)
            elif stages == 3 and k == 3:
                drift = drift + g(big_h) / fr[2] * (ds[2] - den)
            u = (lv[k] / s) * math.exp(-eta * c * h) * x0 + drift + lv[k] * s_noise * noise_k
            if k < len(fr) - 1:
                ds.append(denoise(u, lv[k]))
            x = u
    return x


REFERENCES: list[tuple[str, dict[str, Any], Callable[[Tensor, Tensor], Tensor]]] = [
    ("ipndm", {}, lambda x, s: ipndm_reference(x, s, 4)),
    ("ipndm", {"max_order": 2}, lambda x, s: ipndm_reference(x, s, 2)),
    ("ipndm", {"max_order": 1}, lambda x, s: ipndm_reference(x, s, 1)),
    ("ipndm_v", {"max_order": 2}, ipndm_v2_reference),
    ("gradient_estimation", {}, lambda x, s: gradient_estimation_reference(x, s, 2.0)),
    ("gradient_estimation", {"ge_gamma": 1.5}, lambda x, s: gradient_estimation_reference(x, s, 1.5)),
    ("res_multistep", {"s_noise": 0.5, "noise_sampler": level_noise}, res_multistep_reference),  # eta = 0: no noise
    ("ddpm", {"noise_sampler": level_noise}, lambda x, s: ddpm_reference(x, s, level_noise)),
    ("seeds_2", {"eta": 0.0}, lambda x, s: seeds_reference(x, s, 2, 0.0, 1.0, level_noise)),
    ("seeds_2", {"noise_sampler": level_noise}, lambda x, s: seeds_reference(x, s, 2, 1.0, 1.0, level_noise)),
    (
        "seeds_2",
        {"noise_sampler": level_noise, "eta": 0.6, "s_noise": 0.8},
        lambda x, s: seeds_reference(x, s, 2, 0.6, 0.8, level_noise),
    ),
    ("seeds_3", {"eta": 0.0}, lambda x, s: seeds_reference(x, s, 3, 0.0, 1.0, level_noise)),
    (
        "seeds_3",
        {"noise_sampler": level_noise, "eta": 0.7, "s_noise": 1.1},
        lambda x, s: seeds_reference(x, s, 3, 0.7, 1.1, level_noise),
    ),
]


@pytest.mark.parametrize("n", [5, 11])
@pytest.mark.parametrize(
    ("name", "options", "reference"), REFERENCES, ids=[f"{r[0]}-{i}" for i, r in enumerate(REFERENCES)]
)
def test_agrees_with_the_published_rule(
    name: str, options: dict[str, Any], reference: Callable[[Tensor, Tensor], Tensor], n: int
) -> None:
    sigmas, x = sigmas_of(n), start()
    got = getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, **options)
    assert rel(got, reference(x, sigmas)) <= 1e-12


def test_ipndm_v_equals_ipndm_on_equal_steps() -> None:
    """On a grid of equal steps in sigma the variable-step weights are the equal-step ones, at every max_order."""
    sigmas = torch.cat([torch.linspace(20.0, 1.0, 9, dtype=F64), torch.zeros(1, dtype=F64)])
    x = start() * 0.25
    for k in (1, 2, 3, 4):
        a = fk.sample_ipndm_v(DENOISER, x, sigmas, max_order=k)
        assert rel(a, fk.sample_ipndm(DENOISER, x, sigmas, max_order=k)) <= 1e-12
        assert rel(a, ipndm_reference(x, sigmas, k)) <= 1e-12


def test_er_sde_noise_scaler_and_max_stage() -> None:
    """``noise_scaler(s) = s`` is the probability-flow ODE (no noise whatever the sampler); with ``max_stage=1`` its
    step ``y_t = (s_t/s_s) y + (1 - s_t/s_s) D`` is Euler (and ``x = D`` to sigma = 0)."""
    sigmas, x = sigmas_of(9), start()
    ode = {"noise_scaler": lambda s: s, "max_stage": 1}
    a = fk.sample_er_sde(DENOISER, x, sigmas, noise_sampler=level_noise, **ode)
    b = fk.sample_er_sde(DENOISER, x, sigmas, noise_sampler=lambda s, t: -level_noise(s, t), **ode)
    assert rel(a, gradient_estimation_reference(x, sigmas, 1.0)) <= 1e-12 and rel(a, b) <= 1e-12
    noisy = fk.sample_er_sde(DENOISER, x, sigmas, noise_sampler=level_noise)
    assert rel(noisy, fk.sample_er_sde(DENOISER, x, sigmas, noise_sampler=lambda s, t: -level_noise(s, t))) > 1e-3


def test_sa_solver_tau_func_gets_the_next_sigma() -> None:
    sigmas, x = sigmas_of(8), start()
    seen: list[Tensor] = []

    def tau_func(sigma: Tensor) -> float:
        seen.append(sigma)
        return 0.0

    a = fk.sample_sa_solver(DENOISER, x, sigmas, tau_func=tau_func, noise_sampler=level_noise)
    assert all(isinstance(v, Tensor) and v.dim() == 0 for v in seen)
    assert [float(v) for v in seen] == sigmas[1:-1].tolist()  # every step but the one to 0, at its end
    b = fk.sample_sa_solver(DENOISER, x, sigmas, tau_func=lambda s: 0.0, noise_sampler=lambda s, t: -level_noise(s, t))
    assert rel(a, b) <= 1e-12  # tau = 0: the deterministic Adams method
    c = fk.sample_sa_solver(DENOISER, x, sigmas, tau_func=lambda s: 1.0, noise_sampler=level_noise)
    assert rel(c, a) > 1e-3


def test_sa_solver_simple_order_2_is_the_linearised_phi_2() -> None:
    """``simple_order_2``: the order-2 weights with ``phi_2(-H) -> 1/2`` (fewstep's ``second_order="reference"``)."""
    sigmas, x = sigmas_of(8), start()
    opts = {"tau_func": lambda s: 0.0, "predictor_order": 2, "corrector_order": 2}
    simple = fk.sample_sa_solver(DENOISER, x, sigmas, simple_order_2=True, **opts)
    exact = fk.sample_sa_solver(DENOISER, x, sigmas, **opts)
    levels = sigmas[:-1]
    edm = fewstep.EDM(sigma_min=float(levels[-1]), sigma_max=float(levels[0]))
    expected = fewstep.sample(
        DENOISER, x, edm, "sa_solver", spacing=levels, prediction="sample", time_input="sigma", tau=0.0,
        predictor_order=2, corrector_order=2, second_order="reference",
    )  # fmt: skip
    assert rel(simple, expected) <= 1e-12 and rel(simple, exact) > 1e-6


# --- the seed, the callback, unsupported options --------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddpm", "seeds_2", "seeds_3", "sa_solver", "er_sde"])
def test_seed_draws_comfyuis_default_noise(name: str) -> None:
    sigmas, x = sigmas_of(8), start()
    gen = torch.Generator().manual_seed(21 + 1)  # ComfyUI: seed + 1 for noise drawn on the CPU
    expected = getattr(fk, f"sample_{name}")(
        DENOISER, x, sigmas, noise_sampler=lambda s, t: torch.randn(x.shape, generator=gen, dtype=x.dtype)
    )
    got = getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, extra_args={"seed": 21})
    assert torch.equal(got, expected)
    assert rel(getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, extra_args={"seed": 22}), got) > 1e-4


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_callback_reports_tensors(name: str) -> None:
    sigmas, x = sigmas_of(6), start()
    out: list[dict[str, Any]] = []
    getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, callback=out.append)
    assert [c["i"] for c in out] == list(range(6))
    for c in out:
        assert set(c) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert torch.equal(c["sigma"], sigmas[c["i"]]) and torch.equal(c["sigma_hat"], sigmas[c["i"]])
    assert torch.equal(out[0]["x"], x)  # the state the first estimate was taken at


@pytest.mark.parametrize(
    ("name", "options", "error", "match"),
    [
        ("gradient_estimation", {"cfg_pp": True}, ValueError, "cfg_pp"),
        ("seeds_2", {"r": 0.0}, ValueError, "r"),
        ("seeds_2", {"r": 1.5}, ValueError, "r"),
        ("seeds_2", {"solver_type": "phi_3"}, ValueError, "solver_type"),
        ("seeds_3", {"r_1": 0.0}, ValueError, "r_1"),
        ("seeds_3", {"r_1": 0.7, "r_2": 0.5}, ValueError, "r_2"),
        ("sa_solver", {"use_pece": 1}, TypeError, "use_pece"),
        ("heunpp2", {"s_churn": -1.0}, ValueError, "s_churn"),
        ("lcm", {"noise_clip_std": -1.0}, ValueError, "noise_clip_std"),
        ("exp_heun_2_x0", {"solver_type": "phi_3"}, ValueError, "solver_type"),
        ("sa_solver", {"predictor_order": 5}, ValueError, "predictor_order"),
        ("sa_solver", {"simple_order_2": 1}, TypeError, "simple_order_2"),
        ("ipndm", {"max_order": 5}, ValueError, "max_order"),
        ("ipndm_v", {"max_order": 0}, ValueError, "max_order"),
        ("er_sde", {"max_stage": 4}, ValueError, "max_stage"),
        ("res_multistep", {"s_noise": -1.0}, ValueError, "s_noise"),
        ("dpmpp_2m_sde_heun", {"solver_type": "euler"}, ValueError, "solver_type"),
    ],
)
def test_unsupported_options_are_named_before_any_call(
    name: str, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    def never(x: Tensor, sigma: Tensor) -> Tensor:
        raise AssertionError("the model must not be called")

    with pytest.raises(error, match=match):
        getattr(fk, f"sample_{name}")(never, start(), sigmas_of(5), **options)
