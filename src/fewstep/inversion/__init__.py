"""Running samplers backwards: inversion of a sample to its latent, and exact round trips (docs/inversion.md)."""

from .bdia import BDIALatent, bdia_invert, bdia_sample
from .code_edit import code_edit, sdedit
from .edict import CoupledState, edict_invert, edict_sample
from .edit_friendly import EditFriendlyNoise, edit_friendly_invert, edit_friendly_sample
from .fixed_point import ONE_STEP, FixedPoint, FixedPointReport
from .invert import INVERTIBLE, invert

__all__ = [
    "INVERTIBLE",
    "invert",
    "ONE_STEP",
    "FixedPoint",
    "FixedPointReport",
    "BDIALatent",
    "bdia_invert",
    "bdia_sample",
    "CoupledState",
    "edict_invert",
    "edict_sample",
    "EditFriendlyNoise",
    "edit_friendly_invert",
    "edit_friendly_sample",
    "code_edit",
    "sdedit",
]
