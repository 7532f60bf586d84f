"""Exact conversions between what a network predicts and the (data, noise) pair every solver needs.

With ``x = alpha x0 + sigma eps`` each prediction type is an affine function of ``(x, out)``:

============== ============================== ===============================================
prediction     x0                             eps
============== ============================== ===============================================
epsilon        (x - sigma out) / alpha        out
sample         out                            (x - alpha out) / sigma
v_prediction   (alpha x - sigma out) / n2     (sigma x + alpha out) / n2,   n2 = alpha^2+sigma^2
score          (x + sigma^2 out) / alpha      -sigma out
velocity       (s' x - sigma out) / det       (alpha out - a' x) / det,     det = alpha s' - sigma a'
============== ============================== ===============================================

(``v = alpha eps - sigma x0`` as in Salimans & Ho; ``velocity = a' x0 + s' eps = dx/dt`` as in flow matching.)
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

from .options import suggestion

Prediction = Literal["epsilon", "sample", "v_prediction", "score", "velocity"]
PREDICTIONS: tuple[str, ...] = ("epsilon", "sample", "v_prediction", "score", "velocity")
#: Other names of the prediction types (diffusers' ``flow_prediction``, k-diffusion's denoiser = x0, ...).
PREDICTION_ALIASES = {
    "eps": "epsilon",
    "noise": "epsilon",
    "x0": "sample",
    "data": "sample",
    "denoised": "sample",
    "v": "v_prediction",
    "flow": "velocity",
    "flow_prediction": "velocity",
}


class Affine(NamedTuple):
    """``x0 = x0_x x + x0_out out`` and ``eps = eps_x x + eps_out out``."""

    x0_x: float
    x0_out: float
    eps_x: float
    eps_out: float


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        hint = suggestion(prediction, PREDICTIONS, PREDICTION_ALIASES)
        raise ValueError(f"prediction: unknown type {prediction!r}{hint}; choose one of {', '.join(PREDICTIONS)}")


def conversion(
    prediction: str, alpha: float, sigma: float, dalpha: float = 0.0, dsigma: float = 0.0, *, check: bool = True
) -> Affine:
    """The affine map from a model output of type ``prediction`` to (x0, eps) at noise level (alpha, sigma)
    (``check=False``: ``prediction`` is already known to be valid)."""
    if check:
        check_prediction(prediction)
    if prediction in ("epsilon", "score") and alpha <= 0:
        raise ValueError(
            f"prediction: {prediction!r} cannot recover x0 where alpha(t) = {alpha} (pure noise); "
            "use a t_max with alpha > 0, or a model that predicts 'velocity', 'v_prediction' or 'sample'"
        )
    if prediction == "epsilon":
        return Affine(1.0 / alpha, -sigma / alpha, 0.0, 1.0)
    if prediction == "score":
        return Affine(1.0 / alpha, sigma * sigma / alpha, 0.0, -sigma)
    if prediction == "sample":
        return Affine(0.0, 1.0, 1.0 / sigma, -alpha / sigma)
    if prediction == "v_prediction":
        n2 = alpha * alpha + sigma * sigma
        return Affine(alpha / n2, -sigma / n2, sigma / n2, alpha / n2)
    det = alpha * dsigma - sigma * dalpha
    if det == 0:
        raise ValueError("prediction: 'velocity' needs alpha sigma' - sigma alpha' != 0")
    return Affine(dsigma / det, -sigma / det, -dalpha / det, alpha / det)


def conversions(
    prediction: str, alpha: np.ndarray, sigma: np.ndarray, dalpha: np.ndarray, dsigma: np.ndarray
) -> list[Affine]:
    """:func:`conversion` at many noise levels at once (float64 arrays; the same arithmetic, elementwise)."""
    check_prediction(prediction)
    scalar = prediction == "velocity" or not ((alpha > 0).all() and (sigma > 0).all())
    if scalar:  # the per-level checks and messages of conversion()
        return [conversion(prediction, *v, check=False) for v in zip(alpha, sigma, dalpha, dsigma, strict=True)]
    n = len(alpha)
    if prediction == "epsilon":
        rows = ((1.0 / alpha).tolist(), (-sigma / alpha).tolist(), [0.0] * n, [1.0] * n)
    elif prediction == "score":
        rows = ((1.0 / alpha).tolist(), (sigma * sigma / alpha).tolist(), [0.0] * n, (-sigma).tolist())
    elif prediction == "sample":
        rows = ([0.0] * n, [1.0] * n, (1.0 / sigma).tolist(), (-alpha / sigma).tolist())
    else:  # v_prediction
        n2 = alpha * alpha + sigma * sigma
        rows = ((alpha / n2).tolist(), (-sigma / n2).tolist(), (sigma / n2).tolist(), (alpha / n2).tolist())
    return list(map(Affine._make, zip(*rows, strict=True)))  # _make: tuple.__new__, no per-row Python frame


def output_from(prediction: str, x0, eps, alpha: float, sigma: float, dalpha: float = 0.0, dsigma: float = 0.0):  # type: ignore[no-untyped-def]
    """The model output of type ``prediction`` that corresponds to (x0, eps): the inverse of :func:`conversion`.

    Works on tensors or arrays; used by the exact targets to act as a model of any type.
    """
    check_prediction(prediction)
    if prediction == "epsilon":
        return eps
    if prediction == "sample":
        return x0
    if prediction == "score":
        return -eps / sigma
    if prediction == "v_prediction":
        return alpha * eps - sigma * x0
    return dalpha * x0 + dsigma * eps
