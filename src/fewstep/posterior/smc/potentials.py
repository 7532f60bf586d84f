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

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ...guidance.loss_steps import posterior_variance
from ...guidance.rule_checks import finite_number
from ...options import real_option, suggestion
from ..measurement import Mask, Measurement
from .twist import TwistStep

__all__ = [
    "FK_KINDS",
    "TWIST_VARIANCES",
    "FKSteering",
    "Potential",
    "PotentialStep",
    "TDS",
    "Value",
    "as_potential",
    "value_and_gradient",
]

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

    Optional, outside the protocol: ``stand_in_twist(x0, alpha, sigma)``, the value and a proposal gradient w.r.t.
    the state without a backward pass through the network (a :class:`~fewstep.posterior.smc.twist.TwistStep`, or
    None for the prior's proposal); the engine uses it, where present, before a stochastic step of a potential without
    ``twist`` (``FKSteering(gradient=True)``).
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


#: how :class:`TDS` estimates the spread of ``A x0 | x_t`` (its docstring)
TWIST_VARIANCES = ("tweedie", "gaussian")


def _measured_size(measurement: Measurement, x0: Tensor) -> float:
    """``m``: how many numbers a sample's measurement holds (a mask's observed entries; ``A x``'s size otherwise)."""
    if isinstance(measurement, Mask):
        return float(torch.broadcast_to(measurement.mask, x0.shape[1:]).count_nonzero())
    return float(math.prod(measurement.y.shape[1:]))


@dataclass(frozen=True)
class TDS:
    """The twisted diffusion sampler's potential for a measurement ``y = A x + n``, ``n ~ N(0, s^2 I)`` (Wu, Trippe,
    Naesseth, Blei & Cunningham 2023, "Practical and Asymptotically Exact Conditional Sampling in Diffusion
    Models", Alg. 1 and §3.3): the twisting function, a Gaussian stand-in for ``p_t(y | x_t)``,

        v_t = log p~_t(y | x_t) = -|y - A x0_hat(x_t)|^2 / (2 (s^2 + r_t^2)) - (m / 2) log(s^2 + r_t^2)

    (``m`` numbers measured; the constant ``2 pi`` dropped), the proposal mean shifted by ``std_t^2 grad_{x_t} v_t``
    (``r_t`` held fixed; through the network: one backward pass per stochastic step), and the incremental weight
    ``p(x_{t-1} | x_t) p~_{t-1}(y | x_{t-1}) / (q(x_{t-1} | x_t, y) p~_t(y | x_t))``. At the clean end ``r = 0`` and
    the twist is the exact likelihood, so the weighted particles target the posterior ``p(x | y)`` asymptotically
    exactly as the particles grow, whatever ``r_t``; ``r_t`` decides how many particles that takes. Needs
    ``noise_std > 0``. ``twist=False`` keeps the prior proposal (weights only).

    ``r_t^2`` stands in for the spread of ``A x0 | x_t`` about ``A x0_hat``; ``twist_scale`` times

    - ``variance="gaussian"`` (default): ``S^2 q / (S^2 + q)``, ``q = sigma_t^2 / alpha_t^2``, ``S = data_std``
      (default 1): the exact variance for Gaussian data ``N(m, S^2 I)`` (PiGDM's ``r_t``, Song et al. 2023),
      bounded by ``S^2`` at high noise; ``data_std=None``: ``q`` itself (a flat prior), unbounded as the noise
      grows;
    - ``variance="tweedie"``: the exact posterior covariance of Tweedie's second-order formula,
      ``Cov[x0 | x_t] = (sigma_t^2 / alpha_t) d x0_hat / d x_t`` (Boys et al. 2023, "Tweedie Moment Projected
      Diffusions for Inverse Problems"; Rozet et al. 2024, "Learning Diffusion Priors from Observations by
      Expectation Maximization", MMPS), read along the particle's residual: ``r_t^2 = e^T A Cov[x0 | x_t] A^T e
      = (sigma_t^2 / alpha_t) g^T J g / |y - A x0_hat|^2``, ``g = A^T (y - A x0_hat)``, ``J = d x0_hat / d x_t``,
      ``e`` the unit residual. The vector-Jacobian product ``J^T g`` that gives the proposal's shift gives it too:
      no extra network call. It is the moment-matched Gaussian twist for one measured number (and for an
      isotropic ``A Cov A^T``; otherwise a one-direction stand-in for MMPS's ``(s^2 I + A Cov A^T)^{-1}``), and
      it follows the data at every noise level, the chosen mode's spread included, which the ``m / 2 log`` term
      turns into the modes' relative weights. At a node where no gradient is taken (before the deterministic last
      step; ``alpha = 0``) the ``"gaussian"`` value is used. Needs ``twist=True``.
    - ``twist_scale=0``: the paper's plug-in ``p(y | x0_hat(x_t))``.

    **The proposal's twist** (``lookahead``). The locally optimal proposal of a twisted SMC step from node ``i``
    is ``q*(x' | x) ∝ p(x' | x) h_{i+1}(x')``, with the twist of the node the step lands on (Doucet, Godsill &
    Andrieu 2000, §II.D, with the twist as the observation; Whiteley & Lee 2014, "Twisted Particle Filters"; the
    incremental weight then depends on ``x`` alone). TDS's proposal (Wu et al. 2023, eq. 10) linearises ``h_i``.
    With ``lookahead=True`` the product proposal (:mod:`fewstep.posterior.smc.twist`) takes the gradient and
    curvature of the Gaussian twist with the next node's variance ``w_{i+1} = s^2 + r_{i+1}^2`` (``x0_hat`` and its
    Jacobian still from node ``i``, the only network call): ``g = B^T res / w_{i+1}``, ``h = |B^T res|^2 / (w_{i+1}
    |res|^2)``, the sharper twist that the next weight is computed with; the value ``v_i``, and so the weights'
    exactness, is unchanged. Measured (docs/posterior.md): it keeps more of K effective at the end (64-D mixture:
    final ESS / K 0.83 against 0.76) but moves the 2-D component-weight error little (0.079 against 0.082), hence off
    by default.
    It acts on the ``"gaussian"`` variance and the product proposal only: ``variance="tweedie"`` reads ``r^2`` at
    the current node (no ``r_{i+1}`` without another network call), and the first-order shift
    (``optimal_proposal=False``) would overshoot further along ``g`` with a sharper twist.

    No Gaussian twist is right for every posterior of a multimodal prior (measured in docs/posterior.md): the
    exact ``p_t(y | x_t)`` is a mixture over the prior's modes, sharp at high noise when ``y`` singles out one
    far-away mode (there the plug-in twist finds it and the moment-matched ones are too flat) and smooth when
    ``y`` fits several (there the plug-in twist collapses the particles early). ``"gaussian"`` with ``S = 1`` is
    the default as the one that does not fail badly on either.

    The gradient is whatever autograd gives through the model-call stack: for a network that detaches its input
    (e.g. the isotropic mixture's exact denoiser ``GaussianMixture.model``) it is only the conversion's explicit
    part (``x0_hat = (x - sigma eps_hat) / alpha``, ``J = I / alpha``): a Jacobian-free twist, whose Tweedie
    variance is then the flat prior's ``q``. The weights account for the proposal actually used, so the limit
    stays exact.
    """

    measurement: Measurement
    twist_scale: float = 1.0
    twist: bool = True
    data_std: float | None = 1.0
    variance: str = "gaussian"
    optimal_proposal: bool = True
    lookahead: bool = False

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
        if self.variance not in TWIST_VARIANCES:
            hint = suggestion(self.variance, TWIST_VARIANCES)
            raise ValueError(
                f"variance: choose one of {', '.join(map(repr, TWIST_VARIANCES))}, got {self.variance!r}{hint}"
            )
        for flag in ("optimal_proposal", "lookahead"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag}: must be a bool, got {getattr(self, flag)!r}")
        if self.variance == "tweedie" and not self.twist:
            raise ValueError(
                "variance: 'tweedie' reads the network's Jacobian from the twisted proposal's backward pass; with "
                "twist=False use variance='gaussian'"
            )

    def twist_variance(self, alpha: float, sigma: float) -> float:
        """The ``"gaussian"`` ``r_t^2``: ``twist_scale`` times the variance of ``x0 | x_t`` for data ``N(m, S^2 I)``
        (class docstring); 0 at the clean end, inf at ``alpha = 0`` for a flat prior."""
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

    def _log_gaussian(self, sq: Tensor, var: Tensor | float, x0: Tensor) -> Tensor:
        """``-sq / (2 (s^2 + r^2)) - (m / 2) log(s^2 + r^2)`` for squared residuals ``sq`` and ``var = r^2``."""
        total = self.measurement.noise_std**2 + var
        log_total = total.log() if isinstance(total, Tensor) else math.log(total)
        return -sq / (2.0 * total) - 0.5 * _measured_size(self.measurement, x0) * log_total

    def value(self, x0: Tensor, alpha: float, sigma: float) -> Tensor:
        """``v_t`` with the ``"gaussian"`` ``r_t^2`` (every node where no gradient is taken, and ``twist=False``)."""
        var = self.twist_variance(alpha, sigma)
        if math.isinf(var):
            return torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        return self._log_gaussian(self.measurement.residual(x0).flatten(1).square().sum(1), var, x0)

    def value_and_gradient(
        self, leaf: Tensor, x0: Tensor, alpha: float, sigma: float, following: tuple[float, float] | None = None
    ) -> TwistStep:
        """``v_t``, ``grad_{x_t} v_t`` and the twist's curvature along it, per particle, at a stochastic step
        (``x0 = x0_hat(leaf)`` with its graph): one backward pass gives ``g = A^T (A x0_hat - y)`` (w.r.t. ``x0``)
        and ``J^T g`` (w.r.t. ``x_t``), hence the Tweedie ``r_t^2`` (class docstring) and, with ``B = A J``, the
        linearised twist ``-|res - B d|^2 / (2 w)``, ``w = s^2 + r_t^2``: gradient ``B^T res / w`` and curvature
        ``|B^T res|^2 / (w |res|^2)`` along it (exact for one measured number; the Rayleigh quotient of ``B B^T``
        along the residual otherwise), which the proposal uses (:mod:`fewstep.posterior.smc.twist`).
        ``following``: the schedule values ``(alpha, sigma)`` of the node the step lands on; with ``lookahead`` and
        the ``"gaussian"`` variance the gradient and curvature take its ``w`` (class docstring), the value this
        node's."""
        res = self.measurement.residual(x0).flatten(1)
        sq = res.square().sum(1)
        g0, jg = torch.autograd.grad(0.5 * sq.sum(), (x0, leaf))
        sq = sq.detach()
        safe = sq.clamp_min(torch.finfo(sq.dtype).tiny)
        if self.variance == "gaussian" or alpha <= 0.0:
            var: Tensor | float = self.twist_variance(alpha, sigma)
        else:
            quad = (g0.detach() * jg).flatten(1).sum(1)  # g^T J g (J a covariance: symmetric, >= 0)
            var = self.twist_scale * (sigma * sigma / alpha) * (quad / safe).clamp_min(0.0)
        if isinstance(var, float) and math.isinf(var):
            zero = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
            return TwistStep(zero, torch.zeros_like(leaf), zero)
        total = self.measurement.noise_std**2 + var
        if not isinstance(total, Tensor):
            total = torch.full_like(sq, total)
        value = self._log_gaussian(sq, total - self.measurement.noise_std**2, x0)
        if self.lookahead and self.optimal_proposal and self.variance == "gaussian" and following is not None:
            total = torch.full_like(sq, self.measurement.noise_std**2 + self.twist_variance(*following))
        # jg = J^T A^T (A x0_hat - y) = -B^T res: the gradient of -|res|^2 / (2 w), w held, is -jg / w
        grad = -jg / total.reshape(-1, *([1] * (leaf.ndim - 1)))
        curvature = jg.flatten(1).square().sum(1) / (total * safe)
        return TwistStep(value, grad, curvature if self.optimal_proposal else None)

    def step(self, value: Tensor, acc: Tensor, stat: Tensor, final: bool) -> PotentialStep:
        return _difference(value, acc, stat)


def value_and_gradient(
    potential: Potential,
    leaf: Tensor,
    x0: Tensor,
    alpha: float,
    sigma: float,
    following: tuple[float, float] | None = None,
) -> TwistStep:
    """A twisting potential's :class:`~fewstep.posterior.smc.twist.TwistStep` at the state ``leaf``, through
    ``x0 = x0_hat(leaf)``: the potential's own ``value_and_gradient`` where it has one (:class:`TDS`: with its
    curvature; ``following``, the next node's ``(alpha, sigma)``, passed on to one that takes a ``following``
    argument), else autograd of ``value`` (first-order shift)."""
    own = getattr(potential, "value_and_gradient", None)
    if own is not None:
        extra = {"following": following} if _takes_following(type(potential), own) else {}
        step = own(leaf, x0, alpha, sigma, **extra)
        assert isinstance(step, TwistStep)
        return TwistStep(step.value.detach(), step.grad.detach(), step.curvature)
    value = potential.value(x0, alpha, sigma)
    if not value.requires_grad:
        raise TypeError(
            "potential: the twisted proposal needs the value's gradient through the network, but the value "
            "carries no autograd graph (a model or potential that detaches); use twist=False"
        )
    (grad,) = torch.autograd.grad(value.sum(), leaf)
    return TwistStep(value.detach(), grad)


#: per potential class, whether its ``value_and_gradient`` takes ``following`` (read once per class)
_FOLLOWING: dict[type, bool] = {}


def _takes_following(cls: type, own: Callable[..., TwistStep]) -> bool:
    """Whether ``own`` (the ``value_and_gradient`` of a ``cls`` instance) takes the next node's ``following``;
    read from its signature once per class where ``own`` is the class's method (else each time)."""
    if getattr(own, "__func__", None) is not getattr(cls, "value_and_gradient", None):
        return "following" in inspect.signature(own).parameters
    known = _FOLLOWING.get(cls)
    if known is None:
        known = _FOLLOWING[cls] = "following" in inspect.signature(own).parameters
    return known


@dataclass(frozen=True)
class FKSteering:
    """Feynman-Kac steering with a reward ``r(x0) -> (N,)`` (Singhal, Horvitz, Teehan, Ren, Yu, Cho & Ranganath 2025,
    "A General Framework for Inference-Time Scaling and Steering of Diffusion Models", §3): the value at each node is
    ``lam * r(x0_hat_i)`` and ``kind`` picks the potential, ``"difference"`` (``lam (r_i - r_{i-1})``), ``"max"``
    (``lam max_{j <= i} r_j``) or ``"sum"`` (``lam sum_{j <= i} r_j``). Target: ``p(x) exp(lam r(x))``. The
    difference potential is exact for it; max and sum are exact with ``exact=True`` (the last potential corrects
    the path's product, module docstring) and the paper's heuristics with ``exact=False``.

    The proposal is the prior's (``gradient=False``, the default), or, with ``gradient=True``, the prior's step
    shifted by the value's gradient, ``N(m + c^2 kappa grad_{x0} v(x0_hat), c^2 I)``, the reward's gradient at the data
    estimate carried to the state by ``kappa = alpha S^2 / (alpha^2 S^2 + sigma^2)``, the denoiser's Jacobian for
    Gaussian data of scale ``S = data_std``, times ``gradient_scale`` (gradient guidance as FK steering's proposal,
    without a backward pass through the network: the reward's own gradient only, no extra network call). The weights
    take the proposal's density ratio, so the target is the same for any scale; the scale trades how far 4 particles
    get against how many a larger K needs (docs/posterior.md)."""

    reward: Callable[[Tensor], Tensor]
    lam: float = 1.0
    kind: str = "difference"
    exact: bool = True
    twist: bool = False
    gradient: bool = False
    data_std: float = 1.0
    gradient_scale: float = 1.0

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
            raise ValueError(
                "twist: FK steering takes no gradient through the network (twist=False); gradient=True shifts its "
                "proposal by the reward's gradient without one"
            )
        if not isinstance(self.gradient, bool):
            raise TypeError(f"gradient: must be a bool, got {self.gradient!r}")
        if finite_number("data_std", self.data_std) <= 0:
            raise ValueError(f"data_std: must be > 0 (the data's scale, 1 for normalised data), got {self.data_std}")
        if finite_number("gradient_scale", self.gradient_scale) < 0:
            raise ValueError(f"gradient_scale: must be >= 0 (1: the stand-in's shift), got {self.gradient_scale}")

    def bind(self, prompts: int, particles: int, like: Tensor) -> FKSteering:
        if self.gradient:  # the reward must be differentiable: checked on a probe, before any model call
            probe = like[:1].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                out = self.reward(probe)
            if not isinstance(out, Tensor) or not out.requires_grad:
                raise TypeError(
                    "reward: gradient=True needs a reward differentiable in x0 (a torch function of it), but its "
                    "output carries no gradient; use gradient=False"
                )
        return self

    def stand_in_twist(self, x0: Tensor, alpha: float, sigma: float) -> TwistStep | None:
        """With ``gradient``: the value and its gradient w.r.t. the state, ``kappa grad_{x0} v(x0_hat)`` (class
        docstring; the reward's own gradient, no network call); None without."""
        if not self.gradient:
            return None
        with torch.enable_grad():
            leaf = x0.detach().requires_grad_(True)
            value = self.value(leaf, alpha, sigma)
            (grad,) = torch.autograd.grad(value.sum(), leaf)
        s2 = self.data_std * self.data_std
        kappa = self.gradient_scale * alpha * s2 / (alpha * alpha * s2 + sigma * sigma)
        return TwistStep(value.detach(), kappa * grad)

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
