"""Adaptive step-size sampling: embedded pairs and step-size controllers (docs/adaptive.md).

The registered solvers of :mod:`fewstep.solvers` spend an exact number of model evaluations; the methods here
choose their steps from an error estimate and spend what the tolerances need, so they live apart, with their own
entry point :func:`sample_adaptive`.
"""

from .controller import PIDController, StepTo
from .pairs import METHODS, DormandPrince54, DPMSolver12, DPMSolver23, EmbeddedPair, GottaGoFast
from .sample import AdaptiveStats, sample_adaptive

__all__ = [
    "METHODS",
    "AdaptiveStats",
    "DPMSolver12",
    "DPMSolver23",
    "DormandPrince54",
    "EmbeddedPair",
    "GottaGoFast",
    "PIDController",
    "StepTo",
    "sample_adaptive",
]
