"""Posterior sampling with a pretrained prior: measurements, posterior samplers and particle methods
(docs/posterior.md)."""

from .dps import DPS
from .langevin_dc import LangevinDC
from .measurement import Linear, Mask, Measurement, Nonlinear, Operator
from .pigdm import PiGDM
from .projection import Projection
from .red_diff import red_diff
from .smc import TDS, FKSteering, SMCResult, Value, rollover, smc, svdd

__all__ = ["Linear", "Mask", "Measurement", "Nonlinear", "Operator"]
__all__ += ["DPS", "LangevinDC", "PiGDM", "Projection", "red_diff"]
__all__ += ["FKSteering", "SMCResult", "TDS", "Value", "rollover", "smc", "svdd"]
