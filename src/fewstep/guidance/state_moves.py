"""Rules that move the state: the shared part of self-recurrence (:mod:`~fewstep.guidance.recurrence`), the
bidirectional sampler (:mod:`~fewstep.guidance.bidirectional`) and one-way diffusion (:mod:`~fewstep.guidance.one_way`).

A rule answers a request at the solver's state ``x``; it cannot assign the state. It can hand the solver a pair
``(x0_hat, eps_hat)`` whose *implied state* ``x' = alpha x0_hat + sigma_t eps_hat`` differs from ``x``, as CFG++ does
(:mod:`fewstep.guidance.cfg_pp`). The first-order CFG++ forms (:data:`MOVING_SOLVERS`: DDIM, Euler, DDPM, Euler
ancestral) step from the implied state, ``x_s = alpha_s x0_hat + c_eps eps_hat (+ c_z z)``, so a rule that answers
with the predictions at a moved state ``x'`` makes those solvers take their step from ``x'``: the state moves with
no solver knowing. The rules here carry the CFG++ marker (``cfg_pp = True``) and refuse every other solver
(:func:`check_moving_solver`): a multistep solver keeps ``(x - sigma_t eps_hat) / alpha`` in its history, which is
not a clean-sample estimate of the moved state.

The one move they share is the DDIM step by ``h`` in log-SNR from the point followed by the forward noising back to
the point's level (Song et al. 2021, DDIM eq. 12 at eta = 0; then ``q(x_t | x_s)``). In the scaled state ``x/alpha``
(noise level ``sigma = sigma_t/alpha_t``, ``sigma_s = sigma e^{-h}``) the step gives ``x0 + sigma_s eps`` and the
noising adds ``sqrt(sigma^2 - sigma_s^2) z``, so

    x' = alpha x0_hat + sigma_t (rho eps_hat + sqrt(1 - rho^2) z),      rho = e^{-h},  z ~ N(0, I)

(:func:`renoise`), which needs the schedule only at the point (``h = inf``: ``rho = 0``, the clean-sample prediction
noised afresh). To first order in ``h`` it is a Langevin move at the point's level with step ``sigma_t^2 h`` on the
evaluation's score (for the forward SDE ``dx = f x dt + g dW``, the ODE step down and the noising back up leave
``(g^2 / 2) s dt + g dW``): the reason why these loops sample the guided law at each level.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Converted, Evaluation
from .base import is_guidance_rule
from .cfg_pp import is_cfg_pp
from .rule_checks import finite_number

#: The solvers whose CFG++ form steps from the implied state ``alpha x0_hat + sigma_t eps_hat`` alone.
MOVING_SOLVERS = ("ddim", "euler", "ddpm", "euler_ancestral")

#: ``draw(like) -> z``: standard normal noise shaped like ``like`` (the rule's own generator).
Draw = Callable[[Tensor], Tensor]


def renoise(x0: Tensor, eps: Tensor, p: Point, rho: float, z: Tensor) -> Tensor:
    """``alpha x0 + sigma_t (rho eps + sqrt(1 - rho^2) z)``: the DDIM step by ``h = -log rho`` in log-SNR and the
    forward noising back to ``p``'s level (module docstring)."""
    return x0 * p.alpha + (eps * rho + z * math.sqrt(max(1.0 - rho * rho, 0.0))) * p.sigma


def check_h(name: str, h: object) -> float:
    """A log-SNR step ``h > 0`` (``math.inf`` allowed: the clean-sample prediction noised afresh)."""
    if isinstance(h, bool) or not isinstance(h, int | float):
        raise TypeError(f"{name}: must be a positive number (a log-SNR step, e.g. the run's step size), got {h!r}")
    value = float(h)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name}: must be > 0 (a log-SNR step; math.inf re-noises the clean sample afresh), got {h}")
    return value


def rho_of(h: float) -> float:
    """``e^{-h}`` (0 for ``h = inf``)."""
    return math.exp(-h) if math.isfinite(h) else 0.0


def check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: must be a torch.Generator or None, got {type(generator).__name__}")


def drawer(generator: torch.Generator | None) -> Draw:
    """Standard normal draws from ``generator`` (on its device, then moved to the state's), or torch's global one."""

    def draw(like: Tensor) -> Tensor:
        if generator is None:
            return torch.randn_like(like)
        z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=generator.device)
        return z.to(like.device)

    return draw


def check_inner_rule(name: str, rule: object) -> None:
    """``rule`` is None or a guidance rule that answers with a consistent pair (not a CFG++ or state-moving rule)."""
    if rule is None:
        return
    if not is_guidance_rule(rule):
        raise TypeError(f"{name}: must be a guidance rule (wrap or wrap_prediction) or None, got {type(rule).__name__}")
    if is_cfg_pp(rule):
        raise ValueError(
            f"{name}: {type(rule).__name__} already hands the solver a pair for its CFG++ form; give a rule whose "
            "x0_hat and eps_hat agree with the state (ClassifierFreeGuidance, ScheduledCFG, LossGuidance, ...)"
        )


def inner_evaluation(rule: object, network: Network) -> Evaluation:
    """The evaluation of ``rule`` (None: the network alone) with ``eps_hat``, as the model-call stack builds it."""
    if rule is None:
        return Converted(network, True)
    wrap_prediction = getattr(rule, "wrap_prediction", None)
    if callable(wrap_prediction):
        evaluation: Evaluation = wrap_prediction(network, True)
        return evaluation
    return Converted(rule.wrap(network), True)  # type: ignore[attr-defined]  # checked by check_inner_rule


def check_moving_solver(rule: str, solver: object, sde_window: object) -> None:
    """Refuse (ValueError) a solver that does not step from the implied state (module docstring)."""
    name = getattr(solver, "name", repr(solver))
    if name not in MOVING_SOLVERS:
        raise ValueError(
            f"solver: {rule} moves the state by answering with the predictions at the moved state, which only the "
            f"first-order CFG++ forms step from; choose one of {', '.join(MOVING_SOLVERS)} (e.g. 'ddim'), got {name!r}"
        )
    del sde_window  # the ancestral forms step from the implied state with or without their noise


def finite_positive(name: str, value: object) -> float:
    v = finite_number(name, value)
    if v <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    return v


def require_mask(name: str, measurement: object, what: str) -> None:
    """A TypeError naming ``name`` unless ``measurement`` is a :class:`fewstep.posterior.Mask` (imported here: the
    posterior package builds on the rules)."""
    from ..posterior.measurement import Mask

    if not isinstance(measurement, Mask):
        raise TypeError(
            f"{name}: must be a fewstep.posterior.Mask(y=..., mask=...) of {what}, got {type(measurement).__name__}"
        )
