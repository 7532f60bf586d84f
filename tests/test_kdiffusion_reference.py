"""The k-diffusion-named functions of fewstep.integrations.kdiffusion against k-diffusion itself.

- Signatures: exactly k-diffusion's parameters (names, order, defaults); every reference option is accepted.
- Agreement on identical inputs (the exact mixture denoiser, Karras sigmas, the same start and the same noise, options
  included): float64 to 1e-12 relative (observed 5e-15 or better: the same method); float32 to 2e-6 relative
  (observed 1e-7 to 1.1e-6). That is float32's resolution for these runs, not a difference of method: k-diffusion's
  own float32 result is up to 8e-7 from its float64 result on the same inputs, and fewstep's as far on the other side.
- ``extra_args["seed"]``: ComfyUI's noise rule, reproducible, kept from a model that does not name ``seed``.
- The callback: k-diffusion's keys and values, ``sigma``/``sigma_hat`` as 0-dim tensors of the sigmas' dtype.
- ``dpmpp_3m_sde``: the function reproduces k-diffusion; fewstep's default ``dpmpp_3m_sde`` is the Taylor-exact
  variant, which differs from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import rel
from torch import Tensor

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.integrations import kdiffusion as fk
from fewstep.noise.levels import brownian_level_sampler

K = pytest.importorskip("k_diffusion").sampling

F64, F32 = torch.float64, torch.float32
DENOISER = mixture_2d("default").model(fewstep.EDM(), "sample")  # D(x, sigma), exact
BATCH = 64
MIRRORED = ["euler", "euler_ancestral", "heun", "lms", "dpm_adaptive", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde"]


def sigmas_of(n: int, dtype: torch.dtype) -> Tensor:
    return K.get_sigmas_karras(n, 0.002, 80.0, rho=7.0).to(dtype)


def start(dtype: torch.dtype, seed: int = 1) -> Tensor:
    return (torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(seed), dtype=F64) * 80.0).to(dtype)


def level_noise(dtype: torch.dtype) -> Callable[[Any, Any], Tensor]:
    """A noise sampler that is a deterministic function of the step's first level (the same on both sides)."""

    def noise(sigma: Any, sigma_next: Any) -> Tensor:
        g = torch.Generator().manual_seed(int(1e6 * float(sigma)) % 2**31)
        return torch.randn(BATCH, 2, generator=g, dtype=F64).to(dtype)

    return noise


def test_signatures_are_k_diffusions() -> None:
    for name in MIRRORED:
        ours = inspect.signature(getattr(fk, f"sample_{name}")).parameters
        theirs = inspect.signature(getattr(K, f"sample_{name}")).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in theirs.values()
        ], name
        assert fk.KSAMPLERS[name] is getattr(fk, f"sample_{name}")


NOISE = object()  # stands for level_noise(dtype) in the cases below
CASES: list[tuple[str, dict[str, Any]]] = [
    ("euler", {}),
    ("euler", {"s_churn": 5.0, "s_noise": 0.0, "s_tmin": 0.5, "s_tmax": 10.0}),  # churn without noise: sigma_hat
    ("euler", {"s_churn": 80.0}),  # every step churns at the cap sqrt(2) - 1; noise from the global generator
    ("heun", {}),
    ("heun", {"s_churn": 3.0, "s_tmin": 1.0, "s_noise": 1.003}),  # the churned steps are a prefix of the grid
    ("heun", {"s_churn": 5.0, "s_noise": 0.0, "s_tmin": 0.05, "s_tmax": 5.0}),
    ("lms", {}),
    ("lms", {"order": 2}),
    ("lms", {"order": 6}),
    ("dpmpp_2m", {}),
    ("euler_ancestral", {"noise_sampler": NOISE}),
    ("euler_ancestral", {"noise_sampler": NOISE, "eta": 0.5, "s_noise": 0.9}),
    ("dpmpp_2m_sde", {"noise_sampler": NOISE}),
    ("dpmpp_2m_sde", {"noise_sampler": NOISE, "solver_type": "heun", "eta": 0.7, "s_noise": 1.1}),
    ("dpmpp_3m_sde", {"noise_sampler": NOISE}),
    ("dpmpp_3m_sde", {"noise_sampler": NOISE, "eta": 0.5, "s_noise": 0.8}),
    ("dpmpp_3m_sde", {"eta": 0.0}),
]


