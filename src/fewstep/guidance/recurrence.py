"""Universal guidance's self-recurrence (Bansal et al. 2023, "Universal Guidance for Diffusion Models", Alg. 1):
at each level, take the guided step and re-noise its result back to the level, ``repeats`` times, then step on.

Alg. 1 (for ``n = 1..k``): ``z_{t-1} = S(z_t, eps_hat, t)``; ``z_t <- sqrt(a_t/a_{t-1}) z_{t-1} + sqrt(1 - a_t/a_{t-1})
eps'``, ``eps' ~ N(0, I)``; the last ``z_{t-1}`` is kept. With ``S`` the DDIM step by ``h`` in log-SNR that is

    x <- alpha x0_hat(x) + sigma_t (rho eps_hat(x) + sqrt(1 - rho^2) z),     rho = e^{-h}

(:func:`fewstep.guidance.state_moves.renoise`), done ``repeats - 1`` times inside one request, each with the inner
rule's guided prediction, and the request is answered with the predictions at the final ``x``: a first-order CFG++
form (:data:`~fewstep.guidance.state_moves.MOVING_SOLVERS`) then takes the solver's own step from there, which is
Alg. 1's ``k``-th step. Every recurrence costs the inner rule's calls (one network call, two branches for CFG, plus
a backward pass for ``LossGuidance`` through the network), all counted in the run's :class:`~fewstep.CallCount`;
the solver's plan still counts one request per evaluation. To first order in ``h`` each recurrence is a Langevin
move with step ``sigma_t^2 h`` on the guided score (Alg. 1's recurrence is the sampler's step and back, i.e. ``h``
the run's step in log-SNR; ``h = inf`` re-noises the clean-sample prediction afresh). With ``h=None`` (the default)
``h`` is the run's own step: at each request the log-SNR gap ``|lambda_i - lambda_{i-1}|`` to the run's previous
request (the step that led to this level; on ``logsnr`` times exactly the run's step), so the recurrence follows the
run's grid at any NFE and spacing; the first request, with no step before it (or a step from pure noise, of infinite
length), makes no move. No move is made at pure
noise (``alpha = 0``) either, where the prediction carries no information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction
from .state_moves import (
    MOVING_SOLVERS,
    check_generator,
    check_h,
    check_inner_rule,
    check_moving_solver,
    drawer,
    inner_evaluation,
    renoise,
    rho_of,
)


@dataclass(frozen=True)
class SelfRecurrence:
    """``repeats`` guided steps per request with re-noising by ``h`` (log-SNR) in between (module docstring), on the
    evaluation of ``rule`` (None: the unguided network); ``h=None``: the run's own step, the log-SNR gap to the
    previous request. The re-noising draws from ``generator`` (None: torch's global generator). Run it with
    ``solver=`` one of ``ddim``, ``euler``, ``ddpm``, ``euler_ancestral``."""

    rule: object = None
    repeats: int = 2
    h: float | None = None
    generator: torch.Generator | None = None
    cfg_pp = True  # answers with the predictions at the moved state: the solvers' CFG++ forms step from it
    cfg_pp_solvers = MOVING_SOLVERS  # the forms that step from the implied state alone

    def __post_init__(self) -> None:
        check_inner_rule("rule", self.rule)
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(
                f"repeats: must be an integer >= 1 (1: the inner rule alone, no recurrence), got {self.repeats!r}"
            )
        if self.h is not None:
            check_h("h", self.h)
        check_generator(self.generator)

    def check_solver(self, solver: object, sde_window: object = None) -> None:
        check_moving_solver("SelfRecurrence", solver, sde_window)

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        inner = inner_evaluation(self.rule, network)
        fixed = None if self.h is None else rho_of(float(self.h))
        extra, draw = self.repeats - 1, drawer(self.generator)
        previous: list[float] = []  # the log-SNR of this run's previous request (one stack per run)

        def evaluate(x: Tensor, p: Point) -> Prediction:
            x0, eps = inner(x, p)
            rho = fixed
            if rho is None:  # the run's own step: the gap to the previous request (none at the first)
                gap = abs(p.lam - previous[0]) if previous else math.inf
                rho = math.exp(-gap) if math.isfinite(gap) else None
                previous[:] = [p.lam]
            if rho is None or p.alpha == 0.0 or p.sigma == 0.0:
                return x0, eps
            for _ in range(extra):
                assert eps is not None
                x = renoise(x0, eps, p, rho, draw(x))
                x0, eps = inner(x, p)
            return x0, eps

        return evaluate
