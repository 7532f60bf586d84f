"""ComfyUI custom-sampling nodes: a ``SAMPLER`` for every fewstep solver and ``SIGMAS`` from fewstep's spacings.

The node classes follow ComfyUI's custom-sampler conventions (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``,
``CATEGORY``) and plug into ``SamplerCustom`` / ``SamplerCustomAdvanced``:

- ``FewstepSampler`` (solver) -> ``SAMPLER``: ComfyUI's ``KSAMPLER`` around the solver's k-diffusion-signature function
  (:data:`fewstep.integrations.kdiffusion.SAMPLERS`: the reference's options for ComfyUI's own names,
  ``extra_args["seed"]`` seeding the noise as ComfyUI does).
- ``FewstepCFGPPSampler`` (solver) -> ``SAMPLER``: a fewstep solver in its CFG++ form (Chung et al. 2024; the
  solvers with one, :data:`fewstep.integrations.kdiffusion.CFG_PP_SAMPLERS`): the guider's ``cfg`` is CFG++'s lam
  (typically in [0, 1]), and the unconditional estimate comes from ComfyUI's post-CFG hook, as for ComfyUI's own
  ``*_cfg_pp`` samplers.
- ``FewstepSigmas`` (model, steps, spacing) -> ``SIGMAS``: ``steps`` noise levels from the model's ``sigma_max`` to
  its ``sigma_min`` by a fewstep spacing (in EDM's sigma, as k-diffusion's grids are; in Flow's time t = sigma for
  a rectified-flow model, whose model sampling is ComfyUI's ``CONST``), then 0.

Only :meth:`FewstepSampler.get_sampler` imports ComfyUI (``comfy.samplers.KSAMPLER``); everything else is plain
fewstep, tested without ComfyUI. The package ``comfyui/fewstep_nodes`` of the repository re-exports the mappings for
ComfyUI's ``custom_nodes`` folder (docs/integrations.md, "ComfyUI").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..schedules import EDM, Flow
from ..solvers import available
from ..spacing import CONTINUOUS_SPACINGS, Spacing, model_times
from .kdiffusion import CFG_PP_SAMPLERS, SAMPLERS, is_rectified_flow

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "FewstepSampler", "FewstepSigmas", "sigmas_for"]
__all__ += ["FewstepCFGPPSampler"]

#: The spacings offered on sigma grids (diffusers' discrete ones need a DDPM table).
SIGMA_SPACINGS = list(CONTINUOUS_SPACINGS)


def sigmas_for(
    sigma_min: float,
    sigma_max: float,
    steps: int,
    spacing: str,
    flow: bool = False,
    options: Mapping[str, Any] | None = None,
) -> Tensor:
    """``steps`` noise levels from ``sigma_max`` down to ``sigma_min`` by ``spacing`` on EDM's sigma (``flow``: on
    Flow's time t = sigma, ``alpha = 1 - sigma``, for rectified-flow models), then 0 (``steps + 1`` float32 values,
    k-diffusion's convention). ``options``: the spacing's options (:data:`fewstep.spacing.SPACING_OPTIONS`)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: must be a positive integer, got {steps!r}")
    if spacing not in SIGMA_SPACINGS:
        raise ValueError(f"spacing: choose one of {', '.join(SIGMA_SPACINGS)}, got {spacing!r}")
    schedule = Flow(float(sigma_min), float(sigma_max)) if flow else EDM(float(sigma_min), float(sigma_max))
    levels = model_times(schedule, steps, Spacing.of(spacing, options))  # EDM's and Flow's time is sigma
    return torch.cat([levels.float(), levels.new_zeros(1).float()])


class FewstepSampler:
    """``SAMPLER`` node: a fewstep solver in ComfyUI's custom-sampling slot."""

    CATEGORY = "sampling/custom_sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        names = sorted(info.name for info in available())
        return {"required": {"solver": (names, {"default": "ipndm"})}}

    @staticmethod
    def sampler_function(solver: str) -> Any:
        """The solver's k-diffusion-signature function (what ComfyUI's ``KSAMPLER`` calls)."""
        if solver not in SAMPLERS:
            raise ValueError(f"solver: unknown name {solver!r}; choose one of {', '.join(sorted(SAMPLERS))}")
        return SAMPLERS[solver]

    def get_sampler(self, solver: str) -> tuple[Any]:
        try:
            from comfy.samplers import KSAMPLER
        except ImportError as err:
            raise ImportError("FewstepSampler: runs inside ComfyUI (comfy.samplers is not importable)") from err
        return (KSAMPLER(self.sampler_function(solver)),)


class FewstepCFGPPSampler:
    """``SAMPLER`` node: a fewstep solver in its CFG++ form (ComfyUI's ``cfg`` is lam)."""

    CATEGORY = "sampling/custom_sampling/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        return {"required": {"solver": (sorted(CFG_PP_SAMPLERS), {"default": "dpmpp_2m"})}}

    @staticmethod
    def sampler_function(solver: str) -> Any:
        """The solver's CFG++ k-diffusion-signature function (what ComfyUI's ``KSAMPLER`` calls)."""
        if solver not in CFG_PP_SAMPLERS:
            raise ValueError(
                f"solver: {solver!r} has no CFG++ form; choose one of {', '.join(sorted(CFG_PP_SAMPLERS))}"
            )
        return CFG_PP_SAMPLERS[solver]

    def get_sampler(self, solver: str) -> tuple[Any]:
        try:
            from comfy.samplers import KSAMPLER
        except ImportError as err:
            raise ImportError("FewstepCFGPPSampler: runs inside ComfyUI (comfy.samplers is not importable)") from err
        return (KSAMPLER(self.sampler_function(solver)),)


class FewstepSigmas:
    """``SIGMAS`` node: a fewstep spacing of the model's noise levels."""

    CATEGORY = "sampling/custom_sampling/schedulers"
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        return {
            "required": {
                "model": ("MODEL",),
                "steps": ("INT", {"default": 10, "min": 1, "max": 10000}),
                "spacing": (SIGMA_SPACINGS, {"default": "karras"}),
            }
        }

    def get_sigmas(self, model: Any, steps: int, spacing: str) -> tuple[Tensor]:
        sampling = model.get_model_object("model_sampling")  # ComfyUI's noise levels of the model
        flow = is_rectified_flow(sampling)
        return (sigmas_for(float(sampling.sigma_min), float(sampling.sigma_max), steps, spacing, flow),)


NODE_CLASS_MAPPINGS = {
    "FewstepSampler": FewstepSampler,
    "FewstepCFGPPSampler": FewstepCFGPPSampler,
    "FewstepSigmas": FewstepSigmas,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FewstepSampler": "fewstep sampler",
    "FewstepCFGPPSampler": "fewstep CFG++ sampler",
    "FewstepSigmas": "fewstep sigmas",
}
