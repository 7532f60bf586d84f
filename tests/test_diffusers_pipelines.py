"""FewstepScheduler inside diffusers' own pipelines, built in code from tiny random components (no downloads):
Stable Diffusion (text-to-image, image-to-image, 9-channel inpainting), SDXL, SD3 with and without dynamic shifting,
and Flux (custom sigmas with mu). In each, the pipeline's final latents equal ``fewstep.sample`` run on the same
network, start and times (to float32 rounding), with the evaluations diffusers' convention implies: the solver's
evaluations on ``num_inference_steps`` steps (on the steps left after ``strength`` for image-to-image).

The default suite runs a representative set of solvers; the full matrix, every registered solver in every
pipeline, is marked slow (``pytest -m slow``, which .ci/run runs after the default suite).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import fewstep

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from fewstep.integrations.diffusers import FewstepScheduler  # noqa: E402

STEPS = 4
#: one of each kind: multistep, two-evaluation (Heun, not lambda-based), singlestep, stochastic, corrector
REPRESENTATIVE = ["dpmpp_2m", "heun", "dpm_solver_3", "euler_ancestral", "unipc_bh2"]
ALL_SOLVERS = [info.name for info in fewstep.solvers.available()]
#: diffusers' convention for STEPS = 4 steps of text-to-image, (DDPM-style, flow): one evaluation per step; Heun
#: two, one on its last step to sigma = 0; DPM-Solver-3 three, one on the last step and, on a flow (alpha = 0 at
#: t = 1), one on the first
EVALUATIONS = {
    "dpmpp_2m": (4, 4),
    "heun": (7, 7),
    "dpm_solver_3": (10, 8),
    "euler_ancestral": (4, 4),
    "unipc_bh2": (4, 4),
}
# The networks are random, so the states of a few solvers grow large in four steps; the tests compare runs.
pytestmark = pytest.mark.filterwarnings("ignore::fewstep.DivergenceWarning")
SLOW = pytest.mark.slow  # the full pipeline x solver matrix: pytest -m slow
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
PROMPT = "a cat"
WORDS = "abcdefghijklmnopqrstuvwxyz"


# --- tiny components ----------------------------------------------------------------------------------------------


def clip_tokenizer(folder: Path) -> Any:
    """A CLIP BPE tokenizer over single characters, written to ``folder``."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in WORDS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def t5_tokenizer() -> Any:
    """A word-level fast tokenizer with T5's special tokens (T5's own needs a downloaded vocabulary)."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(["a", "cat", "dog"])}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=16
    )


def clip_encoder(projection: bool, vocab_size: int = 2 + 2 * len(WORDS)) -> Any:
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(config).eval()


def t5_encoder() -> Any:
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=8, d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=4)
    return transformers.T5EncoderModel(config).eval()


def vae(latent_channels: int = 4, **options: Any) -> Any:
    torch.manual_seed(0)
    blocks = options.pop("block_out_channels", (8, 16))
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        latent_channels=latent_channels,
        norm_num_groups=options.pop("norm_num_groups", 4),
        sample_size=16,
        **options,
    ).eval()


def sd_unet(in_channels: int = 4, **options: Any) -> Any:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2,
        norm_num_groups=4,
        **{"cross_attention_dim": 32, **options},
    ).eval()


def sd_parts(folder: Path, in_channels: int = 4) -> dict[str, Any]:
    return {
        "vae": vae(),
        "text_encoder": clip_encoder(projection=False),
        "tokenizer": clip_tokenizer(folder),
        "unet": sd_unet(in_channels),
        "scheduler": diffusers.PNDMScheduler(**SD_BETAS, skip_prk_steps=True),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def sdxl_parts(folder: Path) -> dict[str, Any]:
    return {
        "vae": vae(),
        "text_encoder": clip_encoder(projection=False),
        "text_encoder_2": clip_encoder(projection=True),
        "tokenizer": clip_tokenizer(folder),
        "tokenizer_2": clip_tokenizer(folder),
        "unet": sd_unet(
            cross_attention_dim=64,  # both encoders' hidden states, side by side
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop ids and the pooled projection
        ),
        "scheduler": diffusers.EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading"),
        "image_encoder": None,
        "feature_extractor": None,
        "add_watermarker": False,
    }


def sd3_parts(folder: Path, dynamic: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    ).eval()
    shifting = {"use_dynamic_shifting": True} if dynamic else {"shift": 3.0}
    return {
        "transformer": transformer,
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(**shifting),
        "vae": vae(shift_factor=0.0609, scaling_factor=1.5035),
        "text_encoder": clip_encoder(projection=True),
        "tokenizer": clip_tokenizer(folder),
        "text_encoder_2": clip_encoder(projection=True),
        "tokenizer_2": clip_tokenizer(folder),
        "text_encoder_3": t5_encoder(),
        "tokenizer_3": t5_tokenizer(),
    }


def flux_parts(folder: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,  # four packed latent channels per token
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    ).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(  # FLUX.1's own config
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
    )
    return {
        "scheduler": scheduler,
        "vae": vae(latent_channels=1, block_out_channels=(4,), norm_num_groups=1, shift_factor=0.0609),
        "text_encoder": clip_encoder(projection=False),
        "tokenizer": clip_tokenizer(folder),
        "text_encoder_2": t5_encoder(),
        "tokenizer_2": t5_tokenizer(),
        "transformer": transformer,
    }


# --- the cases: a pipeline, its call, its network and the reference run ------------------------------------------


@dataclass(frozen=True)
class Case:
    """A pipeline to build and call, and how fewstep.sample reproduces its run."""

    build: Callable[[Path], Any]
    call: dict[str, Any]
    network: str  # the pipeline's attribute holding the network
    flow: bool
    strength: float = 1.0  # image-to-image: the steps left are the last int(strength * steps)
    time_scale: float = 1.0  # the network's timestep is the scheduler's divided by this (Flux: 1000)


def image() -> torch.Tensor:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(11))


CASES = {
    "sd": Case(lambda d: diffusers.StableDiffusionPipeline(**sd_parts(d)), {"height": 16, "width": 16}, "unet", False),
    "sd_img2img": Case(
        lambda d: diffusers.StableDiffusionImg2ImgPipeline(**sd_parts(d)),
        {"image": image(), "strength": 0.5},
        "unet",
        False,
        strength=0.5,
    ),
    "sd_inpaint": Case(
        lambda d: diffusers.StableDiffusionInpaintPipeline(**sd_parts(d, in_channels=9)),
        {
            "image": image(),
            "mask_image": (torch.arange(16) < 8).float().expand(1, 1, 16, 16),
            "height": 16,
            "width": 16,
            "strength": 0.75,
        },
        "unet",
        False,
        strength=0.75,
    ),
    "sdxl": Case(
        lambda d: diffusers.StableDiffusionXLPipeline(**sdxl_parts(d)), {"height": 16, "width": 16}, "unet", False
    ),
    "sd3": Case(
        lambda d: diffusers.StableDiffusion3Pipeline(**sd3_parts(d, dynamic=False)),
        {"height": 16, "width": 16, "max_sequence_length": 16},
        "transformer",
        True,
    ),
    "sd3_dynamic": Case(
        lambda d: diffusers.StableDiffusion3Pipeline(**sd3_parts(d, dynamic=True)),
        {"height": 16, "width": 16, "max_sequence_length": 16},
        "transformer",
        True,
    ),
    "flux": Case(
        lambda d: diffusers.FluxPipeline(**flux_parts(d)),
        {"height": 8, "width": 8, "max_sequence_length": 16},
        "transformer",
        True,
        time_scale=1000.0,
    ),
}


class Recorder:
    """Records a network's first call (its inputs), its number of calls, the state of the pipeline's generator and
    of torch's global one at that first call, the arguments of the scheduler's set_timesteps, and whether the
    pipeline passes its generator to step() (SD3 and Flux do not: stochastic solvers then draw from torch's
    global generator)."""

    def __init__(self, network: torch.nn.Module, scheduler: FewstepScheduler, generator: torch.Generator):
        self.calls = 0
        self.first: tuple[tuple, dict] | None = None
        self.generator_state: torch.Tensor | None = None
        self.plan: dict[str, Any] = {}
        self.global_state = torch.get_rng_state()
        self.step_generator: bool | None = None
        self._generator = generator
        self.hook = network.register_forward_pre_hook(self._record, with_kwargs=True)
        set_timesteps = scheduler.set_timesteps

        @functools.wraps(set_timesteps)  # pipelines read its signature
        def recorded(*args: Any, **kwargs: Any) -> None:
            self.plan = dict(kwargs, args=args)
            set_timesteps(*args, **kwargs)

        scheduler.set_timesteps = recorded  # type: ignore[method-assign]
        step = scheduler.step

        @functools.wraps(step)
        def stepped(*args: Any, **kwargs: Any) -> Any:
            if self.step_generator is None:
                self.step_generator = kwargs.get("generator") is not None
            return step(*args, **kwargs)

        scheduler.step = stepped  # type: ignore[method-assign]

    def _record(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls += 1
        if self.first is None:
            self.first = (args, dict(kwargs))
            self.generator_state = self._generator.get_state()
            self.global_state = torch.get_rng_state()


def replay(network: torch.nn.Module, first: tuple[tuple, dict], channels: int, time_scale: float):
    """``model(x, time)``: the network called as the pipeline called it first, with the state and the time
    replaced (a 9-channel inpainting UNet keeps the mask and masked-image channels after the ``channels`` latent
    ones); and the start state."""
    args, kwargs = first
    positional = len(args) > 0  # UNets are called as unet(sample, t, ...); transformers by keyword
    sample = args[0] if positional else kwargs["hidden_states"]
    extra = sample[:, channels:] if sample.ndim == 4 and sample.shape[1] > channels else None

    def model(x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        x_in = torch.cat([x, extra], dim=1) if extra is not None else x
        t_in = time / time_scale if time_scale != 1.0 else time
        kw = dict(kwargs, return_dict=False)
        if positional:
            out = network(x_in, t_in, *args[2:], **kw)
        else:
            out = network(**dict(kw, hidden_states=x_in, timestep=t_in))
        return out[0]

    start = sample[:, :channels] if extra is not None else sample
    return model, start.clone()


def reference_run(case: Case, recorder: Recorder, model, start: torch.Tensor, solver: str, spacing: str):
    """fewstep.sample on the schedule of the pipeline's original config (built here, not by the scheduler),
    from the recorded start over the grid the pipeline asked for; returns the result and its CallCount."""
    calls = fewstep.CallCount()
    generator: torch.Generator | None = None
    if recorder.step_generator:  # the pipeline's generator, as it was when the loop began
        assert recorder.generator_state is not None
        generator = torch.Generator()
        generator.set_state(recorder.generator_state)
    else:  # torch's global generator, as it was when the loop began
        torch.set_rng_state(recorder.global_state)
    options: dict[str, Any] = {
        "generator": generator,
        "calls": calls,
        "prediction": "velocity" if case.flow else "epsilon",
    }
    if not case.flow:
        schedule = fewstep.DiscreteVP.scaled_linear()
        grid = fewstep.spacing.model_times(schedule, STEPS, spacing, steps_offset=1)
        kept = int(STEPS * case.strength)  # diffusers' get_timesteps: the last int(strength * steps) steps
        times = grid[STEPS - kept :].clone()
        assert recorder.first is not None
        first = float(schedule.t_of_index(recorder.first[0][1].double().reshape(-1)[0]))
        if abs(first - float(times[0])) > 1e-6 * float(times[0]):  # EDM's churn: the step evaluates above its node
            times[0] = first  # image-to-image noised the image to that time: the first step adds no noise
            options["sde_window"] = (float(times[1]), -math.inf)
        return fewstep.sample(model, start, schedule, solver, spacing=times, **options), calls
    plan = recorder.plan
    mu = plan.get("mu")
    if mu is not None and "sigmas" in plan:  # Flux: its own sigmas, shifted by exp(mu)
        sigmas = torch.as_tensor(plan["sigmas"], dtype=torch.float64)
        schedule = fewstep.Flow(t_min=1e-3)
        return fewstep.sample(
            model, start, schedule, solver, spacing=sigmas, shift=math.exp(mu), time_input=lambda t: t * 1000, **options
        ), calls
    # diffusers' smallest training time: 1/1000, shifted by a static shift s = 3 (g_s(u) = s u / (1 + (s - 1) u))
    shift, t_min = (math.exp(mu), 1e-3) if mu is not None else (3.0, 3.0 * 1e-3 / (1 + 2.0 * 1e-3))
    schedule = fewstep.Flow(t_min=t_min)
    return fewstep.sample(
        model,
        start,
        schedule,
        solver,
        steps=STEPS,
        spacing=spacing,
        shift=shift,
        time_input=lambda t: t * 1000,
        **options,
    ), calls


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each case's pipeline, built once (the scheduler is replaced per test)."""
    folder = tmp_path_factory.mktemp("tokenizers")
    built = {}
    for name, case in CASES.items():
        pipe = case.build(folder)
        pipe.set_progress_bar_config(disable=True)
        built[name] = pipe
    return built


