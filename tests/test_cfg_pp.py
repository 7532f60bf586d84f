"""CFG++ (Chung et al. 2024): the rule, the solvers' CFG++ forms and ComfyUI's ``*_cfg_pp`` samplers.

- Each solver with a CFG++ form: its first two steps against the published update computed here by hand, on a VP
  schedule (alpha != 1) with a two-branch network given in closed form. The published updates are ComfyUI's (and
  Chung et al.'s DDIM) in k-diffusion's frame, the scaled state ``y = x / alpha`` at the levels ``k = sigma / alpha``.
- ``scale = 0`` is the unconditional model's run; a CFG++ form fed ordinary evaluations is its solver.
- The check: a solver without a CFG++ form (or with options that have none), a threshold and sample_adaptive are
  ValueErrors before any model call, naming the solvers that can.
- ComfyUI's ``*_cfg_pp`` functions against plain-torch reimplementations of ComfyUI's loops, with a model that guides
  inside its call and reports its unconditional estimate to ComfyUI's post-CFG hooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.guidance import CFGPlusPlus
from fewstep.integrations import comfyui
from fewstep.integrations import kdiffusion as fk
from fewstep.solvers.base import cfg_pp_solvers

F64 = torch.float64
VP = fewstep.VP()
TIMES = [0.9, 0.55, 0.3, 0.15]  # three steps; the hand computations check the first two
B = 5
COND = torch.linspace(-1.5, 2.0, B, dtype=F64).reshape(B, 1)
LAM = 0.6


def net(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
    """A conditional epsilon-network in closed form (smooth, non-linear in x, affine in the condition c)."""
    tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
    return 0.4 * torch.tanh(x) * (1.0 + tt) + 0.3 * x + c * torch.sin(2.0 + 3.0 * tt)


def start(seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, generator=g, dtype=F64), torch.randn(B, 3, generator=g, dtype=F64)


def fixed_noise(z: Tensor) -> Callable[[Any, Any], Tensor]:
    return lambda s, t: z


def close(a: Tensor, b: Tensor, tol: float = 1e-11) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --- the published updates, by hand ------------------------------------------------------------------------------


def ab(t: float) -> tuple[float, float]:
    return float(VP.alpha(t)), float(VP.sigma(t))


def t_at_level(k: float) -> float:
    """The VP time whose level sigma/alpha is k."""
    return float(VP.t_of_lambda(torch.tensor(-math.log(k), dtype=F64)))


def evaluate(x: Tensor, t: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(D, U, eps_u)``: the CFG++ clean sample, the unconditional one and the unconditional noise at (x, t)."""
    a, s = ab(t)
    time = torch.tensor(t, dtype=F64)
    eps_u, eps_c = net(x, time, torch.zeros_like(COND)), net(x, time, COND)
    u, c = (x - s * eps_u) / a, (x - s * eps_c) / a
    return u + LAM * (c - u), u, eps_u


def level(t: float) -> float:
    a, s = ab(t)
    return s / a


def ancestral(k: float, k_to: float, eta: float) -> tuple[float, float]:
    """k-diffusion's get_ancestral_step: (sigma_down, sigma_up)."""
    up = min(k_to, eta * math.sqrt(k_to**2 * (k**2 - k_to**2) / k**2))
    return math.sqrt(k_to**2 - up**2), up


def phis(h: float) -> tuple[float, float]:
    """ComfyUI's phi1(-h) = expm1(-h)/(-h), phi2(-h) = (phi1(-h) - 1)/(-h)."""
    phi1 = math.expm1(-h) / -h
    return phi1, (phi1 - 1.0) / -h


