"""LD3 (Tong et al. 2025, "Learning to Discretize Denoising Diffusion ODEs"): the times learned by gradient descent
through the solver's run against the teacher's samples.

The times are the logits ``z`` of :class:`~fewstep.tune.params.LogSNRIncrements` (increments of logSNR through a
softmax, as in the paper); the run is differentiable in them by :mod:`fewstep.tune.backprop`. LD3's soft-teacher
loss lets the student start from a point near the teacher's noise: with ``x_T`` the calibration noise and
``Psi*(x_T)`` the teacher's sample,

    L(z) = min_{||x'_b - x_{T,b}|| <= r sigma_T sqrt(D)}  mean_b ||Psi_z(x'_b) - Psi*(x_{T,b})||^2 / D,

the slack ``r`` (:data:`SLACK`) relaxing an exact match a few steps cannot reach (the paper's remedy against
over-fitting the small calibration set); ``x'`` is learned with ``z`` by Adam (Kingma & Ba 2015) and projected on
its ball after each step. ``D`` is one sample's size. Each step spends ``nfe`` forward and ``nfe`` backward network
calls; every :data:`CHECK_EVERY` steps the times are scored without slack (:class:`~fewstep.tune.budget.Objective`,
``nfe`` calls), which keeps the best. The learning rate decays from :data:`LEARNING_RATE` to 0 on a cosine over the
steps the budget allows.

:func:`adam_spsa` is the derivative-free variant for runs without a time gradient (stochastic solvers, guidance
rules, thresholding): Adam on simultaneous-perturbation estimates (SPSA, Spall 1992)

    g = (L(z + c delta) - L(z - c delta)) / (2 c) * delta,    delta_i = +-1 at random,

two solver runs (``2 nfe`` network calls) per step, whatever the number of times.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .backprop import TimeDifferentiableRun
from .budget import Budget, BudgetExhausted, Objective, square_errors, weighted_mean
from .params import LogSNRIncrements

#: LD3's slack radius ``r`` (module docstring), relative to ``sigma(t_max) sqrt(D)``.
SLACK = 0.05

#: Adam's learning rate on the logits.
LEARNING_RATE = 0.05

#: Score the times without slack every this many steps (and after the last).
CHECK_EVERY = 4


def _loss(x: Tensor, target: Tensor, name: str, weights: Tensor | None = None) -> Tensor:
    """The objective's loss as a differentiable tensor: the mean square difference for ``"rmse"`` (the same
    minimiser, a smoother derivative), the mean per-sample distance for ``"mean_distance"``; each sample weighted
    by ``weights`` (a stratified batch's) where given."""
    squares = square_errors(x, target)
    if name == "mean_distance":
        return weighted_mean(torch.sqrt(squares + 1e-300), weights)
    return weighted_mean(squares, weights)


def learn_times(
    objective: Objective,
    params: LogSNRIncrements,
    start: np.ndarray,
    budget: Budget,
    lr: float | None = None,
    slack: float | None = None,
    max_steps: int = 10_000,
) -> int:
    """LD3 from logits ``start`` on ``objective``'s calibration noise and teacher samples (module docstring), until
    ``max_steps`` or the ``budget`` is spent; the best times found are ``objective.best``. Returns the steps taken.
    ``lr`` and ``slack`` default to :data:`LEARNING_RATE` and :data:`SLACK`. ValueError (before any call) when the
    run has no time gradient."""
    lr = LEARNING_RATE if lr is None else float(lr)
    slack = SLACK if slack is None else float(slack)
    run = TimeDifferentiableRun(objective.denoiser, objective.solver, objective.options, budget.calls)
    noise, target, nfe = objective.noise, objective.target.to(torch.float64), objective.nfe
    sched = objective.denoiser.schedule
    size = noise[0].numel()
    radius = slack * float(sched.sigma(sched.t_max)) * math.sqrt(size)
    z = torch.tensor(np.asarray(start, dtype=np.float64), requires_grad=True)
    shift = torch.zeros_like(noise, dtype=torch.float64, requires_grad=True)
    rates = [lr] + ([0.1 * radius / math.sqrt(size)] if radius > 0 else [])  # the ball's edge in about ten steps
    optimiser = torch.optim.Adam([{"params": [p], "lr": r} for p, r in zip((z, shift), rates, strict=False)])
    per_step = 2 * nfe + nfe / CHECK_EVERY
    total = max(1, min(max_steps, int((budget.left - nfe) // per_step)))  # the steps the budget allows
    steps = 0
    try:
        while steps < max_steps:
            budget.reserve(3 * nfe)  # this step and a last score of the times
            for group, base in zip(optimiser.param_groups, rates, strict=True):
                group["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * min(steps / total, 1.0)))  # cosine decay
            steps += 1
            optimiser.zero_grad()
            x = run.run(params.free_times(z), (noise.to(torch.float64) + shift).to(noise.dtype))
            loss = _loss(x, target, objective.loss, objective.weights)
            if not torch.isfinite(loss):
                budget.calls.backward += nfe  # counted as spent: the budget stays an upper bound
                break
            loss.backward()
            budget.calls.backward += nfe
            optimiser.step()
            with torch.no_grad():  # project the start points back onto their balls
                norms = shift.reshape(shift.shape[0], -1).norm(dim=1).clamp_min(1e-300)
                scale = torch.clamp(radius / norms, max=1.0).reshape(-1, *([1] * (shift.ndim - 1)))
                shift.mul_(scale)
            if steps % CHECK_EVERY == 0:
                objective.error(params.times(z.detach().numpy()))
        objective.error(params.times(z.detach().numpy()))
    except BudgetExhausted:
        pass
    return steps


def adam_spsa(
    f: Callable[[np.ndarray], float],
    start: np.ndarray,
    seed: int,
    lr: float = 0.1,
    perturbation: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    max_steps: int = 10_000,
) -> tuple[np.ndarray, float]:
    """The lowest point of ``f`` seen by Adam with SPSA gradients of ``log f`` from ``start`` (module docstring), and
    its value; stops after ``max_steps`` or when ``f`` raises :class:`BudgetExhausted`."""
    rng = np.random.default_rng(seed)
    z = np.asarray(start, dtype=np.float64).copy()
    m, v = np.zeros_like(z), np.zeros_like(z)
    best: tuple[np.ndarray, float] = (z.copy(), math.inf)

    def log_loss(x: np.ndarray) -> float:
        nonlocal best
        value = f(x)
        if value < best[1]:
            best = (x.copy(), value)
        return math.log(max(value, 1e-300)) if math.isfinite(value) else 50.0

    try:
        log_loss(z)
        for step in range(1, max_steps + 1):
            delta = rng.choice([-1.0, 1.0], size=z.size)
            c = perturbation / step**0.101  # SPSA's slowly shrinking perturbation
            diff = log_loss(z + c * delta) - log_loss(z - c * delta)
            grad = diff / (2.0 * c) * delta
            m = betas[0] * m + (1 - betas[0]) * grad  # Adam's moment estimates
            v = betas[1] * v + (1 - betas[1]) * grad**2
            m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
            z = z - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    except BudgetExhausted:
        pass
    return best
