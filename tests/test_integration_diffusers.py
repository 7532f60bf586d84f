"""diffusers integration: FewstepScheduler inside real pipelines, against fewstep.sample and diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d, reference_solution

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import FewstepScheduler  # noqa: E402

SOLVERS = ["ddim", "dpmpp_2m", "dpmpp_3m", "dpm_solver_3", "heun", "dpmpp_2s", "euler"]


def tiny_unet() -> diffusers.UNet2DModel:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


class CallCounter:
    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(lambda *_: self._count())

    def _count(self) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def unet() -> diffusers.UNet2DModel:
    return tiny_unet()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize(
    ("solver", "spacing", "steps"), [(s, "logsnr", 7) for s in SOLVERS] + [("dpmpp_2m", "trailing", 6)]
)
def test_ddpm_pipeline_equals_fewstep_sample(unet, solver: str, spacing: str, steps: int, prediction: str) -> None:
    """num_inference_steps is the number of steps, as in diffusers: the pipeline spends the evaluations
    fewstep.sample spends on that many steps (Heun 2 N - 1, DPM-Solver-3 3 (N - 1) + 1, ...)."""
    base = diffusers.DDPMScheduler(beta_schedule="linear", prediction_type=prediction)
    scheduler = FewstepScheduler.from_config(base.config, solver=solver, spacing=spacing)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    counter = CallCounter(unet)
    with torch.no_grad():
        images = pipe(
            batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=steps, output_type="np"
        ).images
    pipeline_calls = counter.calls

    noise = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))  # what DDPMPipeline draws
    schedule = fewstep.DiscreteVP.linear()
    calls = fewstep.CallCount()
    with torch.no_grad():
        x = fewstep.sample(
            lambda x, t: unet(x, t).sample,
            noise,
            schedule,
            solver,
            steps=steps,
            spacing=spacing,
            prediction=prediction,
            calls=calls,
        )
    assert pipeline_calls == calls.nfe == len(scheduler.timesteps)
    expected = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver", [info.name for info in fewstep.solvers.available()])
def test_every_solver_runs_in_a_pipeline(unet, solver: str) -> None:
    """Each registered solver (stochastic ones with the pipeline's generator) runs 5 steps through DDPMPipeline,
    spending the evaluations the scheduler planned, and returns finite images."""
    scheduler = FewstepScheduler.from_config(diffusers.DDPMScheduler().config, solver=solver, spacing="logsnr")
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    counter = CallCounter(unet)
    with torch.no_grad():
        images = pipe(
            batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5, output_type="np"
        ).images
    assert scheduler.num_inference_steps == 5
    assert counter.calls == len(scheduler.timesteps) == scheduler.nfe and np.isfinite(images).all()


def test_scheduler_contract() -> None:
    s = FewstepScheduler(solver="dpm_solver_3", spacing="logsnr")
    s.set_timesteps(nfe=10)
    assert len(s.timesteps) == 10 and s.order == 3 and s.init_noise_sigma == 1.0
    assert torch.all(s.timesteps[:-1] > s.timesteps[1:]) or s.config.solver == "dpm_solver_3"
    x = torch.randn(2, 3)
    assert s.scale_model_input(x, s.timesteps[0]) is x
    # add_noise: alpha x0 + sigma eps at diffusers' integer timesteps equals DDPMScheduler's
    ddpm = diffusers.DDPMScheduler()
    x0, eps, ts = (
        torch.randn(4, 3, dtype=torch.float64),
        torch.randn(4, 3, dtype=torch.float64),
        torch.tensor([0, 10, 500, 999]),
    )
    torch.testing.assert_close(s.add_noise(x0, eps, ts), ddpm.add_noise(x0, eps, ts), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="solver"):
        FewstepScheduler(solver="nope")
    with pytest.raises(ValueError, match="nfe"):
        FewstepScheduler(solver="heun").set_timesteps(nfe=10)  # heun spends odd NFE with a final step to sigma = 0
    with pytest.raises(RuntimeError, match="set_timesteps"):
        FewstepScheduler().step(torch.zeros(1), 0, torch.zeros(1))


def test_scheduler_config_round_trip(tmp_path: Path) -> None:
    s = FewstepScheduler.from_config(
        diffusers.DDIMScheduler(beta_schedule="scaled_linear").config,
        solver="dpmpp_3m",
        solver_options={"d2_weight": "reference"},
    )
    s.save_config(tmp_path)
    cfg = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert cfg["solver"] == "dpmpp_3m" and cfg["beta_schedule"] == "scaled_linear"
    again = FewstepScheduler.from_pretrained(tmp_path)
    assert again.config.solver_options == {"d2_weight": "reference"}
    assert again.solver.d2_weight == "reference"


# --- Stable Diffusion shaped pipeline with tiny random components -------------------------------------------


def tiny_tokenizer(tmp_path: Path):  # a CLIP BPE tokenizer over single characters, written locally
    transformers = pytest.importorskip("transformers")
    chars = "abcdefghijklmnopqrstuvwxyz "
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars.strip():
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)


def test_stable_diffusion_pipeline_with_guidance(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(tmp_path)
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        )
    ).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    ).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).eval()
    sd_scheduler = diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=FewstepScheduler.from_config(sd_scheduler.config, solver="dpmpp_2m", spacing="logsnr"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    counter = CallCounter(unet)
    batch_sizes: list[int] = []
    unet.register_forward_pre_hook(lambda _m, args: batch_sizes.append(args[0].shape[0]))
    with torch.no_grad():
        out = pipe(
            "a cat",
            num_inference_steps=5,
            guidance_scale=7.5,
            height=16,
            width=16,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        )
    assert counter.calls == 5 and set(batch_sizes) == {2}  # conditional and unconditional in one batch
    assert out.images.shape == (1, 16, 16, 3) and np.isfinite(out.images).all()


# --- flow matching -----------------------------------------------------------------------------------------


def flow_model(target):
    """A velocity model called with diffusers' flow timestep t * 1000, as SD3/Flux transformers are."""
    inner = target.model(fewstep.Flow(), "velocity")
    return lambda x, timestep: inner(x, timestep / 1000.0)


def run_pipeline_loop(scheduler, model, noise: torch.Tensor, nfe: int) -> torch.Tensor:
    """The pipeline's loop, with exactly ``nfe`` evaluations."""
    if isinstance(scheduler, FewstepScheduler):
        scheduler.set_timesteps(nfe=nfe)
    else:  # diffusers' flow-matching Euler: one evaluation per step
        scheduler.set_timesteps(nfe)
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("nfe", [4, 10, 28])
def test_flow_euler_equals_flow_match_euler(shift: float, nfe: int) -> None:
    target = mixture_2d()
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ours = FewstepScheduler.from_config(theirs.config, solver="euler", spacing="uniform")
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(nfe))
    model = flow_model(target)
    x_theirs = run_pipeline_loop(theirs, model, noise, nfe)
    x_ours = run_pipeline_loop(ours, model, noise, nfe)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x_ours, x_theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_higher_order_solvers_are_closer_to_the_exact_answer(shift: float) -> None:
    """At 19 NFE on the 2-D mixture, fewstep's higher-order solvers through FewstepScheduler beat diffusers' own
    FlowMatchEulerDiscreteScheduler against the exact PF-ODE solution (Heun on diffusers' uniform grid, the
    lambda-based solvers on a logSNR grid: on a grid uniform in t their last lambda-step is huge)."""
    target = mixture_2d("default")
    model = flow_model(target)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = reference_solution(target, noise, 0.0, 1.0)

    def rmse(x: torch.Tensor) -> float:
        return float(((x - exact) ** 2).mean().sqrt())

    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    euler = rmse(run_pipeline_loop(theirs, model, noise, 19))
    for solver, spacing in [
        ("heun", "uniform"),
        ("dpmpp_2m", "logsnr"),
        ("dpmpp_3m", "logsnr"),
        ("dpm_solver_3", "logsnr"),
    ]:
        ours = FewstepScheduler.from_config(theirs.config, solver=solver, spacing=spacing)
        err = rmse(run_pipeline_loop(ours, model, noise, 19))
        assert err < 0.75 * euler, (solver, err, euler)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_named_betas_equal_diffusers_tables(beta_schedule: str) -> None:
    from fewstep.schedules.vp import named_betas

    theirs = diffusers.DDPMScheduler(beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012).betas
    ours = named_betas(beta_schedule, 1000, 0.00085, 0.012)
    np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=1e-5, atol=1e-7)  # diffusers' float32 tables
    with pytest.raises(ValueError, match="beta_schedule"):
        named_betas("sigmoid", 10)