def by_hand(name: str, x: Tensor, z: Tensor, eta: float = 0.7, gamma: float = 2.0) -> list[Tensor]:
    """The states after the first two steps on TIMES, in y = x / alpha (ComfyUI's formulas), returned as x."""
    t = TIMES
    k = [level(v) for v in t]
    a = [ab(v)[0] for v in t]
    out: list[Tensor] = []
    y = x / a[0]
    prev_u: Tensor | None = None  # the previous step's unconditional clean sample
    prev_eps: Tensor | None = None
    prev_down: float | None = None
    for i in range(2):
        x_i = a[i] * y
        d, u, e = evaluate(x_i, t[i])
        if name in ("ddim", "euler") or (name in ("dpmpp_2m", "res_multistep", "gradient_estimation") and i == 0):
            y = d + k[i + 1] * e  # Chung et al. Alg. 1; ComfyUI's first steps
        elif name == "gradient_estimation":
            y = d + k[i + 1] * e + (gamma - 1) * (e - prev_eps) * (k[i + 1] - k[i])
        elif name == "dpmpp_2m":
            h, h_last = math.log(k[i] / k[i + 1]), math.log(k[i - 1] / k[i])
            r = h_last / h
            y = d - math.exp(-h) * u - math.expm1(-h) / (2 * r) * (d - prev_u) + math.exp(-h) * y
        elif name == "res_multistep":
            h = math.log(k[i] / k[i + 1])
            c2 = math.log(k[i - 1] / k[i]) / -h
            phi1, phi2 = phis(h)
            b1, b2 = phi1 - phi2 / c2, phi2 / c2
            y = math.exp(-h) * (y + d - u) + h * (b1 * u + b2 * prev_u)
        elif name in ("euler_ancestral", "ddpm"):
            down, up = ancestral(k[i], k[i + 1], eta)
            y = d + down * e + up * z
        elif name in ("dpmpp_2s", "dpmpp_2s_ancestral"):
            down, up = ancestral(k[i], k[i + 1], eta if name == "dpmpp_2s_ancestral" else 0.0)
            k_mid = math.sqrt(k[i] * down)  # lambda_s + h/2
            y_mid = (k_mid / k[i]) * y + (1 - k_mid / k[i]) * u
            t_mid = t_at_level(k_mid)
            _, u_mid, _ = evaluate(ab(t_mid)[0] * y_mid, t_mid)
            y = (down / k[i]) * y + (1 - down / k[i]) * u_mid + up * z + (d - u)
        elif name == "res_multistep_ancestral":
            down, up = ancestral(k[i], k[i + 1], eta)
            if i == 0:
                y = d + down * e
            else:
                assert prev_down is not None
                h = math.log(k[i] / down)
                c2 = (-math.log(k[i - 1]) + math.log(prev_down)) / h
                phi1, phi2 = phis(h)
                b1, b2 = phi1 - phi2 / c2, phi2 / c2
                y = math.exp(-h) * (y + d - u) + h * (b1 * u + b2 * prev_u)
            y = y + up * z
            prev_down = down
        else:
            raise AssertionError(name)
        prev_u, prev_eps = u, e
        out.append(a[i + 1] * y)
    return out


OPTIONS: dict[str, dict[str, Any]] = {
    "dpmpp_2m": {"lower_order_final": False},
    "euler_ancestral": {"eta": 0.7},
    "ddpm": {"eta": 0.7},
    "dpmpp_2s_ancestral": {"eta": 0.7},
    "res_multistep_ancestral": {"eta": 0.7},
    "gradient_estimation": {"gamma": 2.0},
}


def run(solver: str, x: Tensor, z: Tensor, guidance: Any = None, **kw: Any) -> tuple[Tensor, list[Tensor]]:
    states: list[Tensor] = []
    out = fewstep.sample(
        net, x, VP, solver, spacing=TIMES, final="t_min", prediction="epsilon", time_input="t",
        model_kwargs={"c": kw.pop("cond", COND)}, guidance=guidance, noise_sampler=fixed_noise(z),
        callback=lambda info: states.append(info["x"]), **{**OPTIONS.get(solver, {}), **kw},
    )  # fmt: skip
    return out, states


def test_the_solvers_with_a_cfg_pp_form() -> None:
    assert set(cfg_pp_solvers()) == {
        "ddim", "euler", "euler_ancestral", "ddpm", "dpmpp_2m", "dpmpp_2s", "dpmpp_2s_ancestral", "res_multistep",
        "res_multistep_ancestral", "gradient_estimation",
    }  # fmt: skip


@pytest.mark.parametrize("solver", cfg_pp_solvers())
def test_first_two_steps_are_the_published_update(solver: str) -> None:
    x, z = start()
    _, states = run(solver, x, z, CFGPlusPlus(LAM, {"c": torch.zeros_like(COND)}))
    expected = by_hand(solver, x, z)
    close(states[0], expected[0])
    close(states[1], expected[1])


