"""Potentials of the SMC engine (:mod:`fewstep.posterior.smc.engine`): what reweights the particles at each node.

The engine runs the reverse chain ``x_{T} -> x_{T-1} -> ... -> x_0`` over the nodes ``i = 0 .. N`` (node ``N`` the
clean end). At every node a potential turns the particle's data estimate ``x0_hat_i`` into a **value**
``v_i`` (per particle) and a log-potential ``log G_i`` that multiplies its weight. The intermediate targets are
``gamma_i(x_{0..i}) ∝ p(x_{0..i}) prod_{j <= i} G_j`` (Del Moral 2004, Feynman-Kac models; Singhal et al. 2025,
"A General Framework for Inference-Time Scaling and Steering of Diffusion Models", eq. 3-5), so the weighted
particles target ``p(x) prod_j G_j`` at the end. The final target is the tilt ``p(x) exp(v_N(x))`` exactly when the
product of the potentials along every path is ``exp(v_N(x_0))``:

- **difference** (twisting): ``log G_i = v_i - v_{i-1}`` (``v_{-1} = 0``), a telescoping product; ``v_i`` acts as the
  twisting function ``log h_i(x_i)`` of Wu et al. 2023 and the tilt is exact for any intermediate values.
- **max**, **sum** (FK steering's other potentials): ``log G_i = max_{j <= i} v_j`` or ``sum_{j <= i} v_j``. Their
  product is not ``exp(v_N)``: as in the paper they are heuristics, unless ``exact=True`` (the default here), which
  makes the last potential ``v_N - sum_{j < N} log G_j`` along the particle's own path, so that the product is again
  ``exp(v_N(x_0))`` and the target is the tilt (the intermediate targets, which decide where particles are
  resampled, stay the paper's).

A potential holds, per particle, the sum of the log-potentials its path received (``acc``) and its running
statistic (``stat``: the running max or sum, nan before the first node); the engine permutes both with the particles when it resamples.

Potentials given here: :class:`TDS` (a measurement's likelihood, twisted as in the twisted diffusion sampler),
:class:`FKSteering` (a reward), :class:`Value` (any user function, difference form).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ...guidance.loss_steps import posterior_variance
from ...guidance.rule_checks import finite_number
from ...options import real_option, suggestion
from ..measurement import Measurement

__all__ = ["FK_KINDS", "FKSteering", "Potential", "PotentialStep", "TDS", "Value", "as_potential"]

#: FK steering's kinds of potential
FK_KINDS = ("difference", "max", "sum")


@dataclass(frozen=True)
class PotentialStep:
    """One node's ``log_g`` (the log-potential per particle, shape ``(N,)``) and the updated running ``stat``."""

    log_g: Tensor
    stat: Tensor


@runtime_checkable
class Potential(Protocol):
    """What the engine asks a potential (module docstring).

    ``twist``: whether the proposal is shifted by the gradient of the value through the network (TDS), one backward
    pass per stochastic step. ``bind(prompts, particles, like)`` returns the potential for a run of
    ``prompts * particles`` rows shaped like ``like`` (a measurement's observations repeated per particle; shape
    errors raised here, before any model call). ``value(x0, alpha, sigma)`` is ``v_i`` per particle at a node with
    these schedule values (``sigma = 0`` at the clean end, where ``x0`` is the sample); it must be differentiable in
    ``x0`` when ``twist``. ``step(value, acc, stat, final)`` is the node's :class:`PotentialStep`.
    """

    @property
    def twist(self) -> bool: ...

    def bind(self, prompts: int, particles: int, like: Tensor) -> Potential: ...

    def value(self, x0: Tensor, alpha: float, sigma: float) -> Tensor: ...

    def step(self, value: Tensor, acc: Tensor, stat: Tensor, final: bool) -> PotentialStep: ...


def _difference(value: Tensor, acc: Tensor, stat: Tensor) -> PotentialStep:
    """``log G_i = v_i - v_{i-1}``: the path's accumulated log-potential is its previous value."""
    return PotentialStep(value - acc, stat)


def _check_values(name: str, v: Tensor, n: int) -> Tensor:
    if not isinstance(v, Tensor) or v.shape != (n,):
        got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"{name}: must return one value per particle, shape ({n},), got {got}")
    return v