def run_case(pipelines: dict[str, Any], name: str, solver: str) -> tuple[torch.Tensor, torch.Tensor, int, Any, Any]:
    """The pipeline's latents with ``solver``, fewstep.sample's on the same network, start and times, the
    pipeline's network calls, the reference's CallCount and the scheduler."""
    case, pipe = CASES[name], pipelines[name]
    original = pipe.scheduler
    scheduler = FewstepScheduler.from_config(original.config, solver=solver)
    pipe.scheduler = scheduler
    generator = torch.Generator().manual_seed(0)
    network = getattr(pipe, case.network)
    recorder = Recorder(network, scheduler, generator)
    try:
        with torch.no_grad():
            latents = pipe(
                PROMPT,
                num_inference_steps=STEPS,
                guidance_scale=1.0,
                generator=generator,
                output_type="latent",
                **case.call,
            ).images
        pipeline_calls = recorder.calls
        assert recorder.first is not None
        model, start = replay(network, recorder.first, 4, case.time_scale)
        with torch.no_grad():
            expected, calls = reference_run(case, recorder, model, start, solver, scheduler.config.spacing)
    finally:
        pipe.scheduler = original
        recorder.hook.remove()
    return latents, expected, pipeline_calls, calls, scheduler


def check_case(pipelines: dict[str, Any], name: str, solver: str) -> None:
    case = CASES[name]
    latents, expected, pipeline_calls, calls, scheduler = run_case(pipelines, name, solver)
    assert pipeline_calls == calls.nfe, (name, solver, pipeline_calls, calls.nfe)
    kept = int(STEPS * case.strength)
    assert scheduler.num_inference_steps == STEPS and len(scheduler.timesteps) - calls.nfe >= 0
    if case.strength == 1.0:
        assert calls.nfe == len(scheduler.timesteps)  # the evaluations of STEPS steps
        if solver in EVALUATIONS:
            assert calls.nfe == EVALUATIONS[solver][case.flow]
    else:
        assert calls.nfe == len(scheduler.timesteps) - (STEPS - kept) * scheduler.order
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("solver", REPRESENTATIVE)
@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_latents_equal_fewstep_sample(pipelines: dict[str, Any], name: str, solver: str) -> None:
    check_case(pipelines, name, solver)


