"""ComfyUI's rectified-flow models (model sampling ``CONST``) through fewstep's k-diffusion-signature functions.

- A fake model with the attributes ComfyUI's sampler functions read (``model.inner_model.inner_model.model_sampling``,
  ``model.inner_model.model_patcher.get_model_object``) and a model sampling class named ``CONST``.
- Every function equals ``fewstep.sample`` on the Flow schedule with the same noise and levels.
- The samplers whose ComfyUI formula changes under rectified flow, step by step from that published formula:
  Euler ancestral's, DPM-2 ancestral's and DPM-Solver++(2S) ancestral's flow rule, and DPM-Solver++(2M) SDE in the
  flow's half-log-SNR ``log((1 - sigma) / sigma)``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import rel
from torch import Tensor

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.integrations import comfyui
from fewstep.integrations import kdiffusion as fk
from fewstep.solvers import available

F64 = torch.float64
BATCH = 16
NETWORK = mixture_2d("default").model(fewstep.Flow(), "sample")  # x0 from x = (1 - t) x0 + t eps, time input t
SIGMAS = torch.tensor([0.97, 0.8, 0.6, 0.42, 0.27, 0.15, 0.06, 0.0], dtype=F64)


class CONST:  # noqa: N801 - ComfyUI's class name is what marks a rectified-flow model sampling
    sigma_min, sigma_max = 0.001, 1.0

    def __init__(self, noise_scale: float = 1.0):
        self.noise_scale = noise_scale


class EPS:  # ComfyUI's epsilon model sampling: not a flow
    sigma_min, sigma_max = 0.03, 14.6


def comfy_model(sampling: Any) -> Any:
    """``model(x, sigma)`` with the attributes ComfyUI's samplers read to find the model sampling."""

    def model(x: Tensor, sigma: Tensor) -> Tensor:
        return NETWORK(x, sigma)

    patcher = SimpleNamespace(get_model_object=lambda name: {"model_sampling": sampling}[name])
    model.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=sampling), model_patcher=patcher)  # type: ignore[attr-defined]
    return model


def start() -> Tensor:
    return torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(3), dtype=F64)


def level_noise(sigma: Any, sigma_next: Any) -> Tensor:
    """Noise that is a deterministic function of the interval's levels."""
    seed = int(1e6 * float(sigma) + 1e3 * float(sigma_next)) % 2**31
    return torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def flow_sample(solver: str, sigmas: Tensor = SIGMAS, **options: Any) -> Tensor:
    """fewstep.sample on Flow over the grid's levels, the model taking Flow's time t (ComfyUI's sigma)."""
    levels = sigmas[:-1] if float(sigmas[-1]) == 0 else sigmas
    schedule = fewstep.Flow(t_min=float(levels.min()), t_max=float(levels.max()))
    final = "zero" if float(sigmas[-1]) == 0 else "t_min"
    return fewstep.sample(
        NETWORK, start(), schedule, solver, spacing=levels, prediction="sample", time_input="t", final=final,
        **options,
    )  # fmt: skip


#: The reference-named functions and the fewstep solver with the options they stand for.
KSAMPLER_SOLVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("euler", {}),
    "heun": ("heun", {}),
    "dpmpp_2m": ("dpmpp_2m", {"lower_order_final": False}),
    "ddpm": ("ddpm", {"noise_sampler": level_noise}),
    "euler_ancestral": ("euler_ancestral", {"noise_sampler": level_noise, "downstep": "flow"}),
    "dpm_2_ancestral": ("dpm_2_ancestral", {"noise_sampler": level_noise, "downstep": "flow"}),
    "dpmpp_2s_ancestral": ("dpmpp_2s_ancestral", {"noise_sampler": level_noise, "downstep": "flow"}),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {"noise_sampler": level_noise, "lower_order_final": False}),
    "dpmpp_3m_sde": (
        "dpmpp_3m_sde", {"noise_sampler": level_noise, "lower_order_final": False, "d2_weight": "reference"}
    ),
    "res_multistep": ("res_multistep", {"lower_order_final": False}),
    "er_sde": (
        "er_sde_3",
        {"noise_sampler": level_noise, "noise_scale": "er_sde_5", "d2_weight": "reference", "lower_order_final": False},
    ),
    "seeds_2": ("seeds_2", {"noise_sampler": level_noise}),
    "seeds_3": ("seeds_3", {"noise_sampler": level_noise}),
    "sa_solver": ("sa_solver", {"noise_sampler": level_noise, "corrector_order": 4}),
}  # fmt: skip

