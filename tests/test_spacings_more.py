"""The spacings taken from other samplers (beta, linear_quadratic, kl_optimal, polyexponential, sgm_uniform and the
Align-Your-Steps tables): each against its reference where one is installed (k-diffusion, diffusers), else against
a hand computation from its published formula; valid times on every schedule family; every solver runs on each;
options travel by ``Spacing`` (sample), ``spacing_options`` (diffusers) and ``options`` (ComfyUI), and bad ones are
ValueErrors naming the option."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.spacing import SPACING_OPTIONS, SPACINGS, Spacing, model_times

NEW_SPACINGS = (
    "beta",
    "linear_quadratic",
    "kl_optimal",
    "polyexponential",
    "sgm_uniform",
    "ays_sd15",
    "ays_sdxl",
    "ays_svd",
)
SD = fewstep.DiscreteVP.scaled_linear()
SCHEDULES = {
    "vp": fewstep.VP(),
    "cosine": fewstep.Cosine(),
    "sd": SD,
    "sd_zero_snr": fewstep.DiscreteVP.scaled_linear(rescale_zero_terminal_snr=True),
    "ve": fewstep.VE(),
    "edm": fewstep.EDM(),
    "flow": fewstep.Flow(),
    "linear_interpolant": fewstep.Interpolant(lambda t: 1.0 - t, lambda t: t, t_max=1.0),
}
#: The published Align-Your-Steps levels (NVIDIA's AYS page), typed in here rather than read from fewstep.
AYS_PAGE = {
    "sd15": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
    "svd": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


def levels(schedule: fewstep.NoiseSchedule, n: int, spacing: str | Spacing) -> np.ndarray:
    return schedule.level(model_times(schedule, n, spacing)).numpy()


def sd_level_range() -> tuple[float, float]:
    """Stable Diffusion's sigma range from diffusers' own scheduler tables (float32)."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sigmas = ((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5
    return float(sigmas[0]), float(sigmas[-1])


# ------------------------------------------------------------------------------------------------ references


