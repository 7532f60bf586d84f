"""fewstep: training-free fast samplers for diffusion and flow-matching models."""

from . import adaptive, guard, guidance, model, noise, schedules, solvers, spacing
from .adaptive import sample_adaptive
from .calibrate import compute_ems
from .guard import DivergenceError, DivergenceWarning
from .model import CallCount, Denoiser, NonFiniteModelOutput, Threshold, TimeShift
from .predictions import PREDICTIONS
from .resume import Checkpoint, SamplingState
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
    "guard",
    "guidance",
    "model",
    "noise",
    "schedules",
    "solvers",
    "spacing",
]
