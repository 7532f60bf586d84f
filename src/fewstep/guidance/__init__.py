"""Guidance rules: layers of the model-call stack between the solver and the network (docs/guidance.md).

A rule acts on the network's raw output (:class:`Guidance`, ``wrap(network) -> output``) or on the predictions at a
point (:class:`PredictionGuidance`, ``wrap_prediction(network, needs_eps) -> evaluation``); see
:mod:`fewstep.guidance.base`. Branches of one evaluation run as one batched network call where their conditioning
can be concatenated (:class:`Branches`), counted as one call and several branch evaluations. A new rule is one
module here; pass it as ``sample(..., guidance=rule)`` or ``Denoiser(guidance=)``.
"""

from .apg import AdaptiveProjectedGuidance
from .base import Guidance, GuidanceRule, PredictionGuidance
from .bidirectional import Bidirectional
from .branches import Branches
from .cfg import ClassifierFreeGuidance
from .cfg_pc import CFGPredictorCorrector
from .cfg_pp import CFGPlusPlus
from .compose import Composition
from .event import EventLoss, event_guidance
from .flow_steering import FlowSteering
from .gradient import LossGuidance
from .gradient_free import GradientFreeClassifierGuidance
from .one_way import OneWayDiffusion
from .perturbed import PerturbedGuidance
from .recurrence import SelfRecurrence
from .scale_schedule import ScaleSchedule
from .scheduled_cfg import ScheduledCFG
from .self_guidance import ObservationLoss, SelfGuidance
from .superposition import Superposition, SuperpositionStep
from .terms import Term

__all__ = [
    "AdaptiveProjectedGuidance",
    "Bidirectional",
    "Branches",
    "CFGPlusPlus",
    "CFGPredictorCorrector",
    "ClassifierFreeGuidance",
    "Composition",
    "EventLoss",
    "FlowSteering",
    "GradientFreeClassifierGuidance",
    "Guidance",
    "GuidanceRule",
    "LossGuidance",
    "ObservationLoss",
    "OneWayDiffusion",
    "PerturbedGuidance",
    "PredictionGuidance",
    "ScaleSchedule",
    "ScheduledCFG",
    "SelfGuidance",
    "SelfRecurrence",
    "Superposition",
    "SuperpositionStep",
    "Term",
    "event_guidance",
]
