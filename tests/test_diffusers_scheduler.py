"""FewstepScheduler as a diffusers scheduler: the attributes, arguments and behaviour that pipelines and training
scripts rely on, and every property that diffusers' common scheduler tests check (written here independently):
config save/load and from_config round trips, compatibles, trained betas, step output shapes and return_dict,
repeated set_timesteps, add_noise on every device and dtype, full loops with and without a begin index."""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import FewstepScheduler  # noqa: E402

#: the four solvers diffusers' common suite is run with (the issue's external check), plus a singlestep one
COMMON_SOLVERS = ["dpmpp_2m", "unipc_bh2", "heun", "euler_ancestral", "dpm_solver_3"]
VP = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
FLOW = {"flow": True, "shift": 3.0}
CONFIGS = {"vp": VP, "flow": FLOW}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make(solver: str = "dpmpp_2m", family: str = "vp", **options) -> FewstepScheduler:
    return FewstepScheduler(**CONFIGS[family], solver=solver, **options)


def toy_model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed affine map of the state and the timestep (enough for shape and bookkeeping properties)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.1 * x + 1e-4 * t


def images(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dtype)


def loop(scheduler, x: torch.Tensor, timesteps, model=toy_model, seed: int | None = 0) -> torch.Tensor:
    """A pipeline's denoising loop over ``timesteps`` (stochastic solvers draw from a seeded generator)."""
    options = {}
    if seed is not None and "generator" in inspect.signature(scheduler.step).parameters:
        options["generator"] = torch.Generator().manual_seed(seed)
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)  # flow-matching schedulers have none
    for t in timesteps:
        x = scheduler.step(model(scale(x, t), t), t, x, **options).prev_sample
    return x


def mixture(schedule, prediction: str):
    """The exact denoiser of a 2-D Gaussian mixture, called with a pipeline's timestep."""
    return mixture_2d().model(schedule, prediction)


# --- the defects of the issue: attributes, compatibles, step(timestep), set_timesteps' arguments, steps ---------


@pytest.mark.parametrize(
    ("config", "rescale"),
    [
        (VP, False),
        ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, False),
        ({"beta_schedule": "squaredcos_cap_v2"}, False),
        ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, True),
    ],
)
def test_ddpm_tables_equal_diffusers(config: dict, rescale: bool) -> None:
    """betas, alphas and alphas_cumprod as diffusers' schedulers have them (Euler's, which clamps a rescaled
    zero-SNR table's last alphas_cumprod to 2**-24 as fewstep does)."""
    ours = FewstepScheduler(**config, rescale_betas_zero_snr=rescale)
    theirs = diffusers.EulerDiscreteScheduler(**config, rescale_betas_zero_snr=rescale)
    for name in ("betas", "alphas", "alphas_cumprod"):
        mine, ref = getattr(ours, name), getattr(theirs, name)
        assert mine.dtype == torch.float32 and mine.shape == ref.shape
        torch.testing.assert_close(mine, ref, rtol=2e-5, atol=1e-6)


def test_tables_before_set_timesteps_equal_diffusers() -> None:
    """Before set_timesteps, timesteps and sigmas list every training step (training scripts read them):
    DDPM-style as EulerDiscreteScheduler, flows as FlowMatchEulerDiscreteScheduler."""
    vp, euler = make(), diffusers.EulerDiscreteScheduler(**VP)
    torch.testing.assert_close(vp.timesteps, euler.timesteps)
    torch.testing.assert_close(vp.sigmas, euler.sigmas, rtol=1e-5, atol=1e-6)
    for options in ({"shift": 3.0}, {"use_dynamic_shifting": True}):
        flow, fm = FewstepScheduler(flow=True, **options), diffusers.FlowMatchEulerDiscreteScheduler(**options)
        torch.testing.assert_close(flow.timesteps, fm.timesteps)
        torch.testing.assert_close(flow.sigmas, fm.sigmas)
    assert vp.begin_index is None and vp.step_index is None and vp.num_inference_steps is None