#: Registered solvers that need statistics or options a plain call does not give.
NEEDS_SETUP = {"dpm_solver_v3"}


@pytest.mark.parametrize("name", sorted(KSAMPLER_SOLVERS))
def test_reference_named_functions_integrate_on_flow(name: str) -> None:
    solver, options = KSAMPLER_SOLVERS[name]
    ks_options = {"noise_sampler": level_noise} if "noise_sampler" in options else {}
    got = fk.KSAMPLERS[name](comfy_model(CONST()), start(), SIGMAS, **ks_options)
    assert rel(got, flow_sample(solver, **options)) < 1e-6


@pytest.mark.parametrize(
    "name", sorted(i.name for i in available() if i.name not in fk.KSAMPLERS and i.name not in NEEDS_SETUP)
)
def test_every_fewstep_solver_integrates_on_flow(name: str) -> None:
    stochastic = next(i for i in available() if i.name == name).stochastic
    noise = {"noise_sampler": level_noise} if stochastic else {}
    got = fk.SAMPLERS[name](comfy_model(CONST()), start(), SIGMAS, **noise)
    assert rel(got, flow_sample(name, **noise)) < 1e-6


def draws() -> Any:
    """A noise sampler drawing from its own seeded stream (not from the levels, which float32 rounds)."""
    gen = torch.Generator().manual_seed(5)
    return lambda sigma, sigma_next: torch.randn(BATCH, 2, generator=gen, dtype=F64)


def test_float32_state_matches_flow_to_rounding() -> None:
    x32 = start().float()
    got = fk.sample_dpmpp_2m_sde(comfy_model(CONST()), x32, SIGMAS.float(), noise_sampler=draws())
    want = flow_sample("dpmpp_2m_sde", noise_sampler=draws(), lower_order_final=False)
    assert got.dtype == torch.float32
    assert rel(got.double(), want) < 1e-5


def test_without_const_the_grid_is_edm() -> None:
    """The same call on a non-flow model sampling integrates on EDM (x = x0 + sigma eps)."""
    got = fk.sample_dpmpp_2m_sde(comfy_model(EPS()), start(), SIGMAS, noise_sampler=level_noise)
    assert rel(got, flow_sample("dpmpp_2m_sde", noise_sampler=level_noise, lower_order_final=False)) > 1e-3


# --- ComfyUI's rectified-flow formulas, step by step ---------------------------------------------------------


def denoise(x: Tensor, sigma: float) -> Tensor:
    return NETWORK(x, torch.full((x.shape[0],), sigma, dtype=F64))


def euler_ancestral_rf(x: Tensor, sigmas: list[float], eta: float, s_noise: float) -> Tensor:
    """ComfyUI's ``sample_euler_ancestral_RF``: down to ``sigma_d = sigma' (1 + (sigma'/sigma - 1) eta)`` with the x0
    step, rescale by ``(1 - sigma') / (1 - sigma_d)`` and renoise to the marginal."""
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        den = denoise(x, s)
        if s1 == 0:
            x = den
            continue
        down = s1 * (1 + (s1 / s - 1) * eta)
        x = (down / s) * x + (1 - down / s) * den
        renoise = math.sqrt(s1**2 - down**2 * (1 - s1) ** 2 / (1 - down) ** 2)
        x = (1 - s1) / (1 - down) * x + level_noise(s, s1) * s_noise * renoise
    return x


def flow_split(s: float, s1: float, eta: float) -> tuple[float, float]:
    """ComfyUI's RF ancestral split: ``sigma_down`` and the renoise coefficient."""
    down = s1 * (1 + (s1 / s - 1) * eta)
    return down, math.sqrt(s1**2 - down**2 * (1 - s1) ** 2 / (1 - down) ** 2)


