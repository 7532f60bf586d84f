"""k-diffusion's DPM-Solver samplers (``dpm_2``, ``dpm_2_ancestral``, ``dpm_fast``, ``dpmpp_2s_ancestral``,
``dpmpp_sde``): fewstep's functions against k-diffusion's on identical inputs, and the solvers behind them.

- Signatures: exactly k-diffusion's parameters (names, order, defaults).
- Agreement (the exact mixture denoiser, Karras sigmas, the same start and the same noise sampler, options included):
  float64 to 1e-12 relative; float32 to 4e-6 on 12-step grids (about 30 float32 ulps: the rounding of
  float32 transcendental functions differs between CPUs, and dpm_2 with churn reached 1.5e-6 on one). ``dpm_fast``: k-diffusion builds its log-sigma grid in
  torch's default dtype, so it is compared with the default dtype set to float64.
- ``dpmpp_sde`` with k-diffusion's own ``BrownianTreeNoiseSampler`` passed to both (its two draws per step are over
  overlapping intervals, correlated through the tree).
- The solvers at eta = 0 are ``dpm_solver_2``, ``dpmpp_2s`` and ``dpm_solver_3`` on a VP schedule (alpha != 1), and
  their measured order on the exact probability-flow solution of the wide mixture is 2 (3 for DPM-Solver-fast).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from helpers import rel
from torch import Tensor

import fewstep
from fewstep.bench.targets import mixture_2d, reference_solution
from fewstep.integrations import kdiffusion as fk
from fewstep.noise.levels import brownian_level_sampler
from fewstep.solvers.sde.ancestral_dpm import DPMFastAncestral

K = pytest.importorskip("k_diffusion").sampling

F64, F32 = torch.float64, torch.float32
DENOISER = mixture_2d("default").model(fewstep.EDM(), "sample")  # D(x, sigma), exact
BATCH = 64
NAMES = ["dpm_2", "dpm_2_ancestral", "dpm_fast", "dpmpp_2s_ancestral", "dpmpp_sde"]


def sigmas_of(n: int, dtype: torch.dtype) -> Tensor:
    return K.get_sigmas_karras(n, 0.002, 80.0, rho=7.0).to(dtype)


def start(dtype: torch.dtype, seed: int = 1) -> Tensor:
    return (torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(seed), dtype=F64) * 80.0).to(dtype)


def interval_noise(dtype: torch.dtype) -> Callable[[Any, Any], Tensor]:
    """A noise sampler that is a deterministic function of its interval (rounded in log sigma, so that float32 and
    float64 levels give the same draw), the same on both sides; distinct intervals draw distinct normals."""

    def noise(sigma: Any, sigma_next: Any) -> Tensor:
        ends = [round(math.log(float(v)) * 1e4) if float(v) > 0 else -(10**9) for v in (sigma, sigma_next)]
        g = torch.Generator().manual_seed((ends[0] * 1_000_003 + ends[1]) % 2**31)
        return torch.randn(BATCH, 2, generator=g, dtype=F64).to(dtype)

    return noise


def test_signatures_are_k_diffusions() -> None:
    for name in NAMES:
        ours = inspect.signature(getattr(fk, f"sample_{name}")).parameters
        theirs = inspect.signature(getattr(K, f"sample_{name}")).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in theirs.values()
        ], name
        assert fk.KSAMPLERS[name] is getattr(fk, f"sample_{name}")


NOISE = object()  # stands for interval_noise(dtype) in the cases below
CASES: list[tuple[str, dict[str, Any]]] = [
    ("dpm_2", {}),
    ("dpm_2", {"s_churn": 3.0, "s_tmin": 1.0, "s_noise": 1.003}),  # the churned steps are a prefix of the grid
    ("dpm_2", {"s_churn": 80.0}),  # every step churns at the cap sqrt(2) - 1 (torch's global generator)
    ("dpm_2", {"s_churn": 5.0, "s_noise": 0.0, "s_tmin": 0.05, "s_tmax": 5.0}),  # churn without noise: sigma_hat
    ("dpm_2_ancestral", {"noise_sampler": NOISE}),
    ("dpm_2_ancestral", {"noise_sampler": NOISE, "eta": 0.5, "s_noise": 0.9}),
    ("dpmpp_2s_ancestral", {"noise_sampler": NOISE}),
    ("dpmpp_2s_ancestral", {"noise_sampler": NOISE, "eta": 0.6, "s_noise": 1.2}),
    ("dpmpp_sde", {"noise_sampler": NOISE}),
    ("dpmpp_sde", {"noise_sampler": NOISE, "eta": 0.5, "s_noise": 1.1, "r": 0.3}),
    ("dpmpp_sde", {"eta": 0.0, "r": 0.7}),
]
#: eta = 3 takes sigma_down to 0 on these steps (first order, and no noise in dpm_2_ancestral); float64 only, since
#: in float32 the reference's sigma_down = sqrt(s'^2 - sigma_up^2) rounds to a tiny nonzero level instead.
BIG_ETA = [
    ("dpm_2_ancestral", {"noise_sampler": NOISE, "eta": 3.0}),
    ("dpmpp_2s_ancestral", {"noise_sampler": NOISE, "eta": 3.0}),
]
PARAMS = [
    pytest.param(name, options, n, dtype, tol, id=f"{name}-{i}-{n}-{tag}")
    for i, (name, options) in enumerate(CASES + BIG_ETA)
    for n, dtype, tol, tag in [(6, F64, 1e-12, "float64"), (12, F64, 1e-12, "float64"), (12, F32, 4e-6, "float32")]
    if tag == "float64" or (name, options) not in BIG_ETA
]


@pytest.mark.parametrize(("name", "options", "n", "dtype", "tol"), PARAMS)
def test_agrees_with_k_diffusion(name: str, options: dict[str, Any], n: int, dtype: torch.dtype, tol: float) -> None:
    sigmas, x = sigmas_of(n, dtype), start(dtype)
    opts = {k: interval_noise(dtype) if v is NOISE else v for k, v in options.items()}
    torch.manual_seed(5)  # the churn noise: torch's global generator on both sides
    expected = getattr(K, f"sample_{name}")(DENOISER, x, sigmas, disable=True, **opts)
    torch.manual_seed(5)
    got = getattr(fk, f"sample_{name}")(DENOISER, x, sigmas, disable=True, **opts)
    assert got.dtype == dtype and got.shape == x.shape
    assert rel(got.double(), expected.double()) <= tol


@pytest.fixture
def float64_default() -> Any:
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize(
    ("n", "options"),
    [
        (10, {}),
        (11, {}),
        (2, {}),
        (7, {"eta": 0.7, "noise_sampler": NOISE}),
        (12, {"eta": 1.0, "s_noise": 0.8, "noise_sampler": NOISE}),
    ],
)
def test_dpm_fast_agrees_with_k_diffusion(n: int, options: dict[str, Any], float64_default: Any) -> None:
    x = start(F64)
    opts = {k: interval_noise(F64) if v is NOISE else v for k, v in options.items()}
    calls = {"k": 0, "f": 0}

    def counted(key: str) -> Callable[[Tensor, Tensor], Tensor]:
        def model(x_: Tensor, sigma: Tensor) -> Tensor:
            calls[key] += 1
            return DENOISER(x_, sigma)

        return model

    expected = K.sample_dpm_fast(counted("k"), x, 0.002, 80.0, n, disable=True, **opts)
    got = fk.sample_dpm_fast(counted("f"), x, 0.002, 80.0, n, disable=True, **opts)
    assert rel(got, expected) <= 1e-12
    assert calls["f"] == calls["k"] == n


def test_dpmpp_sde_agrees_with_k_diffusions_brownian_tree() -> None:
    """The reference's default noise sampler, a Brownian tree in sigma, passed to both: the stage's and the step's
    draws are increments over [sigma_i, sigma_mid] and [sigma_i, sigma_{i+1}] of one path. The two sides compute the
    levels they query with different roundings (the reference through exp(-log sigma)), and a Brownian path is only
    Hoelder-1/2 in time: a rounding-level shift of a query moves the draw by about its square root (observed 2e-8)."""
    sigmas, x = sigmas_of(8, F64), start(F64)
    for eta, r in [(1.0, 0.5), (0.8, 0.4)]:
        tree = K.BrownianTreeNoiseSampler(x, float(sigmas[-2]), float(sigmas[0]), seed=3)
        expected = K.sample_dpmpp_sde(DENOISER, x, sigmas, disable=True, noise_sampler=tree, eta=eta, r=r)
        tree = K.BrownianTreeNoiseSampler(x, float(sigmas[-2]), float(sigmas[0]), seed=3)
        got = fk.sample_dpmpp_sde(DENOISER, x, sigmas, noise_sampler=tree, eta=eta, r=r)
        assert rel(got, expected) <= 1e-6


def test_dpmpp_sde_seed_draws_a_brownian_path() -> None:
    """With extra_args["seed"] (and without), the draws are fewstep's Brownian path, as the dpmpp_2m_sde functions."""
    sigmas, x = sigmas_of(8, F64), start(F64)
    edm = fewstep.EDM(sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]))
    expected = K.sample_dpmpp_sde(DENOISER, x, sigmas, disable=True, noise_sampler=brownian_level_sampler(edm, x, 11))
    got = fk.sample_dpmpp_sde(DENOISER, x, sigmas, extra_args={"seed": 11})
    assert rel(got, expected) <= 1e-12
    torch.manual_seed(0)
    a = fk.sample_dpmpp_sde(DENOISER, x, sigmas)
    torch.manual_seed(0)
    b = fk.sample_dpmpp_sde(DENOISER, x, sigmas)
    assert torch.equal(a, b) and rel(a, got) > 1e-3