def test_sigmas_and_indices_as_diffusers() -> None:
    """After set_timesteps: sigmas are k-diffusion's noise levels of the evaluations plus the end (as
    EulerDiscreteScheduler's on the same trailing grid); step_index counts the evaluations fed in; begin_index is
    what set_begin_index set; set_timesteps resets both."""
    ours = make("dpmpp_2m", spacing="trailing")
    theirs = diffusers.EulerDiscreteScheduler(**VP, timestep_spacing="trailing")
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=1e-5, atol=1e-6)
    assert ours.step_index is None and ours.begin_index is None
    x = images()
    for i, t in enumerate(ours.timesteps[:3]):
        x = ours.step(toy_model(x, t), t, x).prev_sample
        assert ours.step_index == i + 1
    ours.set_timesteps(10)
    ours.set_begin_index(4)
    assert ours.begin_index == 4 and ours.step_index is None
    ours.step(toy_model(x, ours.timesteps[4]), ours.timesteps[4], x)
    assert ours.step_index == 5
    ours.set_timesteps(10)
    assert ours.begin_index is None and ours.step_index is None


def test_a_loop_started_part_way_honours_its_first_timestep() -> None:
    """The issue's case: add noise at timesteps[5], then loop over timesteps[5:] without set_begin_index. step()
    starts at the evaluation of its first timestep (as diffusers' schedulers do), so the result equals
    DPMSolverMultistepScheduler's on the same grid, and the run with set_begin_index(5)."""
    theirs = diffusers.DPMSolverMultistepScheduler(**VP)
    theirs.set_timesteps(10)
    grid = theirs.timesteps.clone()
    x0, noise = images(0), images(1)

    def part_way(scheduler, begin: bool) -> torch.Tensor:
        if isinstance(scheduler, FewstepScheduler):
            scheduler.set_timesteps(timesteps=grid)
        else:
            scheduler.set_timesteps(10)
        if begin:
            scheduler.set_begin_index(5)
        ts = scheduler.timesteps[5:]
        return loop(scheduler, scheduler.add_noise(x0, noise, ts[:1]), ts)

    ours = make("dpmpp_2m")
    expected = part_way(theirs, begin=False)
    torch.testing.assert_close(part_way(ours, begin=False), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part_way(ours, begin=True), expected, rtol=1e-5, atol=1e-5)


def test_a_first_timestep_where_no_step_starts_raises() -> None:
    s = make("dpm_solver_3")
    s.set_timesteps(10)
    x = images()
    with pytest.raises(ValueError, match="timestep"):
        s.step(x, 123.0, x)  # not a timestep of the plan
    with pytest.raises(ValueError, match="timestep"):
        s.step(x, s.timesteps[1], x)  # an intermediate evaluation of the first step: no step starts there
    s.step(x, s.timesteps[3], x)  # the second step starts there
    assert s.step_index == 4


def test_set_timesteps_takes_diffusers_arguments() -> None:
    """Pipelines inspect set_timesteps' signature before passing timesteps=, sigmas= or mu=."""
    params = inspect.signature(FewstepScheduler.set_timesteps).parameters
    assert {"num_inference_steps", "device", "timesteps", "sigmas", "mu", "nfe"} <= set(params)
    step = inspect.signature(FewstepScheduler.step).parameters
    assert {"model_output", "timestep", "sample", "generator", "return_dict"} <= set(step)


@pytest.mark.parametrize(
    ("solver", "evaluations"), [("heun", 99), ("dpmpp_2s", 99), ("dpm_solver_3", 148), ("dpmpp_2m", 50)]
)
def test_num_inference_steps_counts_steps_not_evaluations(solver: str, evaluations: int) -> None:
    """At diffusers' default of 50 steps, Heun spends 99 evaluations (as HeunDiscreteScheduler: its last step to
    sigma = 0 is one Euler step); timesteps lists them all and order is the evaluations of one step."""
    s = make(solver)
    s.set_timesteps(50)
    assert s.num_inference_steps == 50 and len(s.timesteps) == s.nfe == evaluations
    assert s.order == {"heun": 2, "dpmpp_2s": 2, "dpm_solver_3": 3, "dpmpp_2m": 1}[solver]
    if solver == "heun":
        theirs = diffusers.HeunDiscreteScheduler(**VP)
        theirs.set_timesteps(50)
        assert len(theirs.timesteps) == evaluations and theirs.order == s.order


