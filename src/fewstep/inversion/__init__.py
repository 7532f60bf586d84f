"""Running samplers backwards: inversion of a sample to its latent, and exact round trips (docs/inversion.md)."""

from .bdia import BDIALatent, bdia_invert, bdia_sample
from .edict import CoupledState, edict_invert, edict_sample
from .edit_friendly import EditFriendlyNoise, edit_friendly_invert, edit_friendly_sample
from .invert import INVERTIBLE, invert

__all__ = [
    "INVERTIBLE",
    "invert",
    "BDIALatent",
    "bdia_invert",
    "bdia_sample",
    "CoupledState",
    "edict_invert",
    "edict_sample",
    "EditFriendlyNoise",
    "edit_friendly_invert",
    "edit_friendly_sample",
]