@pytest.mark.kdiffusion
@pytest.mark.parametrize("rho", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("n", [2, 5, 17])
def test_polyexponential_is_k_diffusions(rho: float, n: int) -> None:
    from k_diffusion.sampling import get_sigmas_polyexponential

    edm = fewstep.EDM(0.002, 80.0)
    ref = get_sigmas_polyexponential(n, 0.002, 80.0, rho=rho).double().numpy()[:-1]
    np.testing.assert_allclose(model_times(edm, n, Spacing("polyexponential", rho=rho)).numpy(), ref, rtol=1e-5)
    vp = fewstep.VP()
    lo, hi = float(vp.level(vp.t_min)), float(vp.level(vp.t_max))
    ref = get_sigmas_polyexponential(n, lo, hi, rho=rho).double().numpy()[:-1]
    np.testing.assert_allclose(levels(vp, n, Spacing("polyexponential", rho=rho)), ref, rtol=1e-5)


@pytest.mark.parametrize("n", [2, 4, 10, 25])
def test_beta_on_edm_is_diffusers_use_beta_sigmas(n: int) -> None:
    """On EDM (t = sigma) the Beta quantiles in t are diffusers' ``use_beta_sigmas``."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", use_beta_sigmas=True
    )
    sched.set_timesteps(n)
    ref = sched.sigmas.double().numpy()[:-1]  # its last sigma is the appended 0
    edm = fewstep.EDM(float(ref[-1]), float(ref[0]))
    np.testing.assert_allclose(model_times(edm, n, "beta").numpy(), ref, rtol=2e-6)  # diffusers' float32
    # the options a, b are the Beta distribution's (diffusers' alpha, beta)
    in_sigmas = torch.tensor([80.0, 0.03], dtype=torch.float64)
    ref = sched._convert_to_beta(in_sigmas, n, alpha=0.5, beta=1.7)
    got = model_times(fewstep.EDM(0.03, 80.0), n, Spacing("beta", a=0.5, b=1.7)).numpy()
    np.testing.assert_allclose(got, np.asarray(ref, dtype=np.float64), rtol=1e-12)


def test_beta_is_the_beta_quantiles_in_time() -> None:
    vp = fewstep.VP()
    for a, b, n in [(0.6, 0.6, 9), (2.0, 0.5, 6)]:
        u = np.linspace(0.0, 1.0, n)
        hand = vp.t_min + (vp.t_max - vp.t_min) * scipy.stats.beta.ppf(1.0 - u, a, b)
        np.testing.assert_allclose(model_times(vp, n, Spacing("beta", a=a, b=b)).numpy(), hand, rtol=1e-12)


@pytest.mark.parametrize("model", ["sd15", "sdxl", "svd"])
def test_ays_tables_are_the_published_ones_and_diffusers(model: str) -> None:
    from diffusers.schedulers import AysSchedules

    from fewstep.spacing_formulas import AYS_LEVELS

    assert list(AYS_LEVELS[model]) == AYS_PAGE[model]
    shipped = {"sd15": "StableDiffusionSigmas", "sdxl": "StableDiffusionXLSigmas", "svd": "StableDiffusionVideoSigmas"}
    assert list(AYS_LEVELS[model])[:-1] == AysSchedules[shipped[model]][:-1]  # diffusers ends the list with 0


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_ays_on_stable_diffusion_is_the_table_and_diffusers_timesteps(model: str) -> None:
    from diffusers.schedulers import AysSchedules

    got = levels(SD, 11, f"ays_{model}")
    lo, hi = sd_level_range()
    np.testing.assert_allclose(got[[0, -1]], [hi, lo], rtol=5e-5)  # the model's range (diffusers' float32 table)
    np.testing.assert_allclose(got[1:-1], AYS_PAGE[model][1:-1], rtol=1e-9)  # the published levels between
    timesteps = AysSchedules["StableDiffusionTimesteps" if model == "sd15" else "StableDiffusionXLTimesteps"]
    index = SD.index(model_times(SD, 11, f"ays_{model}")).numpy()[:-1]
    assert np.abs(index - np.asarray(timesteps)).max() <= 1.0  # diffusers' integer timesteps, within one step


@pytest.mark.parametrize("n", [4, 6, 11, 20, 31])
def test_ays_interpolates_log_linearly(n: int) -> None:
    """ComfyUI's AlignYourStepsScheduler's interpolation: log level linear in the reversed table's position."""
    table = np.asarray(AYS_PAGE["svd"])
    xs = np.linspace(0.0, 1.0, len(table))
    hand = np.exp(np.interp(np.linspace(0.0, 1.0, n), xs, np.log(table[::-1])))[::-1]
    np.testing.assert_allclose(model_times(fewstep.EDM(0.002, 700.0), n, "ays_svd").numpy(), hand, rtol=1e-12)


def test_ays_maps_the_table_onto_another_span_by_log_level() -> None:
    edm = fewstep.EDM(0.01, 100.0)
    table = np.log(np.asarray(AYS_PAGE["svd"]))
    fraction = (table - math.log(0.002)) / (math.log(700.0) - math.log(0.002))
    hand = np.exp(math.log(0.01) + fraction * (math.log(100.0) - math.log(0.01)))
    np.testing.assert_allclose(model_times(edm, 11, "ays_svd").numpy(), hand, rtol=1e-12)


@pytest.mark.parametrize("n", [2, 5, 12])
def test_kl_optimal_is_tan_of_uniform_arctan(n: int) -> None:
    edm = fewstep.EDM(0.002, 80.0)
    hand = [math.tan((1 - i / (n - 1)) * math.atan(80.0) + i / (n - 1) * math.atan(0.002)) for i in range(n)]
    np.testing.assert_allclose(model_times(edm, n, "kl_optimal").numpy(), hand, rtol=1e-12)
    vp = fewstep.VP()
    lo, hi = float(vp.level(vp.t_min)), float(vp.level(vp.t_max))
    hand = [math.tan((1 - i / (n - 1)) * math.atan(hi) + i / (n - 1) * math.atan(lo)) for i in range(n)]
    np.testing.assert_allclose(levels(vp, n, "kl_optimal"), hand, rtol=1e-9)


def mochi_fractions(steps: int, threshold: float, linear_steps: int | None) -> list[float]:
    """Mochi's linear-quadratic sigmas over ``steps`` steps (1 down to 0), written from its formula: linear
    ``i tau / L`` below ``L``, then ``a i^2 + b i + c`` through ``(L, tau)`` with slope ``tau / L`` to ``(S, 1)``."""
    lin = steps // 2 if linear_steps is None else linear_steps
    quad = steps - lin
    a = (lin - threshold * steps) / (lin * quad**2)
    b = threshold / lin - 2 * (lin - threshold * steps) / quad**2
    c = a * lin**2
    f = [i * threshold / lin for i in range(lin)] + [a * i**2 + b * i + c for i in range(lin, steps)] + [1.0]
    return [1.0 - x for x in f]


@pytest.mark.parametrize(("n", "threshold", "linear_steps"), [(11, 0.025, None), (8, 0.1, 2), (26, 0.025, None)])
def test_linear_quadratic_is_mochis(n: int, threshold: float, linear_steps: int | None) -> None:
    flow = fewstep.Flow()
    hand = flow.t_min + (flow.t_max - flow.t_min) * np.asarray(mochi_fractions(n - 1, threshold, linear_steps))
    rule = Spacing("linear_quadratic", threshold_noise=threshold, linear_steps=linear_steps)
    np.testing.assert_allclose(model_times(flow, n, rule).numpy(), hand, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_sgm_uniform_is_uniform_in_the_timestep_without_the_last(n: int) -> None:
    """On a DiscreteVP, ComfyUI's sgm_uniform: ``n`` of ``n + 1`` uniform timesteps from 999 towards 0."""
    index = SD.index(model_times(SD, n, "sgm_uniform")).numpy()
    np.testing.assert_allclose(index, np.linspace(999.0, 0.0, n + 1)[:-1], atol=1e-9)


# ------------------------------------------------------------------------------------------------ properties


@pytest.mark.parametrize("spacing", NEW_SPACINGS)
@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
def test_times_are_strictly_decreasing_and_in_range(spacing: str, schedule_name: str) -> None:
    schedule = SCHEDULES[schedule_name]
    for n in (1, 2, 3, 7, 25, 80):
        t = model_times(schedule, n, spacing)
        assert t.dtype == torch.float64 and t.shape == (n,)
        assert bool(torch.isfinite(t).all())
        assert float(t[0]) == schedule.t_max
        assert bool((torch.diff(t) < 0).all()), (n, t)
        assert float(t[-1]) >= schedule.t_min
        if n > 1 and spacing != "sgm_uniform":
            assert float(t[-1]) == schedule.t_min
    if schedule.ode_variable == "t":  # the SD3/Flux shift applies after these spacings too
        shifted = model_times(schedule, 9, spacing, shift=3.0)
        assert bool((torch.diff(shifted) < 0).all())
        assert bool((shifted >= model_times(schedule, 9, spacing) - 1e-12).all())


def test_every_spacing_is_listed_with_its_options() -> None:
    assert set(NEW_SPACINGS) <= set(SPACINGS)
    assert set(SPACING_OPTIONS) <= set(SPACINGS)
    from fewstep.bench import catalog

    assert set(NEW_SPACINGS) <= set(catalog.SPACINGS)


# ------------------------------------------------------------------------------------------------ every solver

TARGET = mixture_2d("default")
SMOKE_SCHEDULE = fewstep.VP()
SMOKE_MODEL = TARGET.model(SMOKE_SCHEDULE, "epsilon")


@pytest.mark.filterwarnings("ignore::fewstep.guard.DivergenceWarning")  # dpm_solver_2_sde at 4 steps (docs/solvers.md)
@pytest.mark.parametrize("spacing", NEW_SPACINGS)
def test_every_solver_runs_on_the_spacing(spacing: str) -> None:
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for info in fewstep.solvers.available():
        calls = fewstep.CallCount()
        out = fewstep.sample(
            SMOKE_MODEL, noise, SMOKE_SCHEDULE, info.name, steps=4, spacing=spacing, progress=False, calls=calls,
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        assert out.shape == noise.shape and bool(torch.isfinite(out).all()), info.name
        assert calls.nfe >= 4, info.name


# ------------------------------------------------------------------------------------------------ options


def test_sample_takes_a_spacing_with_options_as_its_times() -> None:
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rule = Spacing("beta", a=0.5, b=0.9)
    times = model_times(SMOKE_SCHEDULE, 8, rule)
    by_rule = fewstep.sample(SMOKE_MODEL, noise, SMOKE_SCHEDULE, "dpmpp_2m", nfe=8, spacing=rule)
    by_times = fewstep.sample(SMOKE_MODEL, noise, SMOKE_SCHEDULE, "dpmpp_2m", spacing=times)
    torch.testing.assert_close(by_rule, by_times, rtol=0, atol=0)
    default = fewstep.sample(SMOKE_MODEL, noise, SMOKE_SCHEDULE, "dpmpp_2m", nfe=8, spacing="beta")
    assert not torch.equal(by_rule, default)


def test_rho_reaches_karras_and_polyexponential() -> None:
    edm = fewstep.EDM()
    assert torch.equal(model_times(edm, 6, "karras"), model_times(edm, 6, Spacing("karras", rho=7.0)))
    torch.testing.assert_close(model_times(edm, 6, "polyexponential"), model_times(edm, 6, "exponential"))  # rho 1
    assert torch.equal(
        model_times(edm, 6, "polyexponential", rho=2.0), model_times(edm, 6, Spacing("polyexponential", rho=2.0))
    )
    noise = torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = fewstep.sample(SMOKE_MODEL, noise, SMOKE_SCHEDULE, "euler", nfe=5, spacing="polyexponential", rho=2.0)
    b = fewstep.sample(SMOKE_MODEL, noise, SMOKE_SCHEDULE, "euler", nfe=5, spacing=Spacing("polyexponential", rho=2.0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: Spacing("beta", a=0.0), "a:"),
        (lambda: Spacing("beta", b=-1.0), "b:"),
        (lambda: Spacing("beta", a=float("nan")), "a:"),
        (lambda: Spacing("beta", c=1.0), "c:"),
        (lambda: Spacing("logsnr", rho=2.0), "rho:"),
        (lambda: Spacing("polyexponential", rho=0.0), "rho:"),
        (lambda: Spacing("linear_quadratic", threshold_noise=1.5), "threshold_noise:"),
        (lambda: Spacing("linear_quadratic", linear_steps=0), "linear_steps:"),
        (lambda: Spacing("linear_quadratic", linear_steps=2.5), "linear_steps:"),
        (lambda: Spacing("ays_sd21"), "spacing:"),
        (lambda: model_times(SD, 5, Spacing("linear_quadratic", linear_steps=4)), "linear_steps:"),
        (lambda: model_times(SD, 5, Spacing("karras", rho=3.0), rho=5.0), "rho:"),
        (lambda: model_times(SD, 5, "ays"), "spacing:"),
    ],
)
def test_bad_options_are_value_errors_naming_the_option(make, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        make()


def test_diffusers_scheduler_takes_spacing_options() -> None:
    from fewstep.integrations.diffusers import FewstepScheduler

    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    sched = FewstepScheduler(**config, spacing="beta", spacing_options={"a": 0.5, "b": 0.8})
    sched.set_timesteps(7)
    expected = SD.index(model_times(SD, 7, Spacing("beta", a=0.5, b=0.8))).float()
    torch.testing.assert_close(sched.timesteps[:7], expected)
    again = FewstepScheduler.from_config(sched.config)  # the options are part of the saved config
    again.set_timesteps(7)
    torch.testing.assert_close(again.timesteps, sched.timesteps)
    with pytest.raises(ValueError, match="q:"):
        FewstepScheduler(**config, spacing="beta", spacing_options={"q": 1.0})
    for name in ("kl_optimal", "ays_sdxl", "sgm_uniform", "linear_quadratic"):
        FewstepScheduler(**config, spacing=name).set_timesteps(6)
        FewstepScheduler(flow=True, spacing=name).set_timesteps(6)


def test_comfyui_sigmas_take_the_new_spacings_and_options() -> None:
    from fewstep.integrations.comfyui import FewstepSigmas, sigmas_for

    offered = FewstepSigmas.INPUT_TYPES()["required"]["spacing"][0]
    assert set(NEW_SPACINGS) <= set(offered)
    got = sigmas_for(0.002, 700.0, 11, "ays_svd")
    np.testing.assert_allclose(got[:-1].double().numpy(), AYS_PAGE["svd"], rtol=1e-6)
    assert float(got[-1]) == 0.0
    got = sigmas_for(0.03, 14.6, 6, "beta", options={"a": 0.5, "b": 0.8})
    hand = 0.03 + (14.6 - 0.03) * scipy.stats.beta.ppf(1.0 - np.linspace(0, 1, 6), 0.5, 0.8)
    np.testing.assert_allclose(got[:-1].double().numpy(), hand, rtol=1e-6)
    with pytest.raises(ValueError, match="rho:"):
        sigmas_for(0.03, 14.6, 6, "beta", options={"rho": 2.0})
