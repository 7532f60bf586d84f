"""BDIA: exact diffusion inversion by bi-directional integration approximation (Zhang, Lewis & Barber 2024,
"Exact Diffusion Inversion via Bi-directional Integration Approximation", ECCV).

On the nodes ``t_0 > ... > t_N`` (:mod:`fewstep.inversion.exact_run`), with ``Phi(x_k, t_k -> t_j)`` the DDIM map of
a prediction made at ``x_k``, BDIA-DDIM averages the forward step from ``t_k`` to ``t_{k+1}`` with the backward
step from ``t_k`` to ``t_{k-1}``:

    x_{k+1} = gamma x_{k-1} - gamma Phi(x_k, t_k -> t_{k-1}) + Phi(x_k, t_k -> t_{k+1}),   k = 1, ..., N-1,

after a first DDIM step ``x_1 = Phi(x_0, t_0 -> t_1)``. Every update uses one network call, at ``x_k``, and is
solved for ``x_{k-1}`` given the two later states:

    x_{k-1} = (x_{k+1} - Phi(x_k, t_k -> t_{k+1}) + gamma Phi(x_k, t_k -> t_{k-1})) / gamma,

so inversion is exact in exact arithmetic. The latent is the pair ``(x_0, x_1)``: :func:`bdia_invert` starts from
the data ``x_N`` with one DDIM inversion step ``x_{N-1} = Phi(x_N, t_N -> t_{N-1})`` and recovers the pair;
:func:`bdia_sample` from that pair returns ``x_N`` up to rounding. ``gamma = 1`` is the paper's choice for
DDIM; ``gamma -> 0`` tends to DDIM, whose steps are not invertible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..model import CallCount
from ..schedules import NoiseSchedule
from ..spacing import SpacingLike
from .exact_run import ExactRun, ModelLike, as_state, check_fraction, check_same, prepare_exact

GAMMA = 1.0


@dataclass(frozen=True)
class BDIALatent:
    """The two first states of a BDIA run: ``x`` at ``t_0 = t_max`` and ``x_next`` at ``t_1``."""

    x: Tensor
    x_next: Tensor


def bdia_sample(
    model: ModelLike,
    noise: Tensor | BDIALatent,
    schedule: NoiseSchedule | None = None,
    nfe: int = 20,
    spacing: SpacingLike = "logsnr",
    prediction: str = "auto",
    *,
    gamma: float = GAMMA,
    model_kwargs: Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
) -> Tensor:
    """BDIA-DDIM from ``noise`` at ``t_max`` (the first step plain DDIM; ``nfe`` network calls) or from a
    :class:`BDIALatent` (``nfe - 1`` calls) to ``t_min`` (module docstring)."""
    latent = noise if isinstance(noise, BDIALatent) else None
    x = latent.x if latent is not None else noise
    assert isinstance(x, Tensor)
    gamma = check_fraction(gamma, "gamma", GAMMA)
    run = prepare_exact(model, x, schedule, nfe, spacing, prediction, model_kwargs, calls, "noise")
    if latent is not None:
        check_same(latent.x, latent.x_next, "noise.x, noise.x_next")
        prev, cur = as_state(latent.x), as_state(latent.x_next)
    else:
        prev = as_state(x)
        x0, eps = run.predict(prev, 0)
        cur = run.ddim(x0, eps, 1)
    for k in range(1, run.steps):
        x0, eps = run.predict(cur, k)
        prev, cur = cur, _step(run, prev, x0, eps, k - 1, k + 1, gamma)
    return run.finish(cur)


def bdia_invert(
    model: ModelLike,
    x0: Tensor,
    schedule: NoiseSchedule | None = None,
    nfe: int = 20,
    spacing: SpacingLike = "logsnr",
    prediction: str = "auto",
    *,
    gamma: float = GAMMA,
    model_kwargs: Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
) -> BDIALatent:
    """The :class:`BDIALatent` from which :func:`bdia_sample` (same options) returns ``x0`` (the state at
    ``t_min``) exactly up to rounding; ``nfe`` network calls."""
    gamma = check_fraction(gamma, "gamma", GAMMA)
    run = prepare_exact(model, x0, schedule, nfe, spacing, prediction, model_kwargs, calls, "x0")
    n = run.steps
    later = as_state(x0)
    pred, eps = run.predict(later, n)
    cur = run.ddim(pred, eps, n - 1)
    for k in range(n - 1, 0, -1):
        pred, eps = run.predict(cur, k)
        # the sampling update solved for x_{k-1}: the same formula with the roles of the two neighbours swapped
        later, cur = cur, _step(run, later, pred, eps, k + 1, k - 1, 1.0 / gamma)
    run.finish(cur)
    return BDIALatent(cur, later)


def _step(run: ExactRun, other: Tensor, x0: Tensor, eps: Tensor, back: int, to: int, gamma: float) -> Tensor:
    """``gamma other - gamma Phi(x_k -> t_back) + Phi(x_k -> t_to)`` for the prediction ``(x0, eps)`` at ``x_k``.

    Sampling: ``other = x_{k-1}``, ``back = k-1``, ``to = k+1``. Inversion is the same map with the neighbours
    swapped and ``gamma -> 1/gamma``: ``x_{k-1} = x_{k+1}/gamma - Phi(x_k -> t_{k+1})/gamma + Phi(x_k -> t_{k-1})``."""
    nodes = run.nodes
    ca = float(nodes.alpha[to]) - gamma * float(nodes.alpha[back])
    cs = float(nodes.sigma[to]) - gamma * float(nodes.sigma[back])
    return (other * gamma).add_(x0, alpha=ca).add_(eps, alpha=cs)