def test_set_begin_index_continues_part_way_as_image_to_image_pipelines_do() -> None:
    """img2img: add noise at the k-th timestep, set_begin_index(k), run the rest: equals fewstep.sample on the
    remaining times from that state."""
    sched_cfg = diffusers.DDIMScheduler(beta_schedule="scaled_linear").config
    target = mixture_2d()
    s = FewstepScheduler.from_config(sched_cfg, solver="dpmpp_2m", spacing="logsnr")
    s.set_timesteps(10)
    k = 4
    x0 = target.sample(32, torch.Generator().manual_seed(0)).float()
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    x = s.add_noise(x0, noise, s.timesteps[k : k + 1])
    start = x.clone()
    model = target.model(s.schedule, "epsilon")
    s.set_begin_index(k)
    for t in s.timesteps[k:]:
        x = s.step(model(x, t.expand(32)), t, x).prev_sample
    times = s.schedule.t_of_index(s.timesteps[k:].double())
    expected = fewstep.sample(model, start, s.schedule, "dpmpp_2m", spacing=times)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)

    # a begin index inside a step (steps start at evaluations 0, 3, 6, ... at order 3) enters that step: its remaining
    # evaluations are first-order steps at their own times, so the loop runs exactly the pipeline's timesteps
    singlestep = FewstepScheduler.from_config(sched_cfg, solver="dpm_solver_3")
    singlestep.set_timesteps(9)
    singlestep.set_begin_index(4)
    x = singlestep.add_noise(x0, noise, singlestep.timesteps[4:5])
    calls = 0
    for t in singlestep.timesteps[4:]:
        x = singlestep.step(model(x, t.expand(32)), t, x).prev_sample
        calls += 1
    assert calls == len(singlestep.timesteps) - 4 and torch.isfinite(x).all()  # equality with fewstep.sample:
    # tests/test_diffusers_pipelines.py::test_flow_img2img_singlestep_equals_fewstep_sample


