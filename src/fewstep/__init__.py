"""fewstep: training-free fast samplers for diffusion and flow-matching models."""

from . import adaptive, noise, schedules, solvers, spacing
from .adaptive import sample_adaptive
from .denoiser import Denoiser, NonFiniteModelOutput, Threshold
from .predictions import PREDICTIONS
from .sampling import sample
from .schedules import EDM, VE, VP, Cosine, DiscreteVP, Flow, Interpolant, NoiseSchedule
from .trajectory import Trajectory, sample_with_logprob

__version__ = "0.1.0"

__all__ = [
    "sample",
    "sample_adaptive",
    "adaptive",
    "sample_with_logprob",
    "Trajectory",
    "Denoiser",
    "Threshold",
    "NonFiniteModelOutput",
    "PREDICTIONS",
    "NoiseSchedule",
    "VP",
    "Cosine",
    "DiscreteVP",
    "VE",
    "EDM",
    "Flow",
    "Interpolant",
    "noise",
    "schedules",
    "solvers",
    "spacing",
]
