"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models").

Classifier-free guidance extrapolates the noise prediction, ``eps_w = eps_u + w (eps_c - eps_u)``, and a solver
renoises with it, which pushes the state off the data manifold at large ``w``. CFG++ guides the clean sample only
and renoises with the UNconditional noise (Chung et al. Alg. 1, for DDIM):

    x0_hat = x0_u + lam (x0_c - x0_u),      eps_hat = eps_u,      x_t = alpha_t x0_hat + sigma_t eps_hat,

with ``lam`` in [0, 1] (ComfyUI's ``cfg`` of its ``*_cfg_pp`` samplers): ``lam = 0`` is the unconditional model,
``lam = 1`` the conditional clean sample renoised with the unconditional noise. Both branches run as one batched
network call (one call, two branch evaluations).

The pair ``(x0_hat, eps_hat)`` no longer satisfies ``x = alpha x0_hat + sigma eps_hat``: a solver that renoises with
the evaluation's ``eps_hat`` takes the CFG++ update, and the multistep solvers keep the unconditional clean samples
``(x - sigma eps_hat) / alpha`` in their history (:mod:`fewstep.solvers.cfg_pp`). Only solvers with that capability
(``Solver.cfg_pp``: :func:`fewstep.solvers.base.cfg_pp_solvers`) accept the rule; ``sample`` raises a ValueError
naming them for any other, and for a ``threshold`` (which recomputes ``eps_hat`` from ``x0_hat``). A rule of your
own marks itself as CFG++ with the class attribute ``cfg_pp = True`` (:func:`is_cfg_pp`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction, convert
from .cfg import guided, paired_outputs
from .rule_checks import conditioning, finite_number


@dataclass(frozen=True)
class CFGPlusPlus:
    """CFG++ at ``scale`` (lam: 0 is the unconditional model, 1 the conditional clean sample; typically in [0, 1])
    with the unconditional inputs ``uncond_kwargs`` (the same keys as the model's conditioning, as
    :class:`~fewstep.guidance.ClassifierFreeGuidance`)."""

    scale: float
    uncond_kwargs: Mapping[str, Any]
    #: The marker the solvers' check reads (:func:`is_cfg_pp`).
    cfg_pp: ClassVar[bool] = True

    def __post_init__(self) -> None:
        finite_number("scale", self.scale)
        conditioning("uncond_kwargs", self.uncond_kwargs, "CFG++")

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        pair = paired_outputs(network, self.uncond_kwargs)
        lam = float(self.scale)

        def evaluate(x: Tensor, p: Point) -> Prediction:
            return cfg_pp_pair(x, *pair(x, p.model_time, p.t), lam, p, needs_eps)

        return evaluate


def cfg_pp_pair(x: Tensor, out_u: Tensor, out_c: Tensor, lam: float, p: Point, needs_eps: bool) -> Prediction:
    """CFG++'s pair from the two branches' outputs at ``x``: ``(x0_u + lam (x0_c - x0_u), eps_u)``."""
    x0, _ = convert(x, guided(out_u, out_c, lam), p, False)  # x0_u + lam (x0_c - x0_u): the map is affine
    return x0, (convert(x, out_u, p, True)[1] if needs_eps else None)


def is_cfg_pp(rule: object) -> bool:
    """Whether a guidance rule hands the solver CFG++ pairs (guided ``x0_hat``, unconditional ``eps_hat``): its
    ``cfg_pp`` attribute is True."""
    return getattr(rule, "cfg_pp", False) is True