@pytest.mark.parametrize(("solver", "nfe", "steps"), [("heun", 9, 5), ("dpm_solver_3", 10, 5), ("dpmpp_2m", 7, 7)])
def test_nfe_plans_exactly_that_many_evaluations(solver: str, nfe: int, steps: int) -> None:
    s = make(solver)
    s.set_timesteps(nfe=nfe)
    assert len(s.timesteps) == s.nfe == nfe and s.num_inference_steps == steps
    with pytest.raises(ValueError, match="nfe"):
        make("heun").set_timesteps(nfe=10)  # Heun spends an odd number with its last step to sigma = 0


def test_heun_equals_diffusers_heun() -> None:
    """Heun on Stable Diffusion's leading grid: the timesteps (each inner node twice), sigmas and the loop's
    result equal HeunDiscreteScheduler's (which works on the scaled state x / alpha, with init_noise_sigma and
    scale_model_input)."""
    cfg = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
    theirs = diffusers.HeunDiscreteScheduler(**cfg, timestep_spacing="leading")
    ours = FewstepScheduler.from_config(theirs.config, solver="heun", spacing="leading")
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=1e-5, atol=1e-5)
    model = mixture(ours.schedule, "epsilon")
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))

    def run(scheduler) -> torch.Tensor:
        x = noise * scheduler.init_noise_sigma
        return loop(scheduler, x, scheduler.timesteps, lambda x, t: model(x, t.expand(x.shape[0])))

    torch.testing.assert_close(run(ours), run(theirs), rtol=1e-5, atol=1e-5)


def test_a_changed_sample_between_steps_is_followed() -> None:
    """Inpainting with a 4-channel UNet re-imposes the known region after every step; step() continues from the
    sample it is given, as DPMSolverMultistepScheduler does (same grid, same result)."""
    theirs = diffusers.DPMSolverMultistepScheduler(**VP)
    theirs.set_timesteps(8)
    ours = make("dpmpp_2m")
    ours.set_timesteps(timesteps=theirs.timesteps)
    known, noise = images(2), images(3)
    mask = (torch.arange(8) < 4).float().reshape(1, 1, 1, 8)

    def inpaint(scheduler) -> torch.Tensor:
        x = noise.clone()
        ts = scheduler.timesteps
        for i, t in enumerate(ts):
            x = scheduler.step(toy_model(x, t), t, x).prev_sample
            if i < len(ts) - 1:
                x = (1 - mask) * scheduler.add_noise(known, noise, ts[i + 1 : i + 2]) + mask * x
        return x

    torch.testing.assert_close(inpaint(ours), inpaint(theirs), rtol=1e-5, atol=1e-5)


# --- set_timesteps(timesteps=, sigmas=, mu=) and dynamic shifting -------------------------------------------------


@pytest.mark.parametrize("family", ["vp", "flow"])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun", "dpm_solver_3", "unipc_bh2"])
def test_custom_timesteps_reproduce_the_spaced_plan(solver: str, family: str) -> None:
    """set_timesteps(timesteps=grid) with the grid of set_timesteps(10) (every order-th evaluation, the start of
    each step) plans the same evaluations, and a loop gives the same result."""
    spaced, custom = make(solver, family, spacing="uniform"), make(solver, family, spacing="uniform")
    spaced.set_timesteps(10)
    grid = spaced.timesteps[step_starts(spaced, family, 10)]
    custom.set_timesteps(num_inference_steps=None, timesteps=grid)
    torch.testing.assert_close(custom.timesteps, spaced.timesteps, rtol=1e-6, atol=1e-4)
    x = images()
    torch.testing.assert_close(loop(custom, x, custom.timesteps), loop(spaced, x, spaced.timesteps))