@pytest.mark.parametrize("solver", cfg_pp_solvers())
def test_scale_zero_is_the_unconditional_run(solver: str) -> None:
    x, z = start(1)
    zeros = torch.zeros_like(COND)
    guided, _ = run(solver, x, z, CFGPlusPlus(0.0, {"c": zeros}))
    plain, _ = run(solver, x, z, cond=zeros)
    if solver in ("ddim", "euler_ancestral", "ddpm"):  # their update is their CFG++ form, operation for operation
        assert torch.equal(guided, plain)
    else:
        close(guided, plain, 1e-12)


@pytest.mark.parametrize("solver", cfg_pp_solvers())
def test_the_cfg_pp_form_of_ordinary_evaluations_is_the_solver(solver: str) -> None:
    x, z = start(2)
    form = fewstep.solvers.get_solver(solver, **OPTIONS.get(solver, {})).cfg_pp_form()
    assert form.runs_cfg_pp and form.needs_eps and not type(form).runs_cfg_pp
    out, _ = run(form.name, x, z)
    got = fewstep.sample(
        net, x, VP, form, spacing=TIMES, final="zero", prediction="epsilon", time_input="t",
        model_kwargs={"c": COND}, noise_sampler=fixed_noise(z),
    )  # fmt: skip
    ref = fewstep.sample(
        net, x, VP, solver, spacing=TIMES, final="zero", prediction="epsilon", time_input="t",
        model_kwargs={"c": COND}, noise_sampler=fixed_noise(z), **OPTIONS.get(solver, {}),
    )  # fmt: skip
    close(got, ref, 1e-10)


def test_one_batched_call_per_evaluation() -> None:
    x, z = start()
    calls = fewstep.CallCount()
    run("dpmpp_2m", x, z, CFGPlusPlus(LAM, {"c": torch.zeros_like(COND)}), calls=calls)
    assert (calls.network, calls.branches, calls.requests) == (3, 6, 3)


def test_a_checkpointed_run_resumes_bit_for_bit() -> None:
    x, _ = start()
    kw: dict[str, Any] = {
        "spacing": TIMES, "prediction": "epsilon", "time_input": "t", "model_kwargs": {"c": COND},
        "guidance": CFGPlusPlus(LAM, {"c": torch.zeros_like(COND)}),
    }  # fmt: skip
    full = fewstep.sample(net, x, VP, "dpmpp_2m", **kw)
    checkpoint = fewstep.Checkpoint(step=1)
    fewstep.sample(net, x, VP, "dpmpp_2m", checkpoint=checkpoint, **kw)
    assert torch.equal(fewstep.sample(net, x, VP, "dpmpp_2m", resume=checkpoint.state, **kw), full)


class Counting:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        self.n += 1
        return net(x, t, c)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"solver": "heun"}, r"'heun' has no CFG\+\+ form.*dpmpp_2m"),
        ({"solver": "dpmpp_3m"}, r"'dpmpp_3m' has no CFG\+\+ form.*euler_ancestral"),
        ({"solver": "dpmpp_2m", "corrector": "unic"}, "corrector"),
        ({"solver": "res_multistep", "momentum": 0.5}, "momentum"),
        ({"solver": "ddim", "threshold": fewstep.Threshold()}, "threshold"),
    ],
)
def test_solvers_without_a_cfg_pp_form_are_refused_before_any_call(options: dict[str, Any], match: str) -> None:
    model = Counting()
    with pytest.raises(ValueError, match=match):
        fewstep.sample(
            model, start()[0], VP, nfe=4, model_kwargs={"c": COND},
            guidance=CFGPlusPlus(LAM, {"c": torch.zeros_like(COND)}), **options,
        )  # fmt: skip
    with pytest.raises(ValueError, match="sample_adaptive has no CFG"):
        fewstep.sample_adaptive(model, start()[0], VP, model_kwargs={"c": COND}, guidance=CFGPlusPlus(LAM, {"c": 0}))
    assert model.n == 0


