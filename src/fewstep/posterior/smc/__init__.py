"""Particle methods over the reverse diffusion (docs/posterior.md): the SMC engine, its potentials (TDS twisting,
FK steering, user values), resampling, and soft value-based decoding, DriftLite's controlled drift, and particles for
inpainting twisted by the noised observation (``inpaint_smc``) and, in the singular basis of the operator, for
linear inverse problems (``linear_smc``)."""

from .driftlite import BASES, DRIFTS, driftlite, vcg_coefficients
from .engine import SMCResult, smc
from .inpaint import inpaint_smc
from .linear import linear_smc
from .potentials import FK_KINDS, TDS, TWIST_VARIANCES, FKSteering, Potential, PotentialStep, Value
from .qmc import rqmc_normal
from .resampling import RESAMPLE_SCHEDULES, RESAMPLERS, effective_sample_size, ess_thresholds, resample_indices
from .strategies import rollover, svdd

__all__ = [
    "BASES",
    "DRIFTS",
    "FK_KINDS",
    "RESAMPLERS",
    "RESAMPLE_SCHEDULES",
    "TDS",
    "TWIST_VARIANCES",
    "FKSteering",
    "Potential",
    "PotentialStep",
    "SMCResult",
    "Value",
    "driftlite",
    "effective_sample_size",
    "ess_thresholds",
    "inpaint_smc",
    "linear_smc",
    "resample_indices",
    "rollover",
    "rqmc_normal",
    "smc",
    "svdd",
    "vcg_coefficients",
]
