"""Drop-in use of fewstep from diffusers pipelines and k-diffusion / ComfyUI sampler slots.

Neither diffusers nor k-diffusion is imported by ``import fewstep``; each integration module imports only
what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import comfyui, diffusers, kdiffusion

__all__ = ["comfyui", "diffusers", "kdiffusion"]


def __getattr__(name: str) -> Any:
    """``fewstep.integrations.kdiffusion`` / ``.diffusers`` after a plain ``import fewstep``: imported on first use."""
    if name in __all__:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
