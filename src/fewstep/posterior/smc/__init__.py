"""Particle methods over the reverse diffusion (docs/posterior.md): the SMC engine, its potentials (TDS twisting,
FK steering, user values), resampling, and soft value-based decoding."""

from .engine import SMCResult, smc
from .potentials import FK_KINDS, TDS, FKSteering, Potential, PotentialStep, Value
from .resampling import RESAMPLERS, effective_sample_size, resample_indices
from .strategies import rollover, svdd

__all__ = [
    "FK_KINDS",
    "RESAMPLERS",
    "TDS",
    "FKSteering",
    "Potential",
    "PotentialStep",
    "SMCResult",
    "Value",
    "effective_sample_size",
    "resample_indices",
    "rollover",
    "smc",
    "svdd",
]
