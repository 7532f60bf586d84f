"""``smc``: sequential Monte Carlo over the reverse diffusion, K particles per prompt run as one batch.

Each of the B prompts has K particles, run together as one batch of ``B*K`` rows through the model-call stack
(:mod:`fewstep.posterior.smc.chain`). At node ``i`` the network gives ``x0_hat_i``, the potential
(:mod:`fewstep.posterior.smc.potentials`) a log-potential ``log G_i``, and the particle's log-weight grows by

    log w += log G_i + log p(x_i | x_{i-1}) - log q(x_i | x_{i-1})

where ``p`` is the prior's transition ``N(m, c^2 I)`` of a stochastic solver (SDE-DPM-Solver++(2M) or DDPM) and
``q`` the proposal: ``p`` itself, or, for a twisting potential (TDS), the prior's step times the linearised twist
(:mod:`fewstep.posterior.smc.twist`; ``N(m + c^2 grad_x v(x0_hat(x)), c^2 I)`` to first order, Wu et al. 2023, eq.
10; the twist of the node the step starts from, or with ``TDS(lookahead=True)`` that of the node it lands on, whose
``(alpha, sigma)`` the engine hands on). Before every step, a prompt whose effective sample size ``ESS / K`` is
below the step's threshold (``ess_threshold``, raised at high noise by ``resample_schedule="noise"``:
:mod:`fewstep.posterior.smc.resampling`) resamples its particles (the Markov proposal needs only the current state
permuted) and its weights become uniform; the others keep theirs (Doucet & Johansen 2009, "A Tutorial on Particle
Filtering and Smoothing", §3.5; Del Moral, Doucet & Jasra 2006, "Sequential Monte Carlo Samplers"). The weighted
particles ``(samples, exp(log_weights))`` estimate the target ``p(x) prod_i G_i`` (the tilt ``p(x) exp(v(x))`` for
the exact potentials), consistently as K grows. With ``qmc=True`` each step's resampling and proposal noise come
from one randomised QMC point set per prompt, the particles in Hilbert order (sequential quasi-Monte Carlo, Gerber &
Chopin 2015: :mod:`fewstep.posterior.smc.qmc`); the weights are unchanged.

Cost, exactly: the network is called once per node on the whole ``B*K`` batch, so ``calls.network`` = the steps
(the ``nfe`` asked for, per particle); a twisting potential adds one backward pass per stochastic step
(``calls.backward`` = steps - 1, the last step to the clean end being deterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...model import CallCount, Denoiser
from ...options import real_option
from ...schedules import NoiseSchedule
from ...spacing import SpacingLike
from .chain import Chain
from .potentials import Potential, as_potential, value_and_gradient
from .qmc import RQMC, hilbert_order, sqmc_ancestors
from .resampling import (
    batch_rows,
    check_resample_schedule,
    check_resampler,
    effective_sample_size,
    ess_thresholds,
    normalise,
    resampled_rows,
)
from .twist import TwistStep, twisted_step

__all__ = ["SMCResult", "smc"]


@dataclass(frozen=True)
class SMCResult:
    """The weighted particles of a run.

    ``samples``: ``(B, K, *sample_shape)``; ``log_weights``: ``(B, K)``, normalised per prompt (``logsumexp = 0``);
    ``ess``: ``(steps + 1, B)``, the effective sample size after each node's reweighting (row 0: the start);
    ``resampled``: ``(steps, B)`` bools, whether prompt b resampled before step i; ``calls``: the run's
    :class:`~fewstep.model.CallCount`.
    """

    samples: Tensor
    log_weights: Tensor
    ess: Tensor
    resampled: Tensor
    calls: CallCount

    @property
    def weights(self) -> Tensor:
        """Normalised weights ``(B, K)``."""
        return self.log_weights.exp()

    def expectation(self, values: Tensor) -> Tensor:
        """The weighted mean over particles of per-particle ``values`` ``(B, K, ...)``: shape ``(B, ...)``."""
        w = self.weights.to(values.dtype).reshape(*self.log_weights.shape, *([1] * (values.ndim - 2)))
        return (w * values).sum(1)


@dataclass
class _Particles:
    """Per-particle state between steps, permuted together when resampling (rows prompt-major)."""

    x: Tensor
    x0: Tensor
    eps: Tensor
    #: the data estimate at the previous node (the multistep proposal's history)
    prev: Tensor
    #: the twist's gradient at ``x`` (twisting potentials, before a stochastic step)
    grad: Tensor | None
    acc: Tensor
    stat: Tensor
    #: the node's value, until the potential's step consumes it
    value: Tensor | None = None
    #: the twist's curvature along ``grad`` (``None``: the first-order shift; :mod:`fewstep.posterior.smc.twist`)
    curvature: Tensor | None = None

    def take(self, rows: Tensor) -> _Particles:
        g = self.grad[rows] if self.grad is not None else None
        h = self.curvature[rows] if self.curvature is not None else None
        x, x0, eps, prev = self.x[rows], self.x0[rows], self.eps[rows], self.prev[rows]
        return _Particles(x, x0, eps, prev, g, self.acc[rows], self.stat[rows], curvature=h)


def check_threshold(ess_threshold: object) -> float:
    """``ess_threshold`` in [0, 1] (0: never resample, 1: every step)."""
    try:
        return real_option("ess_threshold", ess_threshold, high=1.0)
    except ValueError as err:
        raise ValueError(f"{err} (a fraction of K: 0 never resamples, 1 every step; 0.5 is usual)") from None


def smc(
    model: Callable[..., Tensor] | Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule | None = None,
    potential: Potential | Callable[[Tensor, float], Tensor] | None = None,
    nfe: int | None = None,
    spacing: SpacingLike | None = None,
    prediction: str = "auto",
    generator: torch.Generator | None = None,
    *,
    particles: int | None = None,
    steps: int | None = None,
    proposal: str = "dpmpp_2m_sde",
    resample: str = "systematic",
    ess_threshold: float = 0.5,
    resample_schedule: str = "noise",
    model_kwargs: Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
    qmc: bool = False,
) -> SMCResult:
    """Sequential Monte Carlo with K particles per prompt (module docstring), the arguments as :func:`fewstep.sample`.

    Args:
        model: the network ``model(x, time, **model_kwargs)`` or a :class:`~fewstep.Denoiser`.
        noise: the particles' start states, shape ``(B, K, *sample_shape)`` (e.g. ``torch.randn(B, K, D)`` for VP).
        schedule: the model's :class:`~fewstep.NoiseSchedule` (ignored for a Denoiser).
        potential: :class:`~fewstep.posterior.smc.TDS`, :class:`~fewstep.posterior.smc.FKSteering`,
            :class:`~fewstep.posterior.smc.Value` or a callable ``fn(x0_hat, sigma) -> (B*K,)`` (difference form).
        nfe: network calls per particle (= steps); or ``steps``. ``spacing``: as in :func:`fewstep.sample`
            (default ``"logsnr"``).
        generator: the proposal noise and resampling draws.
        particles: K, checked against ``noise.shape[1]`` when given.
        proposal: the Gaussian transition proposed from (:mod:`fewstep.posterior.smc.chain`): ``"dpmpp_2m_sde"``
            (default, second order) or ``"ddpm"``.
        resample: ``"systematic"`` (default), ``"multinomial"`` or ``"residual"``.
        ess_threshold: resample a prompt when its ``ESS / K`` falls below this (in [0, 1]; 0 never resamples).
        resample_schedule: ``"noise"`` (default): the threshold rises to 1 at high noise, where duplicates are
            re-diversified by the remaining steps, as ``1 - kappa_i (1 - ess_threshold)``, ``kappa_i = alpha_i^2 /
            (alpha_i^2 + sigma_i^2)``; ``"constant"``: ``ess_threshold`` at every step
            (:mod:`fewstep.posterior.smc.resampling`).
        model_kwargs: conditioning; tensors with B rows are repeated for each prompt's K particles.
        calls: a :class:`~fewstep.model.CallCount` to add the run's counts to.
        qmc: sequential quasi-Monte Carlo (:mod:`fewstep.posterior.smc.qmc`, Gerber & Chopin 2015): each step's
            resampling and proposal noise from one randomised QMC point set per prompt, the particles in Hilbert
            order; the weights as without it. Start from RQMC states too (:func:`~fewstep.posterior.smc.rqmc_normal`).
            It replaces the resampling scheme (``resample`` must stay ``"systematic"``).
    """
    scheme = check_resampler(resample)
    if not isinstance(qmc, bool):
        raise TypeError(f"qmc: must be True or False, got {qmc!r}")
    if qmc and scheme != "systematic":
        raise ValueError(
            f"resample: qmc=True resamples by its own sorted QMC points; leave resample at 'systematic', got {scheme!r}"
        )
    threshold = check_threshold(ess_threshold)
    if potential is None:
        raise TypeError("potential: required (TDS(measurement), FKSteering(reward), Value(fn) or a callable)")
    pot = as_potential(potential)
    check_resample_schedule(resample_schedule)
    chain = Chain.build(
        model, noise, schedule, nfe, steps, spacing, prediction, generator, model_kwargs, calls, particles, proposal
    )
    thresholds = ess_thresholds([chain.alpha_sigma(i) for i in range(chain.steps)], threshold, resample_schedule)
    b, k = chain.prompts, chain.particles
    start = noise.reshape(b * k, *noise.shape[2:]).to(chain.dtype).clone()
    pot = pot.bind(b, k, start)
    n = b * k
    nan = torch.full((n,), float("nan"), dtype=chain.dtype, device=start.device)
    state = _Particles(start, start, start, start, None, torch.zeros_like(nan), nan)
    log_w = torch.zeros(b, k, dtype=torch.float64, device=start.device)
    ess, flags = [], []
    points = RQMC(b, k, 1 + start[0].numel(), generator, start.device) if qmc else None
    try:
        state = _evaluate(chain, pot, state, start, 0)
        state, log_w = _reweight(pot, state, log_w, None, False)
        ess.append(effective_sample_size(log_w))
        for i in range(chain.steps):
            low = ess[-1] < thresholds[i] * k
            flags.append(low)
            z = None
            if points is not None:
                state, log_w, z = _qmc_resample(state, log_w, low, points)
            elif threshold > 0.0 and bool(low.any()):  # one host read per step; no draw when none resamples
                state, log_w = _resample(state, log_w, low, scheme, generator)
            mean = chain.mean(i, state.x, state.x0, state.eps, state.prev)
            c = chain.std(i)
            ratio = None
            if c > 0.0:
                z = chain.draw(i, mean) if z is None else z.to(mean.dtype).reshape(mean.shape)
                if state.grad is not None:
                    x, ratio = twisted_step(mean, c, state.grad, state.curvature, z)
                else:
                    x = mean + c * z
            else:
                x = mean
            final = i == chain.steps - 1
            if final:
                state = _final(pot, state, x)
            else:
                state = _evaluate(chain, pot, state, x, i + 1)
            state, log_w = _reweight(pot, state, log_w, ratio, final)
            ess.append(effective_sample_size(log_w))
    finally:
        chain.finish(state.x, calls)
    samples = state.x.reshape(noise.shape).to(noise.dtype)
    return SMCResult(samples, normalise(log_w), torch.stack(ess), torch.stack(flags), chain.calls)


def _evaluate(chain: Chain, pot: Potential, state: _Particles, x: Tensor, i: int) -> _Particles:
    """Node ``i``'s evaluation at ``x``: ``x0_hat``, ``eps_hat``, the value and (twisting, stochastic step next) its
    gradient through the network (one backward pass, counted), or a potential's ``stand_in_twist`` (a gradient
    without a backward pass: ``FKSteering(gradient=True)``)."""
    alpha, sigma = chain.alpha_sigma(i)
    if pot.twist and chain.std(i) > 0.0:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            x0, eps = chain.evaluate(leaf, i)
            twist = value_and_gradient(pot, leaf, x0, alpha, sigma, chain.alpha_sigma(i + 1))
        chain.calls.backward += 1
        x0, eps = x0.detach(), eps.detach()
        return _Particles(x, x0, eps, state.x0, twist.grad, state.acc, state.stat, twist.value, twist.curvature)
    with torch.no_grad():
        x0, eps = chain.evaluate(x, i)
    stand_in = getattr(pot, "stand_in_twist", None)  # a proposal gradient without a backward pass (FK steering)
    shift: TwistStep | None = stand_in(x0, alpha, sigma) if stand_in is not None and chain.std(i) > 0.0 else None
    if shift is not None:
        return _Particles(x, x0, eps, state.x0, shift.grad, state.acc, state.stat, shift.value)
    with torch.no_grad():
        value = pot.value(x0, alpha, sigma)
    return _Particles(x, x0, eps, state.x0, None, state.acc, state.stat, value)


def _final(pot: Potential, state: _Particles, x: Tensor) -> _Particles:
    """The clean end: the sample is ``x`` itself and its value the potential's at ``sigma = 0``."""
    with torch.no_grad():
        value = pot.value(x, 1.0, 0.0)
    return _Particles(x, x, state.eps, state.x0, None, state.acc, state.stat, value)