def test_vp_sigmas_are_k_diffusion_noise_levels() -> None:
    """sigmas= gives the grid of those noise levels, the last one the end (0: a clean end), equal to
    fewstep.sample on the same times; values just outside the schedule's range (a rounded table's 14.615 and 0.029
    for Stable Diffusion's 14.6146 and 0.02917) are taken as its ends; a positive last sigma ends the run there."""
    ays = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029, 0.0]  # AYS, SD 1.5
    s = FewstepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver="dpmpp_2m")
    s.set_timesteps(sigmas=ays)
    sched = s.schedule
    top, bottom = float(sched.level(sched.t_max)), float(sched.level(sched.t_min))
    levels = torch.tensor([top, *ays[1:-2], bottom], dtype=torch.float64)
    torch.testing.assert_close(
        s.sigmas.double(), torch.cat([levels, torch.zeros(1, dtype=torch.float64)]), rtol=1e-6, atol=0
    )
    assert s.num_inference_steps == 11 and len(s.timesteps) == 11
    model = mixture(sched, "epsilon")
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = loop(s, noise, s.timesteps, lambda x, t: model(x, t.double().expand(x.shape[0])))
    want = fewstep.sample(model, noise, sched, "dpmpp_2m", spacing=sched.t_of_level(levels))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    s.set_timesteps(sigmas=ays[:-2])  # ends at sigma = 0.152: no step to the clean end
    assert s.num_inference_steps == 9 and len(s.timesteps) == 9
    torch.testing.assert_close(s.sigmas[-1], torch.tensor(0.152), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="sigmas"):
        s.set_timesteps(sigmas=[20.0, 1.0, 0.0])  # far above the largest sigma


@pytest.mark.parametrize("time_shift_type", ["exponential", "linear"])
def test_dynamic_shifting_with_mu_equals_flow_match_euler(time_shift_type: str) -> None:
    """SD3/Flux configs with use_dynamic_shifting: set_timesteps(n, mu=) and Flux's set_timesteps(sigmas=, mu=)
    give FlowMatchEulerDiscreteScheduler's timesteps and sigmas with Euler on the uniform grid, and its loop."""
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, shift=3.0, time_shift_type=time_shift_type
    )
    ours = FewstepScheduler.from_config(theirs.config, solver="euler", spacing="uniform")
    model = mixture(fewstep.Flow(), "velocity")
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))

    def velocity(x, t):
        return model(x, t.double().expand(x.shape[0]) / 1000.0).float()

    mu = 0.8 if time_shift_type == "exponential" else 2.0
    for plan in ({"num_inference_steps": 8, "mu": mu}, {"sigmas": np.linspace(1.0, 1 / 8, 8), "mu": mu}):
        theirs.set_timesteps(**plan)
        ours.set_timesteps(**plan)
        torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=1e-6, atol=1e-7)
        expected = loop(theirs, noise, theirs.timesteps, velocity)
        torch.testing.assert_close(loop(ours, noise, ours.timesteps, velocity), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mu"):
        ours.set_timesteps(8)  # the pipeline must pass mu


def test_static_shift_ignores_mu_and_shift_terminal_stretches() -> None:
    """Without use_dynamic_shifting mu is ignored (FluxPipeline passes it to every scheduler), as diffusers does;
    shift_terminal stretches the grid to end there."""
    for options in ({"shift": 3.0}, {"shift": 3.0, "shift_terminal": 0.1}):
        theirs = diffusers.FlowMatchEulerDiscreteScheduler(**options)
        ours = FewstepScheduler.from_config(theirs.config, solver="euler", spacing="uniform")
        theirs.set_timesteps(sigmas=np.linspace(1.0, 1 / 6, 6), mu=1.5)
        ours.set_timesteps(sigmas=np.linspace(1.0, 1 / 6, 6), mu=1.5)
        torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=1e-6, atol=1e-7)


def test_flow_timesteps_are_used_as_given() -> None:
    """timesteps= on a flow config are the model's timesteps t * 1000, unshifted: the solver works at the times the
    model is told."""
    s = make("euler", "flow")
    s.set_timesteps(timesteps=[1000.0, 750.0, 400.0, 100.0])
    torch.testing.assert_close(s.timesteps, torch.tensor([1000.0, 750.0, 400.0, 100.0]))
    torch.testing.assert_close(s.sigmas, torch.tensor([1.0, 0.75, 0.4, 0.1, 0.0]))


def test_sana_style_config_with_flow_sigmas_is_a_flow() -> None:
    """A DPMSolverMultistepScheduler config with use_flow_sigmas (flow_shift) selects the flow schedule."""
    theirs = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"
    )
    ours = FewstepScheduler.from_config(theirs.config)
    assert ours.config.flow and ours.config.shift == 3.0 and ours.prediction == "velocity"


