"""Noise schedules ``x_t = alpha(t) x0 + sigma(t) eps``."""

from .base import NoiseSchedule
from .flow import Flow, Interpolant
from .mean_reverting import MeanReverting
from .ve import EDM, VE
from .vp import VP, Cosine, DiscreteVP, zero_terminal_snr

__all__ = [
    "NoiseSchedule",
    "VP",
    "Cosine",
    "DiscreteVP",
    "VE",
    "EDM",
    "Flow",
    "Interpolant",
    "MeanReverting",
    "zero_terminal_snr",
]
