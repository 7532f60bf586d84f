"""The check a posterior rule makes at its run's first evaluation: the measurement fits the state."""

from __future__ import annotations

from torch import Tensor

from ..model.point import Point
from ..model.stack import Evaluation, Prediction
from .measurement import Measurement


def checked(measurement: Measurement, evaluate: Evaluation) -> Evaluation:
    """``evaluate``, after ``measurement.check(x)`` on the first state it is asked about (before any model call)."""
    done = False

    def first(x: Tensor, p: Point) -> Prediction:
        nonlocal done
        if not done:
            check_fit(measurement, x)
            done = True
        return evaluate(x, p)

    return first


def check_fit(measurement: Measurement, x: Tensor) -> None:
    """``measurement.check(x)``, with an operator that cannot act on ``x`` at all reported as a ValueError too."""
    try:
        measurement.check(x)
    except RuntimeError as err:  # e.g. a matrix whose width is not the state's dimension
        raise ValueError(
            f"y: the measurement's operator cannot act on a state of shape {tuple(x.shape)} ({err}); build the "
            "measurement for the sampled shape"
        ) from None


def require_measurement(measurement: object) -> Measurement:
    """``measurement`` itself, or a TypeError naming the argument."""
    if not isinstance(measurement, Measurement):
        raise TypeError(
            f"measurement: must be a fewstep.posterior measurement (Linear, Mask, Operator, Nonlinear), got "
            f"{type(measurement).__name__}"
        )
    return measurement
