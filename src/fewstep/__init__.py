"""fewstep: training-free fast samplers for diffusion and flow-matching models."""

from . import adaptive, guidance, model, noise, schedules, solvers, spacing
from .adaptive import sample_adaptive
from .calibrate import compute_ems
from .model import CallCount, Denoiser, NonFiniteModelOutput, Threshold, TimeShift
from .predictions import PREDICTIONS
from .sampling import sample, sample_with_logprob
from .schedules import EDM, VE, VP, Cosine, DiscreteVP, Flow, Interpolant, NoiseSchedule
from .trajectory import Trajectory

__version__ = "0.1.0"

__all__ = [
    "sample",
    "sample_adaptive",
    "compute_ems",
    "adaptive",
    "sample_with_logprob",
    "Trajectory",
    "Denoiser",
    "CallCount",
    "TimeShift",
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
    "guidance",
    "model",
    "noise",
    "schedules",
    "solvers",
    "spacing",
]