@dataclass(frozen=True)
class Value:
    """A user's value function ``fn(x0_hat, sigma) -> (N,)`` in the difference (twisting) form: the weights
    telescope and the weighted particles target ``p(x) exp(fn(x, 0))`` exactly (as the particles grow), for any
    intermediate values. ``sigma`` is the node's noise level (0 at the clean end). ``twist=True`` also shifts the
    proposal by the value's gradient through the network (then ``fn`` must be differentiable)."""

    fn: Callable[[Tensor, float], Tensor]
    twist: bool = False

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"potential: must be callable as fn(x0_hat, sigma) -> (N,), got {type(self.fn).__name__}")

    def bind(self, prompts: int, particles: int, like: Tensor) -> Value:
        return self

    def value(self, x0: Tensor, alpha: float, sigma: float) -> Tensor:
        return _check_values("potential", self.fn(x0, sigma), x0.shape[0])

    def step(self, value: Tensor, acc: Tensor, stat: Tensor, final: bool) -> PotentialStep:
        return _difference(value, acc, stat)


@dataclass(frozen=True)
class TDS:
    """The twisted diffusion sampler's potential for a measurement ``y = A x + n``, ``n ~ N(0, s^2 I)`` (Wu, Trippe,
    Naesseth, Blei & Cunningham 2023, "Practical and Asymptotically Exact Conditional Sampling in Diffusion
    Models", Alg. 1 and §3.3): the twisting function

        log p~_t(y | x_t) = -|y - A x0_hat(x_t)|^2 / (2 (s^2 + r_t^2)),

    (up to a constant per node, which the per-prompt normalisation removes), the proposal mean shifted by
    ``std_t^2 grad_{x_t} log p~_t(y | x_t)`` (through the network: one backward pass per stochastic step), and the
    incremental weight ``p(x_{t-1} | x_t) p~_{t-1}(y | x_{t-1}) / (q(x_{t-1} | x_t, y) p~_t(y | x_t))``. At the
    clean end the twist is the exact likelihood, so the weighted particles target the posterior ``p(x | y)``
    asymptotically exactly as the particles grow, whatever ``r_t``. Needs ``noise_std > 0``. ``twist=False`` keeps
    the prior proposal (weights only).

    ``r_t^2`` stands in for the spread of ``x0 | x_t`` about ``x0_hat``: ``twist_scale`` times

    - ``S^2 q / (S^2 + q)``, ``q = sigma_t^2 / alpha_t^2``, with ``S = data_std`` (default 1, for data of unit
      scale): the exact variance for Gaussian data ``N(m, S^2 I)`` (PiGDM's ``r_t``, Song et al. 2023), bounded by
      ``S^2`` at high noise;
    - ``q`` itself with ``data_std=None`` (a flat prior): unbounded as the noise grows, so at high noise, where a
      multimodal posterior's modes are chosen, the twist is almost flat and the choice is left to the final
      weights (on the 64-D mixture the particles then miss the posterior's mode: docs/posterior.md);
    - 0 with ``twist_scale=0``: the paper's plug-in ``p(y | x0_hat(x_t))``, too sharp at high noise for a small
      ``s`` (the particles collapse early; measured in docs/posterior.md).

    The gradient is whatever autograd gives through the model-call stack: for a network that detaches its input
    (e.g. the isotropic mixture's exact denoiser ``GaussianMixture.model``) it is only the conversion's explicit
    part (``x0_hat = (x - sigma eps_hat) / alpha`` with ``eps_hat`` held), a Jacobian-free twist. For Gaussian data
    its gradient is the true one's times ``1 + q / S^2``: a much stronger pull at high noise. The weights account
    for the proposal actually used, so the limit stays exact; whether the stronger pull helps depends on the problem
    (with the plug-in twist it overshoots and the weights collapse; with the bounded one it finds the 64-D
    mixture's posterior mode with fewer particles: docs/posterior.md).
    """

    measurement: Measurement
    twist_scale: float = 1.0
    twist: bool = True
    data_std: float | None = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.measurement, Measurement):
            raise TypeError(
                "measurement: must be a fewstep.posterior measurement (Linear, Mask, Operator, Nonlinear), got "
                f"{type(self.measurement).__name__}"
            )
        if self.measurement.noiseless:
            raise ValueError(
                "measurement: TDS needs a noisy measurement (noise_std > 0), whose likelihood is the final potential; "
                "give a small noise_std, or use a projection sampler for noiseless problems"
            )
        object.__setattr__(self, "twist_scale", real_option("twist_scale", self.twist_scale))
        if self.data_std is not None and finite_number("data_std", self.data_std) <= 0:
            raise ValueError(
                f"data_std: must be > 0 (the data's scale, 1 for normalised data) or None (a flat prior), "
                f"got {self.data_std}"
            )

    def twist_variance(self, alpha: float, sigma: float) -> float:
        """``r_t^2``: ``twist_scale`` times the variance of ``x0 | x_t`` under the twist's prior (class docstring);
        0 at the clean end, inf at ``alpha = 0`` for a flat prior."""
        if sigma == 0.0:
            return 0.0
        level = sigma / alpha if alpha > 0 else math.inf
        if self.data_std is None:
            return self.twist_scale * level * level
        return self.twist_scale * posterior_variance(level, float(self.data_std))

    def bind(self, prompts: int, particles: int, like: Tensor) -> TDS:
        y = self.measurement.y
        if y.ndim < 1 or y.shape[0] not in (1, prompts):
            raise ValueError(
                f"y: need one observation per prompt ({prompts}) or one for all, got shape {tuple(y.shape)}"
            )
        rows = y if y.shape[0] == 1 else y.repeat_interleave(particles, dim=0)
        bound = replace(self.measurement, y=rows)
        try:
            bound.check(like)
        except RuntimeError as err:  # an operator that cannot act on this state at all (e.g. A's columns)
            raise ValueError(
                f"measurement: its operator cannot be applied to samples of shape {tuple(like.shape[1:])} ({err})"
            ) from None
        return replace(self, measurement=bound)

    def value(self, x0: Tensor, alpha: float, sigma: float) -> Tensor:
        var = self.measurement.noise_std**2 + self.twist_variance(alpha, sigma)
        if math.isinf(var):
            return torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        return -self.measurement.residual(x0).flatten(1).square().sum(1) / (2.0 * var)

    def step(self, value: Tensor, acc: Tensor, stat: Tensor, final: bool) -> PotentialStep:
        return _difference(value, acc, stat)