def test_dpm_fast_callback_has_the_reference_keys(float64_default: Any) -> None:
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    K.sample_dpm_fast(DENOISER, start(F64), 0.002, 80.0, 10, callback=theirs.append, disable=True)
    fk.sample_dpm_fast(DENOISER, start(F64), 0.002, 80.0, 10, callback=ours.append)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs, strict=True):
        assert set(a) == set(b) and a["i"] == b["i"]
        for key in ("sigma", "sigma_hat", "t", "t_up"):
            assert isinstance(a[key], Tensor) and abs(float(a[key]) - float(b[key])) <= 1e-12 * abs(float(b[key])), key
        assert rel(a["x"], b["x"]) <= 1e-12 and rel(a["denoised"], b["denoised"]) <= 1e-12


@pytest.mark.parametrize(
    ("name", "args", "options", "error", "match"),
    [
        ("dpm_2", None, {"s_churn": -1.0}, ValueError, "s_churn"),
        ("dpm_2_ancestral", None, {"eta": -1.0}, ValueError, "eta"),
        ("dpmpp_2s_ancestral", None, {"noise_sampler": 3}, TypeError, "noise_sampler"),
        ("dpmpp_sde", None, {"r": 0.0}, ValueError, "r"),
        ("dpmpp_sde", None, {"s_noise": -0.5}, ValueError, "s_noise"),
        ("dpm_fast", (0.0, 80.0, 10), {}, ValueError, "sigma_min"),
        ("dpm_fast", (0.002, 80.0, 0), {}, ValueError, "n"),
        ("dpm_fast", (0.002, 80.0, 2.5), {}, TypeError, "n"),
        ("dpm_fast", (0.002, 80.0, 10), {"eta": -0.1}, ValueError, "eta"),
    ],
)
def test_bad_options_are_named_before_any_call(
    name: str, args: tuple | None, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    def never(x: Tensor, sigma: Tensor) -> Tensor:
        raise AssertionError("the model must not be called")

    positional = (sigmas_of(5, F64),) if args is None else args
    with pytest.raises(error, match=match):
        getattr(fk, f"sample_{name}")(never, start(F64), *positional, **options)


# --- the solvers on another schedule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("dpm_2_ancestral", {"eta": 0.0}), ("dpm_solver_2", {})),
        (("dpmpp_2s_ancestral", {"eta": 0.0}), ("dpmpp_2s", {})),
        (("dpmpp_sde", {"eta": 0.0}), ("dpmpp_2s", {})),
    ],
    ids=lambda v: v[0],
)
def test_at_eta_zero_they_are_the_ode_solvers(a: tuple[str, dict], b: tuple[str, dict]) -> None:
    schedule = fewstep.VP()
    model = mixture_2d("default").model(schedule, "epsilon")
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    outs = [fewstep.sample(model, noise, schedule, name, steps=8, **opts) for name, opts in (a, b)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)