def test_rule_options_are_checked() -> None:
    with pytest.raises(TypeError, match="scale"):
        CFGPlusPlus("0.5", {"c": 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale"):
        CFGPlusPlus(math.nan, {"c": 0})
    with pytest.raises(ValueError, match="uncond_kwargs"):
        CFGPlusPlus(0.5, None)  # type: ignore[arg-type]


# --- ComfyUI's *_cfg_pp samplers -----------------------------------------------------------------------------------

STD, MU = 0.5, 0.8  # the closed-form denoiser: x0 ~ N(MU c, STD^2) per coordinate under condition c


def denoise(x: Tensor, sigma: float | Tensor, c: float) -> Tensor:
    s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (STD**2 * x + s2 * MU * c) / (STD**2 + s2)


class ComfyModel:
    """ComfyUI's guided model as its samplers see it: CFG at ``cfg`` inside the call (the unconditional branch skipped
    at cfg = 1 unless ``disable_cfg1_optimization``), then the post-CFG functions of ``model_options``."""

    def __init__(self, cfg: float, c: float = 1.0):
        self.cfg, self.c, self.calls = cfg, c, 0

    def __call__(
        self, x: Tensor, sigma: Tensor, model_options: dict[str, Any] | None = None, seed: Any = None
    ) -> Tensor:
        self.calls += 1
        options = model_options or {}
        cond = denoise(x, sigma, self.c)
        if self.cfg == 1.0 and not options.get("disable_cfg1_optimization", False):
            return cond
        uncond = denoise(x, sigma, 0.0)
        out = uncond + (cond - uncond) * self.cfg
        for fn in options.get("sampler_post_cfg_function", []):
            out = fn({"denoised": out, "cond_denoised": cond, "uncond_denoised": uncond, "sigma": sigma, "input": x})
        return out


def karras(n: int) -> Tensor:
    ramp = torch.linspace(0, 1, n, dtype=F64)
    return torch.cat([(80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7, torch.zeros(1, dtype=F64)])


def comfy_reference(name: str, x: Tensor, sigmas: Tensor, cfg: float, z: Tensor, eta: float = 0.8) -> Tensor:
    """ComfyUI's loops (comfy/k_diffusion/sampling.py, alpha = 1) in plain torch: ``D`` the guided, ``U`` the
    unconditional estimate."""
    s = sigmas.tolist()
    old_u: Tensor | None = None
    old_d: Tensor | None = None
    old_down: float | None = None
    for i in range(len(s) - 1):
        u = denoise(x, s[i], 0.0)
        d = u + cfg * (denoise(x, s[i], 1.0) - u)
        eps = (x - u) / s[i]
        if name in ("euler", "euler_ancestral"):
            down, up = ancestral(s[i], s[i + 1], eta) if name == "euler_ancestral" and s[i + 1] > 0 else (s[i + 1], 0.0)
            x = d if s[i + 1] == 0 else d + down * eps + up * z
        elif name == "dpmpp_2m":
            h = math.log(s[i] / s[i + 1]) if s[i + 1] > 0 else math.inf
            if old_u is None or s[i + 1] == 0:
                mix = -math.exp(-h) * u
            else:
                r = math.log(s[i - 1] / s[i]) / h
                mix = -math.exp(-h) * u - math.expm1(-h) / (2 * r) * (d - old_u)
            x = d + mix + math.exp(-h) * x
        elif name == "dpmpp_2s_ancestral":
            down, up = ancestral(s[i], s[i + 1], eta) if s[i + 1] > 0 else (0.0, 0.0)
            if down == 0:
                x = x + eps * (down - s[i])
            else:
                s_mid = math.sqrt(s[i] * down)
                x2 = (s_mid / s[i]) * x - math.expm1(-0.5 * math.log(s[i] / down)) * u
                u2 = denoise(x2, s_mid, 0.0)
                x = (down / s[i]) * x - math.expm1(-math.log(s[i] / down)) * u2
            if s[i + 1] > 0:
                x = x + up * z
            x = x + (d - u)
        elif name in ("res_multistep", "res_multistep_ancestral"):
            e = eta if name == "res_multistep_ancestral" else 0.0
            down, up = ancestral(s[i], s[i + 1], e) if s[i + 1] > 0 and e > 0 else (s[i + 1], 0.0)
            if down == 0 or old_u is None:
                x = d + eps * down
            else:
                assert old_down is not None
                h = math.log(s[i] / down)
                c2 = (math.log(old_down) - math.log(s[i - 1])) / h
                phi1, phi2 = phis(h)
                b1, b2 = phi1 - phi2 / c2, phi2 / c2
                x = math.exp(-h) * (x + d - u) + h * (b1 * u + b2 * old_u)
            if s[i + 1] > 0:
                x = x + up * z
            old_down = down
        elif name == "gradient_estimation":
            if s[i + 1] == 0:
                x = d
            else:
                x = d + eps * s[i + 1]
                if i >= 1:
                    assert old_d is not None
                    x = x + (2.0 - 1) * (eps - old_d) * (s[i + 1] - s[i])
            old_d = eps
        else:
            raise AssertionError(name)
        old_u = u
    return x


COMFY = [n[: -len("_cfg_pp")] for n in fk.CFG_PP_KSAMPLERS]


@pytest.mark.parametrize("name", COMFY)
@pytest.mark.parametrize("cfg", [0.7, 1.0])
def test_comfyui_cfg_pp_samplers_are_comfyuis_loops(name: str, cfg: float) -> None:
    sigmas = karras(7)
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(B, 2, generator=g, dtype=F64) * 80.0, torch.randn(B, 2, generator=g, dtype=F64)
    fn = getattr(fk, f"sample_{name}_cfg_pp")
    noisy = "noise_sampler" in fn.__code__.co_varnames[: fn.__code__.co_argcount]
    options: dict[str, Any] = {"noise_sampler": fixed_noise(z)} if noisy else {}
    if name in ("euler_ancestral", "dpmpp_2s_ancestral", "res_multistep_ancestral"):
        options["eta"] = 0.8
    model = ComfyModel(cfg)
    user_options: dict[str, Any] = {"sampler_post_cfg_function": []}
    got = fn(model, x, sigmas, extra_args={"model_options": user_options}, **options)
    close(got, comfy_reference(name, x, sigmas, cfg, z), 1e-10)
    assert user_options == {"sampler_post_cfg_function": []}  # the caller's options are copied, not changed


def test_gradient_estimation_takes_cfg_pp() -> None:
    sigmas, x = karras(6), start()[0][:, :2] * 80.0
    a = fk.sample_gradient_estimation(ComfyModel(0.7), x, sigmas, cfg_pp=True)
    close(a, fk.sample_gradient_estimation_cfg_pp(ComfyModel(0.7), x, sigmas), 0.0)
    close(a, comfy_reference("gradient_estimation", x, sigmas, 0.7, x), 1e-10)


def test_models_that_report_no_unconditional_estimate_are_refused() -> None:
    sigmas, x = karras(4), start()[0][:, :2]
    calls = []

    def plain(x: Tensor, sigma: Tensor) -> Tensor:
        calls.append(1)
        return denoise(x, sigma, 1.0)

    for fn in [*fk.CFG_PP_KSAMPLERS.values(), fk.CFG_PP_SAMPLERS["ddim"]]:
        with pytest.raises(ValueError, match="cfg_pp: CFG\\+\\+ needs the unconditional"):
            fn(plain, x, sigmas)
    with pytest.raises(ValueError, match="cfg_pp"):
        fk.sample_gradient_estimation(plain, x, sigmas, cfg_pp=True)
    assert not calls

    def silent(x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:  # takes model_options, never calls the hooks
        return denoise(x, sigma, 1.0)

    with pytest.raises(ValueError, match="never called"):
        fk.sample_euler_cfg_pp(silent, x, sigmas)


def test_every_solver_with_a_cfg_pp_form_has_a_sampler_and_a_node() -> None:
    assert set(fk.CFG_PP_SAMPLERS) == set(cfg_pp_solvers())
    assert fk.CFG_PP_SAMPLERS["dpmpp_2m"] is fk.sample_dpmpp_2m_cfg_pp
    node = comfyui.FewstepCFGPPSampler
    assert comfyui.NODE_CLASS_MAPPINGS["FewstepCFGPPSampler"] is node
    assert set(node.INPUT_TYPES()["required"]["solver"][0]) == set(cfg_pp_solvers())
    assert node.sampler_function("ddim") is fk.CFG_PP_SAMPLERS["ddim"]
    with pytest.raises(ValueError, match="has no CFG"):
        node.sampler_function("heun")
    sigmas, x = karras(5), start()[0][:, :2] * 80.0
    ddim = node.sampler_function("ddim")(ComfyModel(0.7), x, sigmas)
    close(ddim, comfy_reference("euler", x, sigmas, 0.7, x), 1e-10)  # DDIM's CFG++ step is Euler's in sigma
