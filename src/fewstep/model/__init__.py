"""The model-call stack: from a solver's request ``(x, point)`` to the network and back (see :mod:`.stack`)."""

from .calls import CallCount
from .denoiser import TIME_INPUTS, Denoiser
from .network import Network, NonFiniteModelOutput
from .point import Point
from .stack import Evaluation, EvaluationWrapper, ModelStack, Prediction
from .threshold import Threshold
from .time_shift import TimeShift

__all__ = [
    "CallCount",
    "Denoiser",
    "Evaluation",
    "EvaluationWrapper",
    "ModelStack",
    "Network",
    "NonFiniteModelOutput",
    "Point",
    "Prediction",
    "Threshold",
    "TIME_INPUTS",
    "TimeShift",
]
