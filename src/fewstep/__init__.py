"""fewstep: training-free fast samplers for diffusion and flow-matching models.

The public names below are loaded on first use (PEP 562): ``import fewstep`` itself imports neither torch nor any
submodule, so that the command line's ``fewstep --help`` and ``fewstep solvers`` start at once, and the first
``fewstep.sample`` (or any other name) imports what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import (
        adaptive,
        adjoint,
        guard,
        guidance,
        integrations,
        inversion,
        langevin,
        model,
        noise,
        posterior,
        reducers,
        schedules,
        solvers,
        spacing,
    )
    from .adaptive import sample_adaptive
    from .bench.generation import generate
    from .calibrate import compute_ems
    from .calibrate_dc import compute_dc_ratios
    from .guard import DivergenceError, DivergenceWarning
    from .inversion import invert
    from .model import CallCount, Denoiser, NonFiniteModelOutput, Threshold, TimeShift
    from .predictions import PREDICTIONS
    from .resume import Checkpoint, SamplingState
    from .sampling import sample, sample_with_logprob
    from .schedules import EDM, VE, VP, Cosine, DiscreteVP, Flow, Interpolant, NoiseSchedule
    from .trajectory import Trajectory
    from .tune import TunedSampler, tune

__version__ = "0.1.0"

#: The submodules that are public names of the package.
_SUBMODULES = (
    "adaptive",
    "adjoint",
    "guard",
    "guidance",
    "integrations",
    "inversion",
    "langevin",
    "model",
    "noise",
    "posterior",
    "reducers",
    "schedules",
    "solvers",
    "spacing",
    "tune",
)

#: Each other public name -> the submodule that defines it.
_NAMES = {
    "sample_adaptive": "adaptive",
    "compute_ems": "calibrate",
    "compute_dc_ratios": "calibrate_dc",
    "generate": "bench.generation",
    "DivergenceError": "guard",
    "DivergenceWarning": "guard",
    "invert": "inversion",
    "CallCount": "model",
    "Denoiser": "model",
    "NonFiniteModelOutput": "model",
    "Threshold": "model",
    "TimeShift": "model",
    "PREDICTIONS": "predictions",
    "Checkpoint": "resume",
    "SamplingState": "resume",
    "sample": "sampling",
    "sample_with_logprob": "sampling",
    "EDM": "schedules",
    "VE": "schedules",
    "VP": "schedules",
    "Cosine": "schedules",
    "DiscreteVP": "schedules",
    "Flow": "schedules",
    "Interpolant": "schedules",
    "NoiseSchedule": "schedules",
    "Trajectory": "trajectory",
    "TunedSampler": "tune",
}

__all__ = [
    "sample",
    "sample_adaptive",
    "invert",
    "compute_ems",
    "compute_dc_ratios",
    "generate",
    "adaptive",
    "sample_with_logprob",
    "Trajectory",
    "Denoiser",
    "CallCount",
    "TimeShift",
    "Threshold",
    "NonFiniteModelOutput",
    "DivergenceWarning",
    "DivergenceError",
    "Checkpoint",
    "SamplingState",
    "PREDICTIONS",
    "NoiseSchedule",
    "VP",
    "Cosine",
    "DiscreteVP",
    "VE",
    "EDM",
    "Flow",
    "Interpolant",
    "adjoint",
    "guard",
    "guidance",
    "integrations",
    "inversion",
    "langevin",
    "model",
    "noise",
    "posterior",
    "reducers",
    "schedules",
    "solvers",
    "spacing",
    "tune",
    "TunedSampler",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (and keep it, so this runs once per name)."""
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f".{name}", __name__)
    elif name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