def dpm_2_ancestral_rf(x: Tensor, sigmas: list[float], eta: float, s_noise: float) -> Tensor:
    """ComfyUI's ``sample_dpm_2_ancestral_RF``: DPM-2 in the flow's ``(x, sigma)`` (``d = (x - D) / sigma``, the
    midpoint at the geometric mean) down to ``sigma_down``, rescale and renoise; Euler where ``sigma_down`` is 0."""
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        den = denoise(x, s)
        down, renoise = flow_split(s, s1, eta) if s1 else (0.0, 0.0)
        d = (x - den) / s
        if down == 0:
            x = x + d * (down - s)
            continue
        mid = math.exp(math.log(s) + 0.5 * (math.log(down) - math.log(s)))  # torch.lerp(log s, log down, 0.5)
        x2 = x + d * (mid - s)
        d2 = (x2 - denoise(x2, mid)) / mid
        x = x + d2 * (down - s)
        x = (1 - s1) / (1 - down) * x + level_noise(s, s1) * s_noise * renoise
    return x


def dpmpp_2s_ancestral_rf(x: Tensor, sigmas: list[float], eta: float, s_noise: float) -> Tensor:
    """ComfyUI's ``sample_dpmpp_2s_ancestral_RF``: DPM-Solver++(2S) with the midpoint in ``log((1 - s) / s)`` (0.9999
    from sigma = 1) down to ``sigma_down``, rescale and renoise; Euler to sigma = 0."""
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        den = denoise(x, s)
        if s1 == 0:
            x = den
            continue
        down, renoise = flow_split(s, s1, eta)
        if s == 1.0:
            mid = 0.9999
        else:
            lam = 0.5 * (math.log((1 - s) / s) + math.log((1 - down) / down))
            mid = 1 / (math.exp(lam) + 1)
        u = (mid / s) * x + (1 - mid / s) * den
        x = (down / s) * x + (1 - down / s) * denoise(u, mid)
        if eta > 0:
            x = (1 - s1) / (1 - down) * x + level_noise(s, s1) * s_noise * renoise
    return x


def dpmpp_2m_sde_rf(x: Tensor, sigmas: list[float], eta: float) -> Tensor:
    """ComfyUI's ``sample_dpmpp_2m_sde`` (midpoint) with the flow's half-log-SNR ``lambda = log((1 - s) / s)``."""
    old, h_last = None, 0.0
    for s, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        den = denoise(x, s)
        if s1 == 0:
            x = den
        else:
            h = math.log((1 - s1) / s1) - math.log((1 - s) / s)
            alpha_t = 1 - s1
            x = s1 / s * math.exp(-h * eta) * x - alpha_t * math.expm1(-h * (eta + 1)) * den
            if old is not None:
                x = x - 0.5 * alpha_t * math.expm1(-h * (eta + 1)) * (h / h_last) * (den - old)
            x = x + level_noise(s, s1) * s1 * math.sqrt(-math.expm1(-2 * h * eta))
        old, h_last = den, h if s1 else h_last
    return x


@pytest.mark.parametrize("sigmas", [[0.8, 0.5, 0.3, 0.0], [1.0, 0.6, 0.25, 0.0]])
@pytest.mark.parametrize(("eta", "s_noise", "noise_scale"), [(1.0, 1.0, 1.0), (0.6, 0.7, 1.3)])
def test_euler_ancestral_is_comfyuis_rf_formula(
    sigmas: list[float], eta: float, s_noise: float, noise_scale: float
) -> None:
    model = comfy_model(CONST(noise_scale))
    grid = torch.tensor(sigmas, dtype=F64)
    got = fk.sample_euler_ancestral(model, start(), grid, eta=eta, s_noise=s_noise, noise_sampler=level_noise)
    assert rel(got, euler_ancestral_rf(start(), sigmas, eta, s_noise * noise_scale)) < 1e-12


