"""Inverting latents through a diffusers pipeline's network with :func:`fewstep.inversion.invert`.

::

    latents = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
    embeds, negative = pipe.encode_prompt(prompt, "cpu", 1, True)
    noise = invert_latents(pipe, latents, 50, solver="ddim", encoder_hidden_states=embeds)
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="ddim", final="t_min")
    again = pipe(prompt_embeds=embeds, latents=noise, num_inference_steps=50, guidance_scale=1.0).images

The schedule, prediction type and time input come from the pipeline's scheduler config
(:class:`~fewstep.integrations.diffusers.FewstepScheduler`), and the times are the ones ``FewstepScheduler`` plans
for ``num_inference_steps`` with ``final="t_min"``, increasing: the pipeline run above walks them back. Its result
equals ``latents`` up to the two runs' discretisation errors (the inversion section of docs/inversion.md), exactly
in the limit of ``refine=FixedPoint(...)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from ..inversion import FixedPoint, FixedPointReport, invert
from ..model import CallCount
from ..solvers import Solver
from .diffusers import FewstepScheduler


def invert_latents(
    pipe: Any,
    latents: Tensor,
    num_inference_steps: int = 50,
    *,
    solver: str | Solver = "ddim",
    encoder_hidden_states: Tensor | None = None,
    guidance_scale: float = 1.0,
    negative_encoder_hidden_states: Tensor | None = None,
    refine: FixedPoint | None = None,
    report: FixedPointReport | None = None,
    calls: CallCount | None = None,
    **scheduler_options: Any,
) -> Tensor:
    """The noise latents from which ``pipe`` with a ``FewstepScheduler(solver, final="t_min")`` on
    ``num_inference_steps`` steps (and the same ``scheduler_options``) returns ``latents``.

    ``pipe`` has a ``unet`` (called as ``unet(x, t, encoder_hidden_states=...)``) and a ``scheduler``;
    ``guidance_scale != 1`` runs classifier-free guidance with ``negative_encoder_hidden_states`` (both halves in
    one call); ``refine``/``report``/``calls`` are :func:`fewstep.inversion.invert`'s."""
    if not hasattr(pipe, "unet") or not hasattr(pipe, "scheduler"):
        raise TypeError(f"pipe: must be a diffusers pipeline with a unet and a scheduler, got {type(pipe).__name__}")
    if guidance_scale != 1.0 and negative_encoder_hidden_states is None:
        raise ValueError("negative_encoder_hidden_states: needed for guidance_scale != 1 (pipe.encode_prompt's second)")
    name = solver if isinstance(solver, str) else solver.name
    scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver=name, final="t_min", **scheduler_options)
    scheduler.set_timesteps(num_inference_steps)
    times = scheduler.node_times[::-1].copy()
    unet = pipe.unet

    def network(x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return unet(x, t, **kwargs).sample  # type: ignore[no-any-return]

    cond = {} if encoder_hidden_states is None else {"encoder_hidden_states": encoder_hidden_states}
    uncond = None
    if guidance_scale != 1.0:
        uncond = {"encoder_hidden_states": negative_encoder_hidden_states}
    denoiser = dataclasses.replace(
        scheduler.denoiser, model=network, model_kwargs=cond, guidance_scale=guidance_scale, uncond_kwargs=uncond
    )
    return invert(denoiser, latents, solver=solver, spacing=times, refine=refine, report=report, calls=calls)


__all__ = ["invert_latents"]