@pytest.mark.parametrize(
    ("family", "kwargs", "match"),
    [
        ("vp", {}, "num_inference_steps"),
        ("vp", {"num_inference_steps": 0}, "num_inference_steps"),
        ("vp", {"num_inference_steps": 2.5}, "num_inference_steps"),
        ("vp", {"num_inference_steps": True}, "num_inference_steps"),
        ("vp", {"num_inference_steps": 5, "nfe": 5}, "nfe"),
        ("vp", {"timesteps": [900, 500], "sigmas": [3.0, 1.0, 0.0]}, "timesteps, sigmas"),
        ("vp", {"timesteps": [100, 500]}, "timesteps"),
        ("vp", {"timesteps": [1200, 500]}, "timesteps"),
        ("vp", {"timesteps": [900.0, math.nan]}, "timesteps"),
        ("vp", {"timesteps": "999"}, "timesteps"),
        ("vp", {"num_inference_steps": 3, "timesteps": [900, 500]}, "num_inference_steps"),
        ("vp", {"sigmas": [200.0, 1.0, 0.0]}, "sigmas"),
        ("vp", {"sigmas": [0.0]}, "sigmas"),
        ("vp", {"num_inference_steps": 5, "mu": 1.0}, "mu"),
        ("flow", {"sigmas": [1.0, 0.5, 0.0]}, "sigmas"),
        ("flow", {"timesteps": [1500.0, 500.0]}, "timesteps"),
        ("flow", {"nfe": 0}, "nfe"),
    ],
)
def test_invalid_set_timesteps_arguments_raise_naming_them(family: str, kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make("dpmpp_2m", family).set_timesteps(**kwargs)


def test_dynamic_shifting_needs_a_numeric_mu() -> None:
    s = FewstepScheduler(flow=True, use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="mu"):
        s.set_timesteps(5)
    with pytest.raises(TypeError, match="mu"):
        s.set_timesteps(5, mu="big")
    with pytest.raises(ValueError, match="mu"):
        FewstepScheduler(flow=True, use_dynamic_shifting=True, time_shift_type="linear").set_timesteps(5, mu=-1.0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"spacing": "nope"}, "spacing"),
        ({"flow": True, "spacing": "trailing"}, "spacing"),
        ({"final": "end"}, "final"),
        ({"flow": True, "time_shift_type": "cubic"}, "time_shift_type"),
        ({"flow": True, "shift_terminal": 1.5}, "shift_terminal"),
        ({"flow": True, "shift": -1.0}, "shift"),
        ({"prediction_type": "flow_prediction"}, "prediction_type"),
        ({"prediction_type": "x0"}, "prediction_type"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"solver": "nope"}, "solver"),
    ],
)
def test_invalid_config_raises_naming_the_option(options: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        FewstepScheduler(**options)


def test_invalid_step_arguments_raise_before_the_solver_runs() -> None:
    s = make("euler_ancestral")
    s.set_timesteps(5)
    x, t = images(), s.timesteps[0]
    with pytest.raises(ValueError, match="model_output"):
        s.step(torch.cat([x, x], dim=1), t, x)  # e.g. a learned-variance output
    with pytest.raises(TypeError, match="generator"):
        s.step(toy_model(x, t), t, x, generator=[torch.Generator()])  # one per sample: four needed
    with pytest.raises(TypeError, match="begin_index"):
        s.set_begin_index(1.0)
    with pytest.raises(ValueError, match="begin_index"):
        s.set_begin_index(5)
    with pytest.raises(ValueError, match="invert_sigmas"):
        FewstepScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True).config)


def test_a_list_of_generators_draws_each_samples_noise_from_its_own() -> None:
    """Pipelines pass one generator per sample; each sample's result depends on its own generator only."""

    def run(seeds: list[int]) -> torch.Tensor:
        s = make("euler_ancestral")
        s.set_timesteps(4)
        x = images()[: len(seeds)]
        gens = [torch.Generator().manual_seed(k) for k in seeds]
        for t in s.timesteps:
            x = s.step(toy_model(x, t), t, x, generator=gens).prev_sample
        return x

    both, first = run([3, 4]), run([3])
    torch.testing.assert_close(both[:1], first)
    assert not torch.equal(both[0], run([5])[0])


# --- the properties of diffusers' common scheduler suite ----------------------------------------------------------


def first_step(scheduler, sample: torch.Tensor, steps: int = 50) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps[0]
    return scheduler.step(0.1 * sample, t, sample, generator=torch.Generator().manual_seed(0)).prev_sample