@pytest.mark.parametrize("sigmas", [[0.8, 0.5, 0.3, 0.0], [1.0, 0.6, 0.25, 0.1, 0.0]])
@pytest.mark.parametrize(("eta", "s_noise", "noise_scale"), [(1.0, 1.0, 1.0), (0.6, 0.7, 1.3), (0.0, 1.0, 1.0)])
@pytest.mark.parametrize("name", ["dpm_2_ancestral", "dpmpp_2s_ancestral"])
def test_singlestep_ancestral_is_comfyuis_rf_formula(
    name: str, sigmas: list[float], eta: float, s_noise: float, noise_scale: float
) -> None:
    reference = {"dpm_2_ancestral": dpm_2_ancestral_rf, "dpmpp_2s_ancestral": dpmpp_2s_ancestral_rf}[name]
    calls = fewstep.CallCount()
    model = comfy_model(CONST(noise_scale))
    got = fk.KSAMPLERS[name](model, start(), torch.tensor(sigmas, dtype=F64), eta=eta, s_noise=s_noise,
                             noise_sampler=level_noise)  # fmt: skip
    # at eta = 0 ComfyUI's renoise coefficient is rounding (sqrt(sigma'^2 - sigma'^2 (1 - sigma')^2 / (1 - sigma')^2)
    # evaluated left to right, about 1e-9); fewstep's is exactly 0
    assert rel(got, reference(start(), sigmas, eta, s_noise * noise_scale)) < (1e-12 if eta else 1e-8)
    direct = flow_sample(name, torch.tensor(sigmas, dtype=F64), noise_sampler=level_noise, downstep="flow",
                         eta=eta, s_noise=s_noise * noise_scale, calls=calls)  # fmt: skip
    assert rel(direct, got) < 1e-12
    assert calls.network == 2 * (len(sigmas) - 2) + 1  # second order to every sigma_down > 0, Euler to 0


def test_flow_downstep_needs_a_flow_schedule() -> None:
    noise = start()
    with pytest.raises(ValueError, match="downstep"):
        fewstep.sample(NETWORK, noise, fewstep.VP(), "dpm_2_ancestral", nfe=6, downstep="flow")
    with pytest.raises(ValueError, match="downstep"):
        fewstep.solvers.get_solver("dpmpp_2s_ancestral", downstep="edm")


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_dpmpp_2m_sde_is_comfyuis_half_log_snr_formula(eta: float) -> None:
    sigmas = [0.9, 0.7, 0.45, 0.2, 0.0]
    grid = torch.tensor(sigmas, dtype=F64)
    got = fk.sample_dpmpp_2m_sde(comfy_model(CONST()), start(), grid, eta=eta, noise_sampler=level_noise)
    assert rel(got, dpmpp_2m_sde_rf(start(), sigmas, eta)) < 1e-12


# --- errors and the sigmas node --------------------------------------------------------------------------------


def test_flow_errors_name_the_option() -> None:
    model = comfy_model(CONST())
    with pytest.raises(ValueError, match="s_churn"):
        fk.sample_euler(model, start(), SIGMAS, s_churn=1.0)
    with pytest.raises(ValueError, match="sigmas"):
        fk.sample_euler(model, start(), torch.tensor([2.0, 0.5, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="downstep"):
        fewstep.solvers.get_solver("euler_ancestral", downstep="edm")


def test_sigmas_node_spaces_a_flow_model_in_flow_time() -> None:
    model = SimpleNamespace(get_model_object=lambda name: CONST())
    (got,) = comfyui.FewstepSigmas().get_sigmas(model, 6, "logsnr")
    want = fewstep.spacing.model_times(fewstep.Flow(0.001, 1.0), 6, "logsnr")
    assert got.dtype == torch.float32 and float(got[-1]) == 0.0
    torch.testing.assert_close(got[:-1].double(), want, rtol=1e-6, atol=0)
    lam = torch.log((1 - got[1:-1].double()) / got[1:-1].double())  # logSNR spacing: equal steps in the flow's lambda
    assert torch.allclose(torch.diff(lam), torch.diff(lam)[:1].expand(4), rtol=1e-4)
