"""Inverting latents through a tiny random Stable Diffusion pipeline's UNet (built in code, no downloads), and
the pipeline with FewstepScheduler(final="t_min") walking them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from test_diffusers_pipelines import sd_parts  # noqa: E402

import fewstep  # noqa: E402
from fewstep.integrations.diffusers import FewstepScheduler  # noqa: E402
from fewstep.integrations.diffusers_inversion import invert_latents  # noqa: E402
from fewstep.inversion import FixedPoint, FixedPointReport  # noqa: E402

STEPS = 8


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder: Path = tmp_path_factory.mktemp("tokenizers")
    pipeline = diffusers.StableDiffusionPipeline(**sd_parts(folder))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def regenerate(pipe: Any, noise: torch.Tensor, embeds: torch.Tensor, solver: str, **call: Any) -> torch.Tensor:
    original = pipe.scheduler
    pipe.scheduler = FewstepScheduler.from_config(original.config, solver=solver, final="t_min")
    try:
        with torch.no_grad():
            out = pipe(prompt_embeds=embeds, latents=noise, num_inference_steps=STEPS, output_type="latent", **call)
    finally:
        pipe.scheduler = original
    return out.images  # type: ignore[no-any-return]


def reference(pipe: Any, noise: torch.Tensor, solver: str, guidance: dict[str, Any]) -> torch.Tensor:
    """fewstep.sample on the pipeline's UNet with the times FewstepScheduler(final="t_min") plans for STEPS."""
    scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver=solver, final="t_min")
    scheduler.set_timesteps(STEPS)
    times = torch.from_numpy(scheduler._plan.nodes.t.copy())

    def model(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return pipe.unet(x, t, **kwargs).sample  # type: ignore[no-any-return]

    d = scheduler.denoiser
    denoiser = fewstep.Denoiser(model, d.schedule, d.prediction, d.time_input, **guidance)
    return fewstep.sample(denoiser, noise, solver=solver, spacing=times, final="t_min")


def test_the_pipeline_walks_the_inverted_latents_back_and_refinement_helps(pipe: Any) -> None:
    # the UNet is random (not a score), so a few-step round trip is far from exact and the fixed-point iteration
    # does not contract on the noisiest steps; the recipe's pieces are what is checked
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt("a cat", "cpu", 1, True)
        errors = []
        for refine in (None, FixedPoint(6)):
            report = FixedPointReport() if refine is not None else None
            calls = fewstep.CallCount()
            noise = invert_latents(
                pipe, latents, STEPS, encoder_hidden_states=embeds, refine=refine, report=report, calls=calls
            )
            back = regenerate(pipe, noise, embeds, "ddim", guidance_scale=1.0)
            expected = reference(pipe, noise, "ddim", {"model_kwargs": {"encoder_hidden_states": embeds}})
            torch.testing.assert_close(back, expected, rtol=1e-5, atol=1e-5)
            errors.append(float((back - latents).norm() / latents.norm()))
        assert calls.network == STEPS * (2 + 6)
    assert report is not None and report.residual.shape == (STEPS, 1)
    assert bool((report.residual <= report.initial).all())
    assert float(report.residual[:4].max()) < 1e-5  # the less noisy steps converge
    assert errors[1] < 0.5 * errors[0], errors


def test_guided_inversion_calls_both_branches_in_one_call_and_walks_back(pipe: Any) -> None:
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt("a cat", "cpu", 1, True)
        calls = fewstep.CallCount()
        noise = invert_latents(
            pipe,
            latents,
            STEPS,
            solver="dpmpp_2m",
            encoder_hidden_states=embeds,
            guidance_scale=3.0,
            negative_encoder_hidden_states=negative,
            calls=calls,
        )
        back = regenerate(pipe, noise, embeds, "dpmpp_2m", guidance_scale=3.0, negative_prompt_embeds=negative)
        guidance = {
            "model_kwargs": {"encoder_hidden_states": embeds},
            "guidance_scale": 3.0,
            "uncond_kwargs": {"encoder_hidden_states": negative},
        }
        torch.testing.assert_close(back, reference(pipe, noise, "dpmpp_2m", guidance), rtol=1e-4, atol=1e-4)
    assert calls.network == STEPS and calls.branches == 2 * STEPS


def test_guidance_without_the_negative_embeddings_is_refused(pipe: Any) -> None:
    with pytest.raises(ValueError, match="negative_encoder_hidden_states"):
        invert_latents(pipe, torch.zeros(1, 4, 8, 8), STEPS, guidance_scale=7.5)