def test_dpm_fast_ancestral_at_eta_zero_is_dpm_solver_3() -> None:
    schedule = fewstep.VP()
    model = mixture_2d("default").model(schedule, "epsilon")
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    kw: dict[str, Any] = {"nfe": 10, "final": "t_min"}
    got = fewstep.sample(model, noise, schedule, DPMFastAncestral(eta=0.0), **kw)
    torch.testing.assert_close(got, fewstep.sample(model, noise, schedule, "dpm_solver_3", **kw), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("solver", "options", "order", "counts"),
    [
        ("dpm_2_ancestral", {"eta": 0.0}, 2, [20, 40, 80, 160]),
        ("dpmpp_2s_ancestral", {"eta": 0.0}, 2, [20, 40, 80, 160]),
        ("dpmpp_sde", {"eta": 0.0}, 2, [20, 40, 80, 160]),
        ("dpmpp_sde", {"eta": 0.0, "r": 1 / 3}, 2, [20, 40, 80, 160]),
        (DPMFastAncestral(eta=0.0), {}, 3, [10, 20, 40, 80]),
    ],
    ids=["dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde-r1/3", "dpm_fast"],
)
def test_order_at_eta_zero_on_the_exact_pf_ode_solution(
    solver: Any, options: dict, order: int, counts: list[int]
) -> None:
    """The deterministic order (eta = 0) against the exact PF-ODE image of the wide mixture at t_min (VP, logSNR)."""
    wide, sched = mixture_2d("wide"), fewstep.VP()
    g = torch.Generator().manual_seed(1234)
    a, s = float(sched.alpha(sched.t_max)), float(sched.sigma(sched.t_max))
    noise = a * wide.sample(64, g) + s * torch.randn(64, 2, generator=g, dtype=F64)
    a1, s1 = float(sched.alpha(sched.t_min)), float(sched.sigma(sched.t_min))
    ref = reference_solution(wide, noise, a, s, alpha_end=a1, sigma_end=s1)
    model = wide.model(sched, "epsilon")
    errors = [
        float((fewstep.sample(model, noise, sched, solver, steps=n, final="t_min", **options) - ref).abs().max())
        for n in counts
    ]
    slope = float(-np.polyfit(np.log(counts), np.log(errors), 1)[0])
    assert abs(slope - order) <= 0.3, (slope, errors)
