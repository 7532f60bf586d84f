"""Exact targets: data distributions with closed-form denoisers, and reference PF-ODE solutions."""

from .conditional import (
    GuidedMixture,
    LabelledMixture,
    LabelledMixtureModel,
    labelled_digits,
    labelled_mixture_2d,
    labelled_mixture_nd,
)
from .digits import digits_target
from .digits_unet import DigitsUNetConfig, DigitsUNetTarget, digits_unet_target
from .learned import LearnedTarget, TrainConfig, learned_reference, learned_target
from .mixture import GaussianMixture, MixtureModel, mixture_2d
from .posterior import (
    FullCovarianceMixture,
    QuadraticReward,
    as_full_covariance,
    measurement_matrix,
    mixture_posterior,
    reward_tilt,
)
from .presets import mixture_image, mixture_nd
from .reference import reference_solution, reference_solution_from_time

__all__ = [
    "GaussianMixture",
    "MixtureModel",
    "mixture_2d",
    "mixture_nd",
    "mixture_image",
    "digits_target",
    "DigitsUNetConfig",
    "DigitsUNetTarget",
    "digits_unet_target",
    "reference_solution",
    "reference_solution_from_time",
    "LearnedTarget",
    "TrainConfig",
    "learned_target",
    "learned_reference",
    "LabelledMixture",
    "LabelledMixtureModel",
    "GuidedMixture",
    "labelled_mixture_2d",
    "labelled_mixture_nd",
    "labelled_digits",
    "FullCovarianceMixture",
    "QuadraticReward",
    "as_full_covariance",
    "measurement_matrix",
    "mixture_posterior",
    "reward_tilt",
]