def test_stochastic_solver_in_a_pipeline_uses_the_pipeline_generator(unet) -> None:
    """DDPMPipeline passes its generator to step(): euler_ancestral then equals fewstep.sample with that generator,
    which drew the start noise first; the same seed reproduces the images."""
    scheduler = FewstepScheduler.from_config(diffusers.DDPMScheduler().config, solver="euler_ancestral")
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        a = pipe(
            batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps=6, output_type="np"
        ).images
        b = pipe(
            batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps=6, output_type="np"
        ).images
        gen = torch.Generator().manual_seed(5)
        noise = torch.randn((2, 3, 8, 8), generator=gen)
        x = fewstep.sample(
            lambda x, t: unet(x, t).sample, noise, fewstep.DiscreteVP.linear(), "euler_ancestral", nfe=6, generator=gen
        )
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


def test_a_diffusers_unet_is_a_model_as_it_is(unet) -> None:
    """``fewstep.sample(unet, ...)``: the UNet's output object gives its ``.sample`` (and ``return_dict=False``'s
    tuple its first element), the same run as with ``lambda x, t: unet(x, t).sample``."""
    schedule = fewstep.DiscreteVP.scaled_linear()
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = fewstep.sample(lambda x, t: unet(x, t).sample, noise, schedule, "dpmpp_2m", nfe=4)
        got = fewstep.sample(unet, noise, schedule, "dpmpp_2m", nfe=4)
        as_tuple = fewstep.sample(lambda x, t: unet(x, t, return_dict=False), noise, schedule, "dpmpp_2m", nfe=4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(as_tuple, want, rtol=0, atol=0)
