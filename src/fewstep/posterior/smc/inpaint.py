"""``inpaint_smc``: particles for inpainting, twisted by the observation noised to each node's level.

For a mask measurement ``y = M x0 + n`` (``n ~ N(0, s^2)`` on the observed entries; ``s = 0``, noiseless, allowed),
the state at node ``i`` is ``x_i = alpha_i x0 + sigma_i eps``. Noiseless, its observed entries are, given ``y``,
``N(alpha_i y, sigma_i^2)``: the forward process run on the observation (the pseudo-observations of SMCDiff, Trippe et
al. 2023, "Diffusion Probabilistic Modeling of Protein Backbones in 3D for the Motif-Scaffolding Problem", and of
MCGdiff, Cardoso, Janati, Le Corff & Moulines 2024, "Monte Carlo Guided Denoising Diffusion Models for Bayesian
Linear Inverse Problems"). The twist at node ``i`` divides that law by the observed entries' own marginal, both for a
stand-in prior ``N(0, S^2 I)`` (``S = data_std``), which makes it that prior's ``p_i(y | x_i)`` exactly:

    log g_i(x) = sum_observed [ log N(x; alpha_i mu, v_i) - log N(x; 0, u_i) ]
               = sum_observed [ -a_i x^2 / 2 + b_i x + c_i ]

    mu = S^2 y / (S^2 + s^2),   v_i = sigma_i^2 + alpha_i^2 S^2 s^2 / (S^2 + s^2),   u_i = alpha_i^2 S^2 + sigma_i^2,
    a_i = 1/v_i - 1/u_i > 0,    b_i = alpha_i mu / v_i

(``x0 | y`` of the stand-in is ``N(mu, S^2 s^2 / (S^2 + s^2))``). The noise variance ``s^2`` may differ from entry
to entry (:func:`~fewstep.posterior.smc.linear_smc` runs this in a matrix's singular basis, where it does): every
formula here holds entry by entry. Without the division the intermediate target ``p_i(x)
g_i(x)`` would have the prior's observed marginal times the conditional's; with it, about the conditional's.
``data_std=None``: no division, ``mu = y``, ``v_i = sigma_i^2 + alpha_i^2 s^2`` (the plain pseudo-observation
twist).

Being Gaussian in the observed entries, the twist multiplies the proposal's step ``N(m, c^2 I)``
(:mod:`fewstep.posterior.smc.chain`) exactly: the observed entries are drawn from

    N(m + c^2 r / (1 + a c^2),  c^2 / (1 + a c^2)),   r = b - a m   (the twist's slope at m),

the unobserved ones from the prior's step, and the incremental weight depends on the state before the step only
(the locally optimal proposal of a particle filter):

    log w += log Z_i(x_i) - log g_i(x_i),
    log Z_i = log g_{i+1}(m) + sum_observed [ c^2 r^2 / (2 (1 + a c^2)) - log(1 + a c^2) / 2 ].

The chain's last step to the clean end is deterministic, landing on ``m`` (the data estimate); there the target's
potential is the likelihood itself. Noisy: the step is the chain's own and the weight ``log N(y; M m, s^2) - log
g_{N-1}``. Noiseless: the observed entries are set to ``y`` (reproduced exactly), the others to ``m``'s, and the
weight is ``log N(y; M m, w) - log g_{N-1}``: the last step taken as ``N(m, w)`` in the observed entries, ``w = S^2 q
/ (S^2 + q)``, ``q = sigma^2 / alpha^2`` at the last node, the spread of ``x0`` given that node's state for data of
scale ``S`` (``q`` itself for ``data_std=None``).

The weighted particles target that chain's posterior as K grows, whatever the twists; the twists decide how many
particles that takes. Without resampling (``ess_threshold=0``, the default) each prompt's particles keep every mode
they reach until the end, where the weights tell the modes apart by the observed entries' spread, which a chain feels
only at low noise, after it has chosen its mode (docs/posterior.md measures resampling at any level as worse).
Cost: ``calls.network`` = the steps (``nfe``), on the ``B*K`` batch; no backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...guidance.loss_steps import posterior_variance
from ...guidance.rule_checks import finite_number
from ...model import CallCount, Denoiser
from ...schedules import NoiseSchedule
from ...spacing import SpacingLike
from ..measurement import Mask, Measurement
from .chain import Chain
from .engine import SMCResult, check_threshold
from .resampling import (
    check_resample_schedule,
    check_resampler,
    effective_sample_size,
    ess_thresholds,
    normalise,
    resampled_rows,
)

__all__ = ["inpaint_smc"]


@dataclass(frozen=True)
class _Twist:
    """``log g(x) = sum(mask * (-a x^2 / 2 + b x + c))`` (module docstring): ``a`` shaped like one sample, ``b`` and
    ``c`` like one batch of states."""

    a: Tensor
    b: Tensor
    c: Tensor

    def log(self, x: Tensor, mask: Tensor) -> Tensor:
        return (mask * (-0.5 * self.a * x * x + self.b * x + self.c)).flatten(1).sum(1)


class Observation:
    """The bound observation: ``mask`` shaped like one sample, ``y`` like the ``B*K`` batch, ``s2`` the noise
    variance of each entry (one sample's shape; a mask's ``noise_std^2`` everywhere, entry-wise in the SVD basis of
    :func:`~fewstep.posterior.smc.linear_smc`)."""

    def __init__(self, mask: Tensor, y: Tensor, s2: Tensor, noisy: bool, data_std: float | None):
        self.mask, self.y, self.s2, self.noisy = mask, mask * y, s2, noisy
        self.observed = self.mask.bool()
        self.data_var = None if data_std is None else data_std * data_std

    @classmethod
    def of_mask(
        cls, measurement: Mask, prompts: int, particles: int, like: Tensor, data_std: float | None
    ) -> Observation:
        shape = tuple(like.shape[1:])
        try:
            mask = torch.broadcast_to(measurement.mask.to(like), shape)
        except RuntimeError:
            raise ValueError(
                f"mask: shape {tuple(measurement.mask.shape)} does not broadcast to the samples' {shape}"
            ) from None
        y = measurement.y.to(like)
        if y.ndim < 1 or y.shape[0] not in (1, prompts) or tuple(y.shape[1:]) != shape:
            raise ValueError(
                f"y: need shape (1 or {prompts} prompts, *{shape}) for samples of shape {shape}, got {tuple(y.shape)}"
            )
        y = y if y.shape[0] == 1 else y.repeat_interleave(particles, dim=0)
        s2 = torch.full_like(mask, measurement.noise_std**2)
        return cls(mask, y, s2, measurement.noise_std > 0.0, data_std)

    def twist(self, alpha: float, sigma: float) -> _Twist:
        """``g`` at a node with these schedule values (``sigma > 0``)."""
        if self.data_var is None:
            shrink, spread = torch.ones_like(self.s2), self.s2
        else:  # x0 | y for data N(0, S^2): mean shrink * y, variance spread
            shrink = self.data_var / (self.data_var + self.s2)
            spread = shrink * self.s2
        centre = (alpha * shrink) * self.y
        v = sigma * sigma + alpha * alpha * spread
        c = -0.5 * torch.log(2.0 * math.pi * v) - centre * centre / (2.0 * v)
        if self.data_var is None:
            return _Twist(1.0 / v, centre / v, c)
        u = alpha * alpha * self.data_var + sigma * sigma
        return _Twist(1.0 / v - 1.0 / u, centre / v, c + 0.5 * math.log(2.0 * math.pi * u))

    def likelihood(self, x0: Tensor, var: Tensor | float) -> Tensor:
        """``log N(y; M x0, var)`` over the observed entries (``var`` a number or one per entry)."""
        r = self.mask * (self.y - x0)
        var_t = torch.as_tensor(var, dtype=x0.dtype, device=x0.device)
        log_norm = (self.mask * torch.log(2.0 * math.pi * var_t)).sum()
        return -(r.square() / (2.0 * var_t)).flatten(1).sum(1) - 0.5 * log_norm


def inpaint_smc(
    model: Callable[..., Tensor] | Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule | None = None,
    measurement: Measurement | None = None,
    nfe: int | None = None,
    spacing: SpacingLike | None = None,
    prediction: str = "auto",
    generator: torch.Generator | None = None,
    *,
    particles: int | None = None,
    steps: int | None = None,
    proposal: str = "dpmpp_2m_sde",
    data_std: float | None = 1.0,
    resample: str = "systematic",
    ess_threshold: float = 0.0,
    resample_schedule: str = "constant",
    model_kwargs: Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
) -> SMCResult:
    """K particles per prompt for an inpainting mask, noiseless or noisy (module docstring), the arguments as
    :func:`~fewstep.posterior.smc.smc`.

    Args:
        measurement: a :class:`~fewstep.posterior.Mask` (``noise_std >= 0``); ``y`` with one row per prompt or one
            for all.
        noise: the particles' start states ``(B, K, *sample_shape)``.
        data_std: the data's scale ``S`` in the twist's stand-in for the prior's marginal (default 1, for
            normalised data), or ``None`` for no stand-in (the plain noised-observation twist).
        proposal: ``"dpmpp_2m_sde"`` (default) or ``"ddpm"``.
        ess_threshold: resample a prompt when its ``ESS / K`` falls below this (default 0: never; module docstring);
            ``resample`` (scheme) and ``resample_schedule`` as for :func:`~fewstep.posterior.smc.smc`.

    Returns the weighted particles (:class:`~fewstep.posterior.smc.SMCResult`); with a noiseless mask every particle's
    observed entries equal ``y`` exactly.
    """
    if not isinstance(measurement, Mask):
        got = "nothing" if measurement is None else type(measurement).__name__
        raise TypeError(
            f"measurement: inpaint_smc takes a Mask (inpainting), got {got}; for a Linear one use linear_smc, for "
            "other measurements smc(..., TDS(measurement))"
        )

    def bind(prompts: int, particles: int, like: Tensor) -> Observation:
        return Observation.of_mask(measurement, prompts, particles, like, data_std)

    return run_twisted(
        model, noise, schedule, bind, nfe=nfe, spacing=spacing, prediction=prediction, generator=generator,
        particles=particles, steps=steps, proposal=proposal, data_std=data_std, resample=resample,
        ess_threshold=ess_threshold, resample_schedule=resample_schedule, model_kwargs=model_kwargs, calls=calls,
    )  # fmt: skip


def run_twisted(
    model: Callable[..., Tensor] | Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule | None,
    bind: Callable[[int, int, Tensor], Observation],
    *,
    nfe: int | None,
    spacing: SpacingLike | None,
    prediction: str,
    generator: torch.Generator | None,
    particles: int | None,
    steps: int | None,
    proposal: str,
    data_std: float | None,
    resample: str,
    ess_threshold: float,
    resample_schedule: str,
    model_kwargs: Mapping[str, Any] | None,
    calls: CallCount | None,
) -> SMCResult:
    """The particle run of :func:`inpaint_smc` for the observation ``bind(B, K, rows)`` makes (checked, with every
    option, before the first model call)."""
    if data_std is not None and finite_number("data_std", data_std) <= 0:
        raise ValueError(f"data_std: must be > 0 (the data's scale, 1 for normalised data) or None, got {data_std}")
    scheme = check_resampler(resample)
    threshold = check_threshold(ess_threshold)
    check_resample_schedule(resample_schedule)
    chain = Chain.build(
        model, noise, schedule, nfe, steps, spacing, prediction, generator, model_kwargs, calls, particles, proposal
    )
    b, k = chain.prompts, chain.particles
    x = noise.reshape(b * k, *noise.shape[2:]).to(chain.dtype).clone()
    obs = bind(b, k, x)
    mask = obs.mask
    thresholds = ess_thresholds([chain.alpha_sigma(i) for i in range(chain.steps)], threshold, resample_schedule)
    twist = obs.twist(*chain.alpha_sigma(0))
    log_w = twist.log(x, mask).to(torch.float64).reshape(b, k)
    ess, flags = [effective_sample_size(log_w)], []
    try:
        x0, eps = chain.evaluate(x, 0)
        prev = x0
        for i in range(chain.steps):
            low = ess[-1] < thresholds[i] * k
            flags.append(low)
            if threshold > 0.0 and bool(low.any()):  # one host read per step; none when never resampling
                rows = resampled_rows(log_w, low, scheme, generator)
                x, x0, eps, prev = x[rows], x0[rows], eps[rows], prev[rows]
                log_w = torch.where(low[:, None], torch.zeros_like(log_w), log_w)
            mean = chain.mean(i, x, x0, eps, prev)
            before = twist.log(x, mask)
            if i == chain.steps - 1:
                x, inc = _last_step(chain, obs, mean, i, data_std)
            else:
                twist = obs.twist(*chain.alpha_sigma(i + 1))
                x, inc = _twisted_step(chain, twist, obs, mean, i)
                prev = x0
                x0, eps = chain.evaluate(x, i + 1)
            log_w = log_w + (inc - before).to(log_w.dtype).reshape(b, k)
            ess.append(effective_sample_size(log_w))
    finally:
        chain.finish(x, calls)
    samples = x.reshape(noise.shape).to(noise.dtype)
    return SMCResult(samples, normalise(log_w), torch.stack(ess), torch.stack(flags), chain.calls)


def _twisted_step(chain: Chain, twist: _Twist, obs: Observation, mean: Tensor, i: int) -> tuple[Tensor, Tensor]:
    """Step ``i`` from the prior's step times the next node's twist (exact product), and ``log Z_i``."""
    mask = obs.mask
    c2 = chain.std(i) ** 2
    z = chain.draw(i, mean)
    slope = twist.b - twist.a * mean  # r = d log g / dx at the mean
    damp = 1.0 + twist.a * c2
    observed = mean + (c2 / damp) * slope + torch.sqrt(c2 / damp) * z
    x = torch.where(obs.observed, observed, mean + math.sqrt(c2) * z)
    log_z = twist.log(mean, mask) + (mask * (c2 / (2.0 * damp)) * slope * slope).flatten(1).sum(1)
    log_z = log_z - 0.5 * (mask * torch.log(damp)).sum()
    return x, log_z


def _last_step(chain: Chain, obs: Observation, mean: Tensor, i: int, data_std: float | None) -> tuple[Tensor, Tensor]:
    """The deterministic step to the clean end, weighted by the likelihood (module docstring)."""
    if obs.noisy:
        return mean, obs.likelihood(mean, obs.s2)
    alpha, sigma = chain.alpha_sigma(i)
    level = sigma / alpha if alpha > 0.0 else math.inf  # a one-step run from pure noise
    spread = level * level if data_std is None else posterior_variance(level, data_std)
    x = torch.where(obs.observed, obs.y, mean)
    if math.isinf(spread):  # no spread known: every particle's likelihood is the same
        return x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    return x, obs.likelihood(mean, spread)