@pytest.mark.parametrize(("dtype", "tol"), [(F64, 1e-12), (F32, 2e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("n", [6, 12])
@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_agrees_with_k_diffusion(name: str, options: dict[str, Any], n: int, dtype: torch.dtype, tol: float) -> None:
    sigmas, x = sigmas_of(n, dtype), start(dtype)
    opts = {k: level_noise(dtype) if v is NOISE else v for k, v in options.items()}
    torch.manual_seed(5)  # the churn noise: torch's global generator on both sides
    expected = getattr(K, f"sample_{name}")(DENOISER, x, sigmas, disable=True, **opts)
    torch.manual_seed(5)
    got = getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, disable=True, **opts)
    assert got.dtype == dtype and got.shape == x.shape
    assert rel(got.double(), expected.double()) <= tol


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_agrees_with_k_diffusion(order: int) -> None:
    """float64 (k-diffusion builds its times in the default dtype: set to float64, see docs/adaptive.md); the reference
    options eta = 0, s_noise and a noise sampler are accepted, and the info counts match but for the retries."""
    x = start(F64)
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        expected, info = K.sample_dpm_adaptive(
            DENOISER, x, 0.002, 80.0, order=order, rtol=1e-3, atol=1e-4, disable=True, return_info=True
        )
    finally:
        torch.set_default_dtype(old)
    got, ours = fk.sample_dpm_adaptive(
        DENOISER, x, 0.002, 80.0, order=order, rtol=1e-3, atol=1e-4, eta=0.0, s_noise=0.5,
        noise_sampler=level_noise(F64), return_info=True,
    )  # fmt: skip
    assert rel(got, expected) <= 1e-9
    assert ours == {**info, "nfe": info["nfe"] - info["n_reject"]}


def test_dpmpp_3m_sde_default_is_the_taylor_variant() -> None:
    """fewstep.sample's dpmpp_3m_sde (Taylor-exact D2 weight, lower order at the end) is not k-diffusion's; with
    d2_weight="reference" and lower_order_final=False it is, and the k-diffusion function selects exactly that."""
    sigmas, x, noise = sigmas_of(25, F64), start(F64), level_noise(F64)
    expected = K.sample_dpmpp_3m_sde(DENOISER, x, sigmas, disable=True, noise_sampler=noise)
    levels = sigmas[:-1]
    edm = fewstep.EDM(sigma_min=float(levels[-1]), sigma_max=float(levels[0]))
    common = dict(spacing=levels, prediction="sample", time_input="sigma", noise_sampler=noise)
    default = fewstep.sample(DENOISER, x, edm, "dpmpp_3m_sde", **common)
    reference = fewstep.sample(
        DENOISER, x, edm, "dpmpp_3m_sde", d2_weight="reference", lower_order_final=False, **common
    )
    assert rel(default, expected) > 1e-2  # a different method, not rounding
    assert rel(reference, expected) <= 1e-12
    assert rel(fk.sample_dpmpp_3m_sde(DENOISER, x, sigmas, noise_sampler=noise), expected) <= 1e-12


# --- extra_args["seed"] ---------------------------------------------------------------------------------------


def comfy_rule(x: Tensor, seed: int) -> Callable[[Any, Any], Tensor]:
    """ComfyUI's documented seeding of its default noise sampler, written here independently: one CPU generator
    seeded with seed + 1, one normal like x per draw."""
    g = torch.Generator().manual_seed(seed + 1)
    return lambda s, t: torch.randn(x.shape, generator=g, dtype=x.dtype)


@pytest.mark.parametrize("name", ["euler_ancestral"])
def test_seed_draws_comfyuis_noise(name: str) -> None:
    sigmas, x = sigmas_of(10, F32), start(F32)
    expected = getattr(K, f"sample_{name}")(DENOISER, x, sigmas, disable=True, noise_sampler=comfy_rule(x, 7))
    got = getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, extra_args={"seed": 7})
    assert rel(got, expected) <= 1e-6
    again = getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, extra_args={"seed": 7})
    other = getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, extra_args={"seed": 8})
    assert torch.equal(got, again) and rel(other, got) > 1e-3


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_seed_draws_a_brownian_path_for_the_brownian_samplers(name: str) -> None:
    """As ComfyUI's Brownian-tree samplers: the noise of one Brownian path per sample, seeded seed, seed + 1, ..."""
    sigmas, x = sigmas_of(10, F64), start(F64)
    edm = fewstep.EDM(sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]))
    path = brownian_level_sampler(edm, x, 11)
    expected = getattr(K, f"sample_{name}")(DENOISER, x, sigmas, disable=True, noise_sampler=path)
    got = getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, extra_args={"seed": 11})
    assert rel(got, expected) <= 1e-12
    assert rel(getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, extra_args={"seed": 12}), got) > 1e-3


