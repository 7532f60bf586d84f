"""Mirror Langevin with Bregman proximal steps (Lau & Liu 2022, "Bregman Proximal Langevin Monte Carlo via
Bregman–Moreau Envelopes"), for targets on a constrained domain (the positive orthant, the simplex) and non-smooth
terms.

The target is ``p ∝ exp(-f - g)``: ``f`` smooth (the :class:`~fewstep.langevin.Target`, score ``-grad f``) and
``g`` convex and possibly non-smooth, given by its right Bregman proximity operator ``P`` (``prox=``, optional).
``g`` is replaced by its right Bregman–Moreau envelope ``g_lambda(x) = min_u g(u) + D_phi(x, u) / lambda``, whose
gradient is ``(grad phi(x) - grad phi(P(x))) / lambda`` with ``P(x) = argmin_u g(u) + D_phi(x, u) / lambda``; the
chain samples ``exp(-f - g_lambda)`` up to the O(h) bias of the step, and ``g_lambda`` increases to ``g`` as
``lambda`` (``smoothing``, default ``2 h``, ``h <= lambda``) falls. A Legendre function ``phi`` (the mirror map,
``mirror=``) whose domain is the target's support carries the chain to the dual space ``y = grad phi(x)`` and
back by ``x = grad phi*(y)``, so every draw lies in the domain. Two discretisations (``scheme=``), one gradient
per step each:

* ``"mla"``, the mirror-Langevin algorithm (Zhang, Peyré, Fadili & Pereyra 2020; Lau & Liu's Bregman–Moreau
  unadjusted mirror-Langevin algorithm; its bias vanishes with the step, Li, Tao, Vempala & Wibisono 2022):

      y = grad phi(x) + h grad log p_f(x) - (h / lambda) (grad phi(x) - grad phi(P(x))) + sqrt(2 h) [hess phi(x)]^{1/2} z;

  for ``h <= lambda`` the prox term is a convex combination in the dual (at ``h = lambda`` a Bregman proximal
  gradient step, plus noise). Near the boundary the drift ``grad log p_f`` and the noise ``hess phi^{1/2}`` grow
  without bound, so the step must be small there.
* ``"dual"`` (default), the mirrored Langevin algorithm (Hsieh, Kavis, Rolland & Cevher 2018): ULA on the law of
  ``y``, ``q(y) = p(grad phi*(y)) det hess phi*(y)``, with the same envelope for ``g``,

      y <- y + h J^T (grad log p_f(x) - grad g_lambda(x)) + h grad_y log det J + sqrt(2 h) z,    J = d x / d y,

  whose drift stays bounded at the boundary (for a Dirichlet ``alpha``, ``alpha - sum(alpha) x``).

Mirror maps: ``"orthant"``, the entropy ``phi(x) = sum_i x_i log x_i - x_i`` on ``x > 0`` (``grad phi = log x``,
``x = exp y``, ``hess phi = diag(1/x)``, ``J = diag(x)``, ``log det J = sum_i y_i``); ``"simplex"``, the entropy on
the open simplex ``{x > 0, sum_i x_i = 1}`` in its ``K`` coordinates (``x = softmax(y)``; ``J^T v = x v - x (x.v)``,
``grad_y log det J = 1 - K x``, the dual noise projected on ``sum_i y_i = 0``; for ``"mla"`` the noise ``x^{-1/2} z``
has, on the ``K - 1`` free coordinates, exactly the covariance ``diag(1/x) + 11^T / x_K`` of the entropy's Hessian
there); ``"euclidean"``, ``phi = |x|^2 / 2``, where both schemes are ULA (with ``prox``, MYULA). Bregman proximity
operators of the entropy on the orthant, ``prox(x, lam) -> Tensor``: :class:`EntropicL1` (``g = w sum_i x_i``:
``P(x) = x / (1 + lam w)``, whose envelope ``x log(1 + lam w) / lam`` is an exponential of rate
``log(1 + lam w) / lam``) and :class:`~fewstep.langevin.Box` (an interval ``[low, high]`` with ``low >= 0``:
``D_phi(x, u)`` is convex in each ``u_i`` with its minimum at ``x_i``, so ``P`` clamps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..noise.brownian import BrownianPath
from ..options import suggestion
from .chains import Chains
from .noise import StepNoise
from .proximal import Prox, smoothing_for
from .registry import check_run, register
from .sampler_options import parse_options, positive_float
from .sgld import required_step
from .target import Target

__all__ = ["MIRRORS", "EntropicL1", "MirrorMap", "mirror_langevin"]

NAME = "mirror_langevin"


@dataclass(frozen=True)
class MirrorMap:
    """A Legendre function by its maps: ``kind`` is ``"orthant"``, ``"simplex"`` or ``"euclidean"`` (module
    docstring)."""

    kind: str

    def to_dual(self, x: Tensor) -> Tensor:
        """``grad phi(x)``."""
        return x if self.kind == "euclidean" else x.log()

    def to_primal(self, y: Tensor) -> Tensor:
        """``grad phi*(y)``, kept inside the domain (an underflow to 0 becomes the smallest positive number)."""
        if self.kind == "euclidean":
            return y
        if self.kind == "orthant":
            x = y.exp()
        else:  # softmax, written out (torch.softmax is slow on a short last dimension on some CPUs)
            e = (y - y.amax(-1, keepdim=True)).exp()
            x = e / e.sum(-1, keepdim=True)
        return x.clamp_min(torch.finfo(x.dtype).tiny)

    def noise_scale(self, x: Tensor) -> Tensor | float:
        """A factor ``S`` with ``S z ~ N(0, hess phi(x))`` for ``z ~ N(0, I)``."""
        return 1.0 if self.kind == "euclidean" else x.rsqrt()

    def pull_back(self, x: Tensor, v: Tensor) -> Tensor:
        """``J^T v`` with ``J = d grad phi*(y) / d y`` at ``x = grad phi*(y)``: a primal gradient in dual
        coordinates."""
        if self.kind == "euclidean":
            return v
        xv = x * v
        return xv if self.kind == "orthant" else xv - x * xv.sum(-1, keepdim=True)

    def volume_score(self, x: Tensor) -> Tensor | float:
        """``grad_y log det J`` (the change of variables of the density to the dual)."""
        if self.kind == "euclidean":
            return 0.0
        return 1.0 if self.kind == "orthant" else 1.0 - x.shape[-1] * x

    def dual_noise(self, z: Tensor) -> Tensor:
        """The dual noise: ``z``, projected on ``sum_i y_i = 0`` for the simplex (the direction that ``softmax``
        ignores)."""
        return z - z.mean(-1, keepdim=True) if self.kind == "simplex" else z

    def check_start(self, x0: Tensor) -> None:
        """ValueError when a starting point lies outside the domain."""
        if self.kind == "euclidean":
            return
        if not bool((x0 > 0).all()):
            raise ValueError(
                f"x0 of {NAME!r} must lie inside the domain of the {self.kind!r} mirror map (every coordinate > 0), "
                "got a coordinate <= 0"
            )
        if self.kind == "simplex":
            sums = x0.sum(-1)
            if not bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4)):
                raise ValueError(
                    f"x0 of {NAME!r} with the 'simplex' mirror map must have rows summing to 1 (points of the simplex "
                    f"in their K coordinates, e.g. torch.full((chains, K), 1 / K)), got row sums from "
                    f"{float(sums.min()):.4g} to {float(sums.max()):.4g}"
                )


#: The mirror maps by name.
MIRRORS = {kind: MirrorMap(kind) for kind in ("orthant", "simplex", "euclidean")}
#: The discretisations (module docstring).
SCHEMES = ("dual", "mla")


@dataclass(frozen=True)
class EntropicL1:
    """``g(x) = weight * sum_i x_i`` on the positive orthant (the L1 norm there): its right Bregman proximity
    operator for the entropy, ``argmin_u g(u) + D_phi(x, u) / lam = x / (1 + lam * weight)``."""

    weight: float = 1.0

    def __call__(self, x: Tensor, lam: Tensor) -> Tensor:
        return x / (1.0 + lam * self.weight)


@dataclass
class MirrorOptions:
    """``mirror``: ``"orthant"``, ``"simplex"`` or ``"euclidean"`` (required); ``prox``: the right Bregman
    proximity operator of the non-smooth term, ``prox(x, lam) -> Tensor`` (optional); ``smoothing``: lambda
    (default ``2 step_size``, and ``step_size <= lambda``); ``scheme``: ``"dual"`` or ``"mla"``; ``brownian``: a
    :class:`~fewstep.noise.BrownianPath` (``batch_size = chains``, ``shape = (d,)``) whose increment over
    ``[t0 + k h, t0 + (k + 1) h]`` drives step ``k`` instead of the generator."""

    mirror: str | None = None
    prox: Prox | None = None
    smoothing: float | None = None
    scheme: str = "dual"
    brownian: BrownianPath | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(
                f"scheme of {NAME!r} must be one of {', '.join(SCHEMES)} ('dual': Langevin on the dual density, stable "
                f"at the boundary; 'mla': the mirror-Langevin algorithm), got {self.scheme!r}"
            )
        if not isinstance(self.mirror, str) or self.mirror not in MIRRORS:
            raise ValueError(
                f"mirror of {NAME!r} must be one of {', '.join(MIRRORS)} (the entropy on the positive orthant, on the "
                f"simplex, or the Euclidean map), got {self.mirror!r}"
                f"{suggestion(self.mirror, list(MIRRORS)) if isinstance(self.mirror, str) else ''}"
            )
        if self.prox is not None and not callable(self.prox):
            raise TypeError(
                f"prox of {NAME!r} must be a Bregman proximity operator prox(x, lam) -> Tensor "
                f"(e.g. fewstep.langevin.EntropicL1(weight) or Box(low, high)), got {self.prox!r}"
            )
        if self.smoothing is not None:
            self.smoothing = positive_float("smoothing", self.smoothing, NAME)


@register(NAME)
def mirror_langevin(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Chains:
    """Bregman proximal mirror Langevin (module docstring); ``step_size`` is required."""
    _, x = check_run(target, x0, draws, warmup, step_size, NAME)
    opts = parse_options(MirrorOptions, options, NAME)
    h = required_step(step_size, NAME)
    lam = 2.0 * h if opts.prox is None else smoothing_for(h, opts.smoothing, NAME)  # lambda serves the prox term
    assert opts.mirror is not None
    mirror = MIRRORS[opts.mirror]
    mirror.check_start(x)
    lam_t = torch.full((x.shape[1],), lam, dtype=x.dtype, device=x.device)
    scale = math.sqrt(2.0 * h)
    out = x.new_empty(x.shape[0], draws, x.shape[1])
    noise = StepNoise(x, generator=generator, path=opts.brownian, step_size=h)
    start = target.gradient_evaluations
    dual = opts.scheme == "dual"
    y = mirror.to_dual(x)
    for i in range(warmup + draws):
        force = target.score(x)
        if opts.prox is not None:  # minus the gradient of the envelope, (grad phi(x) - grad phi(P(x))) / lambda
            force = force - (y - mirror.to_dual(opts.prox(x, lam_t))) / lam
        if dual:
            z = mirror.dual_noise(noise.increment(i))
            y = y + h * (mirror.pull_back(x, force) + mirror.volume_score(x)) + scale * z
        else:
            y = y + h * force + scale * mirror.noise_scale(x) * noise.increment(i)
        x = mirror.to_primal(y)
        if not dual:
            y = mirror.to_dual(x)
        if i >= warmup:
            out[:, i - warmup] = x
    return Chains(
        draws=out,
        acceptance=None,
        gradient_evaluations=target.gradient_evaluations - start,
        step_size=h,
        inverse_mass=None,
        warmup=warmup,
        sampler=NAME,
    )
