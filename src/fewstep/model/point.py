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
