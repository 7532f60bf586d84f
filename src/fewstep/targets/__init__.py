"""Exact targets: data distributions with closed-form denoisers, and reference PF-ODE solutions."""

from .digits import digits_target
from .mixture import GaussianMixture, MixtureModel, mixture_2d
from .reference import reference_solution, reference_solution_from_time

__all__ = [
    "GaussianMixture",
    "MixtureModel",
    "mixture_2d",
    "digits_target",
    "reference_solution",
    "reference_solution_from_time",
]