@SLOW
@pytest.mark.parametrize("solver", [s for s in ALL_SOLVERS if s not in REPRESENTATIVE])
@pytest.mark.parametrize("name", list(CASES))
def test_every_solver_in_every_pipeline(pipelines: dict[str, Any], name: str, solver: str) -> None:
    check_case(pipelines, name, solver)


# --- image-to-image on a flow with singlestep solvers ------------------------------------------------------------

#: SD3 image-to-image: a flow whose first step (from alpha = 0) costs a singlestep solver one evaluation, so that
#: diffusers' ``begin_index = t_start * order`` can fall inside a step
SD3_IMG2IMG = Case(
    lambda d: diffusers.StableDiffusion3Img2ImgPipeline(**sd3_parts(d, dynamic=False)),
    {"image": image(), "max_sequence_length": 16},
    "transformer",
    True,
)


@pytest.fixture(scope="module")
def sd3_img2img(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pipe = SD3_IMG2IMG.build(tmp_path_factory.mktemp("tokenizers"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flow_tail_reference(model, start: torch.Tensor, solver: str, begin: float, stages: list[float], spacing: str):
    """fewstep.sample from the pipeline's start at time ``begin``: first-order (DDIM) steps over the entered step's
    remaining stage times ``stages`` down to the next grid node (a last stage on that node spends its evaluation
    without a move), then ``solver`` on the rest of the grid (SD3's static shift 3 and smallest training time, as in
    :func:`reference_run`); with the evaluations spent."""
    schedule = fewstep.Flow(t_min=3.0 * 1e-3 / (1 + 2.0 * 1e-3))
    grid = fewstep.spacing.model_times(schedule, STEPS, spacing, shift=3.0)
    calls = fewstep.CallCount()
    options: dict[str, Any] = {"prediction": "velocity", "time_input": lambda t: t * 1000, "calls": calls}
    later = grid[grid < begin * (1 - 1e-6)]
    x, idle = start, 0
    if stages and torch.isclose(grid, torch.tensor(stages[-1], dtype=grid.dtype), rtol=1e-6).any():
        # the entered step's last stage sits on the next node (r = 1): that evaluation is spent without a move
        stages, idle = stages[:-1], 1
    if stages:  # the step entered part-way: its evaluations left as first-order steps down to the next node
        nodes = [begin, *stages[1:], float(later[0])]
        x = fewstep.sample(model, x, schedule, "ddim", spacing=torch.tensor(nodes), final="t_min", **options)
    else:
        later = torch.cat([torch.tensor([begin], dtype=torch.float64), later])
    return fewstep.sample(model, x, schedule, solver, spacing=later, **options), calls.nfe + idle


@pytest.mark.parametrize("strength", [0.75, 0.5])
@pytest.mark.parametrize("solver", ["dpm_solver_2", "dpm_solver_3", "dpmpp_2s", "heun", "exp_heun_2_x0"])
def test_flow_img2img_singlestep_equals_fewstep_sample(sd3_img2img: Any, solver: str, strength: float) -> None:
    pipe = sd3_img2img
    original = pipe.scheduler
    scheduler = FewstepScheduler.from_config(original.config, solver=solver)
    pipe.scheduler = scheduler
    generator = torch.Generator().manual_seed(0)
    recorder = Recorder(pipe.transformer, scheduler, generator)
    try:
        with torch.no_grad():
            latents = pipe(
                PROMPT, num_inference_steps=STEPS, guidance_scale=1.0, generator=generator, output_type="latent",
                strength=strength, **SD3_IMG2IMG.call,
            ).images  # fmt: skip
        pipeline_calls = recorder.calls
        assert recorder.first is not None
        model, start = replay(pipe.transformer, recorder.first, 4, 1.0)
        begin_index = (STEPS - int(STEPS * strength)) * scheduler.order  # diffusers' get_timesteps
        times = (scheduler.timesteps.double() / 1000).tolist()
        starts = [e for e in range(len(times)) if e == 0 or scheduler._tail_at(scheduler._plan, e) is not None]
        inside = begin_index not in starts
        stage_end = min((e for e in starts if e > begin_index), default=len(times))
        stages = times[begin_index:stage_end] if inside else []
        with torch.no_grad():
            expected, evaluations = flow_tail_reference(
                model, start, solver, times[begin_index], stages, scheduler.config.spacing
            )
    finally:
        pipe.scheduler = original
        recorder.hook.remove()
    assert pipeline_calls == evaluations == len(times) - begin_index  # the evaluations diffusers' loop spends
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-5)
