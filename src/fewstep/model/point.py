"""``Point``: one time at which the model is evaluated, with everything the step loop needs precomputed."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..predictions import Affine


class Point(NamedTuple):
    """Schedule values at time ``t`` (``lam = log(alpha/sigma)``, ``dalpha``/``dsigma`` the time derivatives), the
    network's time input ``model_time`` (a batch-shaped tensor on the state's device) and the ``affine`` map from
    the network's output to ``(x0, eps)`` (:func:`fewstep.predictions.conversion`)."""

    t: float
    alpha: float
    sigma: float
    lam: float
    dalpha: float
    dsigma: float
    model_time: Tensor
    affine: Affine


class CorrectorPoint(Point):
    """A :class:`Point` at which a predictor-corrector solver asks for a corrector's evaluation (a Langevin move at the
    node's noise level) rather than a step of its integration. Its values are the node's own; a layer that treats
    the two kinds of request differently (CFG as a predictor-corrector, :mod:`fewstep.guidance.cfg_pc`) tests
    ``isinstance(point, CorrectorPoint)``, and every other layer sees an ordinary point."""

    __slots__ = ()

    @classmethod
    def of(cls, point: Point) -> CorrectorPoint:
        """The corrector's request at ``point``'s node."""
        return cls._make(point)