@pytest.mark.parametrize("family", ["vp", "flow"])
@pytest.mark.parametrize("solver", COMMON_SOLVERS)
def test_save_pretrained_and_from_config_round_trips(tmp_path: Path, solver: str, family: str) -> None:
    """save_pretrained/from_pretrained and from_config give the same config and the same step output."""
    s = make(solver, family, solver_options=None)
    s.save_pretrained(tmp_path)
    loaded = FewstepScheduler.from_pretrained(tmp_path)
    again = FewstepScheduler.from_config(s.config)
    config = {k: v for k, v in s.config.items() if k != "_use_default_values"}
    assert {k: v for k, v in loaded.config.items() if k != "_use_default_values"} == config
    assert dict(again.config) == dict(s.config)
    sample = images()
    expected = first_step(s, sample)
    for other in (loaded, again):
        torch.testing.assert_close(first_step(other, sample), expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_compatibles_round_trip_both_ways(family: str) -> None:
    """compatibles are diffusers' schedulers of the config's family; each loads our config, and ours loads theirs
    back with the same config (keys of the other class's own kept aside); the other way, each class's own config
    survives a round trip through FewstepScheduler."""
    s = make("heun", family, spacing="uniform")
    assert s.compatibles and all(c is not None for c in s.compatibles)
    names = {c.__name__ for c in s.compatibles}
    assert ("FlowMatchEulerDiscreteScheduler" in names) == (family == "flow")
    assert ("DPMSolverMultistepScheduler" in names) == (family == "vp")
    init_keys = set(inspect.signature(FewstepScheduler.__init__).parameters)
    quiet = logging.getLogger("diffusers.configuration_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # their classes warn about our keys, which they keep aside
    try:
        for cls in s.compatibles:
            theirs = cls.from_config(s.config)
            back = FewstepScheduler.from_config(theirs.config)
            assert {k: v for k, v in back.config.items() if k in s.config} == dict(s.config), cls.__name__
            assert not ({k for k in back.config if k not in s.config} & init_keys), cls.__name__
            own = cls()
            round_trip = cls.from_config(FewstepScheduler.from_config(own.config).config)
            assert {k: v for k, v in round_trip.config.items() if k in own.config} == dict(own.config), cls.__name__
    finally:
        quiet.setLevel(level)


def test_trained_betas_survive_save_and_load(tmp_path: Path) -> None:
    s = FewstepScheduler(trained_betas=np.array([0.1, 0.3]))
    s.save_pretrained(tmp_path)
    loaded = FewstepScheduler.from_pretrained(tmp_path)
    assert s.betas.tolist() == loaded.betas.tolist() == pytest.approx([0.1, 0.3])
    torch.testing.assert_close(loaded.alphas_cumprod, torch.tensor([0.9, 0.63]))


@pytest.mark.parametrize("family", ["vp", "flow"])
@pytest.mark.parametrize("solver", COMMON_SOLVERS)
def test_step_shapes_and_return_dict(solver: str, family: str) -> None:
    """step() keeps the sample's shape at consecutive timesteps; return_dict=False gives the same tensors as a
    tuple (prev_sample, pred_original_sample)."""
    s = make(solver, family)
    s.set_timesteps(50)
    sample = images()
    t0, t1 = s.timesteps[0], s.timesteps[1]
    out0 = s.step(0.1 * sample, t0, sample, generator=torch.Generator().manual_seed(0))
    out1 = s.step(0.1 * sample, t1, sample, generator=torch.Generator().manual_seed(0))
    assert out0.prev_sample.shape == out1.prev_sample.shape == sample.shape
    assert out0.pred_original_sample.shape == sample.shape
    s.set_timesteps(50)
    as_tuple = s.step(0.1 * sample, t0, sample, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    for a, b in zip(as_tuple, out0.values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("solver", COMMON_SOLVERS)
def test_repeated_set_timesteps_gives_the_same_run(solver: str) -> None:
    s = make(solver)
    s.set_timesteps(12)
    first_ts = s.timesteps.clone()
    first = loop(s, images(), s.timesteps)
    s.set_timesteps(7)
    s.set_timesteps(12)
    torch.testing.assert_close(s.timesteps, first_ts, rtol=0, atol=0)
    torch.testing.assert_close(loop(s, images(), s.timesteps), first, rtol=0, atol=0)


@pytest.mark.parametrize(("solver", "evaluations"), [("dpmpp_2m", 1000), ("unipc_bh2", 1000), ("heun", 1999)])
def test_every_training_step_as_inference_steps(solver: str, evaluations: int) -> None:
    """set_timesteps(num_train_timesteps) plans that many steps on distinct times."""
    s = make(solver)
    s.set_timesteps(s.config.num_train_timesteps)
    assert s.num_inference_steps == 1000 and len(s.timesteps) == evaluations
    grid = s.timesteps[:: s.order]
    assert torch.all(grid[:-1] > grid[1:])


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_public_api(family: str) -> None:
    s = make("dpmpp_2m", family)
    assert s.init_noise_sigma == 1.0 and callable(s.step) and callable(s.add_noise)
    sample = images()
    assert s.scale_model_input(sample, 0.0).shape == sample.shape
    assert "kwargs" not in inspect.signature(FewstepScheduler.__init__).parameters
    assert len(FewstepScheduler._deprecated_kwargs) == 0  # no **kwargs, so no deprecated ones


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("family", ["vp", "flow"])
def test_add_noise_on_every_device_and_dtype(family: str, dtype: torch.dtype, device: str) -> None:
    """add_noise keeps the sample's device and dtype, for the scheduler's (CPU) timesteps and for integer
    timesteps on the sample's device (a training loop's), and equals alpha x0 + sigma noise computed in float64
    (DDPMScheduler's add_noise for integer timesteps)."""
    s = make("dpmpp_2m", family)
    s.set_timesteps(50)
    x0 = images(0, torch.float64)
    noise = images(1, torch.float64)
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float32: 1e-6, torch.float64: 1e-7}[dtype]
    integer = torch.tensor([0, 10, 500, 999], device=device)
    for ts in (s.timesteps[5][None], integer):
        got = s.add_noise(x0.to(device, dtype), noise.to(device, dtype), ts)
        assert got.dtype == dtype and got.device.type == device and got.shape == x0.shape
        if family == "flow":
            t = ts.cpu().double().reshape(-1, 1, 1, 1) / 1000.0
            want = (1 - t) * x0 + t * noise
        else:
            t = s.schedule.t_of_index(ts.cpu().double()).reshape(-1, 1, 1, 1)
            want = s.schedule.alpha(t) * x0 + s.schedule.sigma(t) * noise
        torch.testing.assert_close(got.cpu().double(), want, rtol=tol, atol=tol)
    if family == "vp":
        theirs = diffusers.DDPMScheduler(**VP).add_noise(x0, noise, integer.cpu())
        torch.testing.assert_close(s.add_noise(x0, noise, integer.cpu()), theirs, rtol=1e-5, atol=1e-6)
        v = s.get_velocity(x0, noise, integer.cpu())
        torch.testing.assert_close(
            v, diffusers.DDPMScheduler(**VP).get_velocity(x0, noise, integer.cpu()), rtol=1e-5, atol=1e-6
        )


def test_attribute_access_as_diffusers() -> None:
    """Plain attributes read without warnings; a config entry read as an attribute warns (FutureWarning); a missing
    attribute raises AttributeError naming the class."""
    s = make()
    s.dummy_attribute = 5
    name = "dummy_attribute"
    assert s.dummy_attribute == 5 and getattr(s, name) == 5
    s.register_to_config(test_attribute=5)
    with pytest.warns(FutureWarning):
        assert s.test_attribute == 5
    with pytest.raises(AttributeError, match="'FewstepScheduler' object has no attribute 'does_not_exist'"):
        _ = s.does_not_exist


def reference(s: FewstepScheduler, family: str):
    """``(model, to_time, sample)``: the mixture's exact model called with a pipeline's timestep, and
    fewstep.sample on the same schedule (the flow's shift applied by sample's own ``shift=``)."""
    prediction = "velocity" if family == "flow" else "epsilon"
    model = mixture(s.schedule, prediction)
    scale = 1000.0 if family == "flow" else 1.0  # flows: the model takes t, the pipeline passes t * 1000

    def pipeline_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t.double().expand(x.shape[0]) / scale)

    def sample(noise: torch.Tensor, solver: str, seed: int, calls=None, **plan) -> torch.Tensor:
        shift = 3.0 if family == "flow" else 1.0
        generator = torch.Generator().manual_seed(seed)
        return fewstep.sample(
            model,
            noise,
            s.schedule,
            solver,
            prediction=prediction,
            shift=shift,
            generator=generator,
            calls=calls,
            **plan,
        )

    return pipeline_model, sample


def step_starts(s: FewstepScheduler, family: str, steps: int) -> list[int]:
    """Where each step starts in ``timesteps``: every ``order`` evaluations, except on a flow (alpha = 0 at the
    first time) with a lambda-based singlestep solver, whose first step is one first-order evaluation."""
    if family == "flow" and s.order > 1 and s.solver.lambda_based:
        return [0] + [1 + j * s.order for j in range(steps - 1)]
    return [j * s.order for j in range(steps)]


@pytest.mark.parametrize("family", ["vp", "flow"])
@pytest.mark.parametrize("solver", COMMON_SOLVERS)
def test_full_loop_equals_fewstep_sample(solver: str, family: str) -> None:
    """A full loop over timesteps (stochastic solvers with the generator passed to step()) equals fewstep.sample
    with the same steps, spacing and generator, and spends the evaluations fewstep.sample spends."""
    s = make(solver, family)
    s.set_timesteps(10)
    pipeline_model, sample = reference(s, family)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = loop(s, noise, s.timesteps, pipeline_model, seed=7)
    calls = fewstep.CallCount()
    want = sample(noise, solver, seed=7, calls=calls, steps=10, spacing=s.config.spacing)
    assert len(s.timesteps) == calls.nfe
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["vp", "flow"])
@pytest.mark.parametrize("solver", COMMON_SOLVERS)
def test_loops_part_way_with_and_without_a_begin_index(solver: str, family: str) -> None:
    """img2img: noise at the start of step k, then run the remaining steps: with set_begin_index and without it
    (step() starts at its first timestep) the result is the same, and equals fewstep.sample from that state over
    the remaining grid nodes, with the evaluations it spends there."""
    s = make(solver, family)
    s.set_timesteps(10)
    k = 4
    begin = step_starts(s, family, 10)[k]
    x0 = mixture_2d().sample(64, torch.Generator().manual_seed(0))
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pipeline_model, sample = reference(s, family)

    def run(with_begin: bool) -> tuple[torch.Tensor, torch.Tensor]:
        s.set_timesteps(10)
        if with_begin:
            s.set_begin_index(begin)
        ts = s.timesteps[begin:]
        start = s.add_noise(x0, noise, ts[:1])
        return start, loop(s, start, ts, pipeline_model, seed=3)

    start, with_begin = run(True)
    _, without = run(False)
    torch.testing.assert_close(with_begin, without, rtol=0, atol=0)
    base = fewstep.Flow(t_min=s.schedule.t_min) if family == "flow" else s.schedule
    grid = fewstep.spacing.model_times(base, 10, s.config.spacing)[k:]  # the grid nodes from step k on
    calls = fewstep.CallCount()
    want = sample(start, solver, seed=3, calls=calls, spacing=grid)
    assert len(s.timesteps) - begin == calls.nfe
    torch.testing.assert_close(with_begin, want, rtol=1e-5, atol=1e-5)


def test_fp16_loop_keeps_the_dtype() -> None:
    s = make("dpmpp_2m", thresholding=True, dynamic_thresholding_ratio=0.9)
    s.set_timesteps(10)
    x = loop(s, images().half(), s.timesteps)
    assert x.dtype == torch.float16 and torch.isfinite(x).all()


def test_node_times_are_the_planned_grid() -> None:
    scheduler = FewstepScheduler(solver="dpmpp_2m", final="t_min")
    with pytest.raises(RuntimeError, match="set_timesteps"):
        _ = scheduler.node_times
    scheduler.set_timesteps(6)
    times = scheduler.node_times
    assert len(times) == 7 and np.all(np.diff(times) < 0)
    # a one-evaluation solver evaluates at every node but the last; DDPM index i is the discrete time (i + 1) / 1000
    np.testing.assert_allclose(times[:-1] * 1000 - 1, scheduler.timesteps.double().numpy(), rtol=0, atol=1e-3)