@dataclass(frozen=True)
class FKSteering:
    """Feynman-Kac steering with a reward ``r(x0) -> (N,)`` (Singhal, Horvitz, Teehan, Ren, Yu, Cho & Ranganath 2025,
    "A General Framework for Inference-Time Scaling and Steering of Diffusion Models", §3): the value at each node is
    ``lam * r(x0_hat_i)`` and ``kind`` picks the potential, ``"difference"`` (``lam (r_i - r_{i-1})``), ``"max"``
    (``lam max_{j <= i} r_j``) or ``"sum"`` (``lam sum_{j <= i} r_j``). Target: ``p(x) exp(lam r(x))``. The
    difference potential is exact for it; max and sum are exact with ``exact=True`` (the last potential corrects
    the path's product, module docstring) and the paper's heuristics with ``exact=False``. The proposal is the
    prior's (no gradient of the reward is taken)."""

    reward: Callable[[Tensor], Tensor]
    lam: float = 1.0
    kind: str = "difference"
    exact: bool = True
    twist: bool = False

    def __post_init__(self) -> None:
        if not callable(self.reward):
            raise TypeError(f"reward: must be callable as reward(x0) -> (N,), got {type(self.reward).__name__}")
        object.__setattr__(self, "lam", real_option("lam", self.lam, low=-math.inf))
        if self.kind not in FK_KINDS:
            raise ValueError(
                f"kind: choose one of {', '.join(map(repr, FK_KINDS))}, got {self.kind!r}{suggestion(self.kind, FK_KINDS)}"
            )
        if not isinstance(self.exact, bool):
            raise TypeError(f"exact: must be a bool, got {self.exact!r}")
        if self.twist:
            raise ValueError("twist: FK steering uses the prior's proposal (twist=False)")

    def bind(self, prompts: int, particles: int, like: Tensor) -> FKSteering:
        return self

    def value(self, x0: Tensor, alpha: float, sigma: float) -> Tensor:
        return self.lam * _check_values("reward", self.reward(x0), x0.shape[0])

    def step(self, value: Tensor, acc: Tensor, stat: Tensor, final: bool) -> PotentialStep:
        if self.kind == "difference" or (final and self.exact):
            return _difference(value, acc, stat)
        # the running statistic starts as nan (nothing seen yet)
        new = torch.fmax(stat, value) if self.kind == "max" else stat.nan_to_num(0.0) + value
        return PotentialStep(new, new)


def as_potential(potential: object) -> Potential:
    """A :class:`Potential` as it is; a plain callable ``fn(x0_hat, sigma)`` as :class:`Value`; else a TypeError."""
    if isinstance(potential, Potential):
        return potential
    if callable(potential):
        return Value(potential)  # type: ignore[arg-type]  # checked callable
    raise TypeError(
        "potential: give TDS(measurement), FKSteering(reward), Value(fn) or a callable fn(x0_hat, sigma) -> (N,), "
        f"got {type(potential).__name__}"
    )