def _reweight(
    pot: Potential, state: _Particles, log_w: Tensor, ratio: Tensor | None, final: bool
) -> tuple[_Particles, Tensor]:
    """Apply the node's potential (and the proposal's density ratio) to the weights."""
    assert state.value is not None
    step = pot.step(state.value.to(state.acc.dtype), state.acc, state.stat, final)
    inc = step.log_g if ratio is None else step.log_g + ratio
    b, k = log_w.shape
    log_w = log_w + inc.to(log_w.dtype).reshape(b, k)
    new = _Particles(
        state.x, state.x0, state.eps, state.prev, state.grad, state.acc + step.log_g, step.stat, None, state.curvature
    )
    return new, log_w


def _resample(
    state: _Particles, log_w: Tensor, low: Tensor, scheme: str, generator: torch.Generator | None
) -> tuple[_Particles, Tensor]:
    """Resample the prompts flagged ``low`` (their weights become uniform); the others keep their particles."""
    rows = resampled_rows(log_w, low, scheme, generator)
    return state.take(rows), torch.where(low[:, None], torch.zeros_like(log_w), log_w)


def _qmc_resample(state: _Particles, log_w: Tensor, low: Tensor, points: RQMC) -> tuple[_Particles, Tensor, Tensor]:
    """SQMC (:mod:`fewstep.posterior.smc.qmc`): the particles in Hilbert order, the prompts flagged ``low``
    resampled at the sorted points' first coordinates (weights uniform), and the step's standard normal noise
    ``(B*K, D)`` from the points' other coordinates."""
    b, k = log_w.shape
    u = points.uniform()
    u = u.gather(1, u[..., 0].argsort(dim=1)[..., None].expand_as(u))
    order = hilbert_order(state.x.reshape(b, k, -1))
    idx = torch.where(low[:, None], sqmc_ancestors(log_w, order, u[..., 0]), order)
    log_w = torch.where(low[:, None], torch.zeros_like(log_w), log_w.gather(1, order))
    return state.take(batch_rows(idx)), log_w, torch.special.ndtri(u[..., 1:]).reshape(b * k, -1)