def test_seed_reaches_only_a_model_that_names_it() -> None:
    sigmas, x = sigmas_of(6, F64), start(F64)
    seen: list[Any] = []

    def strict(x_: Tensor, sigma: Tensor, shift: float = 0.0) -> Tensor:  # no seed, no **kwargs
        return DENOISER(x_, sigma) + shift

    def comfy_like(x_: Tensor, sigma: Tensor, seed: int | None = None) -> Tensor:
        seen.append(seed)
        return DENOISER(x_, sigma)

    out = fk.sample_euler_ancestral(strict, x, sigmas, extra_args={"shift": 0.0, "seed": 3})
    assert torch.isfinite(out).all()
    fk.sample_dpmpp_2m(comfy_like, x, sigmas, extra_args={"seed": 3})
    assert seen == [3] * 6


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "7"])
def test_bad_seed_is_named(seed: object) -> None:
    def never(x: Tensor, sigma: Tensor) -> Tensor:
        raise AssertionError("the model must not be called")

    with pytest.raises(ValueError, match=r"extra_args\['seed'\]"):
        fk.sample_euler_ancestral(never, start(F64), sigmas_of(4, F64), extra_args={"seed": seed})


# --- the callback ---------------------------------------------------------------------------------------------


def records(sampler: Callable[..., Tensor], x: Tensor, sigmas: Tensor, **options: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    torch.manual_seed(5)
    sampler(DENOISER, x, sigmas, callback=out.append, disable=True, **options)
    return out


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("euler", {"s_churn": 4.0, "s_tmin": 1.0}),
        ("heun", {"s_churn": 2.0}),
        ("lms", {}),
        ("dpmpp_2m", {}),
        ("euler_ancestral", {"noise_sampler": NOISE}),
        ("dpmpp_3m_sde", {"noise_sampler": NOISE}),
    ],
)
@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
def test_callback_is_k_diffusions(name: str, options: dict[str, Any], dtype: torch.dtype) -> None:
    sigmas, x = sigmas_of(8, dtype), start(dtype)
    opts = {k: level_noise(dtype) if v is NOISE else v for k, v in options.items()}
    theirs = records(getattr(K, f"sample_{name}"), x, sigmas, **opts)
    ours = records(getattr(fk, f"sample_{name}"), x, sigmas, **opts)
    assert len(ours) == len(theirs) == 8
    tol = 1e-12 if dtype == F64 else 2e-6
    for a, b in zip(ours, theirs, strict=True):
        assert set(a) == set(b) == {"x", "i", "sigma", "sigma_hat", "denoised"} and a["i"] == b["i"]
        for key in ("sigma", "sigma_hat"):
            assert isinstance(a[key], Tensor) and a[key].dim() == 0, key
            assert (a[key].dtype, a[key].device) == (sigmas.dtype, sigmas.device), key
            assert abs(float(a[key]) - float(b[key])) <= tol * float(b[key]), key
        assert rel(a["x"].double(), b["x"].double()) <= tol
        assert rel(a["denoised"].double(), b["denoised"].double()) <= tol


def test_dpm_adaptive_callback_sigmas_are_tensors() -> None:
    out: list[dict[str, Any]] = []
    fk.sample_dpm_adaptive(DENOISER, start(F64), 0.002, 80.0, callback=out.append)
    assert out and all(isinstance(c["sigma"], Tensor) and c["sigma"].dim() == 0 for c in out)
    assert {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(out[0])


# --- options fewstep cannot honour ----------------------------------------------------------------------------


def test_unsupported_dpm_adaptive_eta_is_named_before_any_call() -> None:
    def never(x: Tensor, sigma: Tensor) -> Tensor:
        raise AssertionError("the model must not be called")

    with pytest.raises(ValueError, match="eta"):
        fk.sample_dpm_adaptive(never, start(F64), 0.002, 80.0, eta=1.0)


@pytest.mark.parametrize(
    ("name", "options", "error", "match"),
    [
        ("lms", {"order": 0}, ValueError, "order"),
        ("lms", {"order": 2.5}, TypeError, "order"),
        ("euler", {"s_churn": -1.0}, ValueError, "s_churn"),
        ("heun", {"s_noise": -1.0, "s_churn": 1.0}, ValueError, "s_noise"),
        ("dpmpp_2m_sde", {"solver_type": "rk4"}, ValueError, "solver_type"),
        ("euler_ancestral", {"eta": -1.0}, ValueError, "eta"),
        ("euler_ancestral", {"noise_sampler": 3}, TypeError, "noise_sampler"),
    ],
)
def test_bad_reference_options_are_named_before_any_call(
    name: str, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    def never(x: Tensor, sigma: Tensor) -> Tensor:
        raise AssertionError("the model must not be called")

    with pytest.raises(error, match=match):
        getattr(fk, f"sample_{name}")(never, start(F64), sigmas_of(5, F64), **options)
