"""The bidirectional sampler of ViBiDSampler (Yang, Kwon & Ye 2025, "ViBiDSampler: Enhancing Video Interpolation
Using Bidirectional Diffusion Sampler"): each step is taken twice in sequence, first under the forward condition (the
start frame), then, after re-noising back to the step's level, under the backward condition (the end frame) on the
time-reversed state, each with CFG++.

At a request at level ``t`` whose step goes to ``s`` (``h`` its length in log-SNR):

    (x0_f, eps_f) = D_f(x_t)                                   forward condition, CFG++ at lam
    x_t' = alpha_t x0_f + sigma_t (rho eps_f + sqrt(1 - rho^2) z),   rho = e^{-h}     DDIM to s, re-noise to t
    (x0_b, eps_b) = flip(D_b(flip(x_t')))                      backward condition on the flipped state

and the solver's own DDIM step from ``x_t'`` with ``(x0_b, eps_b)`` gives ``x_s`` (the rule answers with that pair;
:mod:`~fewstep.guidance.state_moves` explains why the first-order CFG++ forms then step from ``x_t'``). ``flip`` is
the reversal of the frame axis for video (an orthogonal involution of the state; None: the identity).

What it samples: for the forward SDE ``dx = f x dt + g dW``, the forward pass's ODE step down and the noising back
up leave, to first order, ``(g^2 / 2) s_f dt + g dW``; the backward pass's ODE step adds ``-f x dt + (g^2 / 2) s_b
dt``. With ``h`` the run's step the two passes are an Euler-Maruyama step of the reverse SDE
``dx = (-f x + g^2 (s_f + s_b) / 2) dt + g dW``, whose score is the average of the two (the composition of the two
conditionals with weights 1/2). For two Gaussian conditionals ``N(m_f, S^2 I)`` and
``N(m_b, S^2 I)`` that average is the score of the diffused ``N((m_f + m_b)/2, S^2 I)``, whose samples the rule
therefore converges to (tested); on class-labelled mixtures the benchmark compares it with a fine reverse-SDE
solve of the average (``python benchmarks/guidance_methods.py``).

Cost: two network calls per request (the second depends on the first), each of two branches with CFG++ (one
without ``uncond_kwargs``). ViBiDSampler's DDS data-consistency step on the key frames is not part of the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction, convert
from .branches import Branches
from .cfg_pp import cfg_pp_pair
from .rule_checks import finite_number
from .state_moves import MOVING_SOLVERS, check_generator, check_h, check_moving_solver, drawer, renoise, rho_of


@dataclass(frozen=True)
class Bidirectional:
    """ViBiDSampler's step (module docstring): ``forward`` and ``backward`` are the conditionings of the two passes
    (the model keywords they replace, as :class:`~fewstep.guidance.Term`'s ``kwargs``; None: the run's own), ``h``
    the re-noising step in log-SNR (the run's step: ``spacing="logsnr"`` has a constant one), ``flip`` the involution
    of the state for the backward pass (None: identity), ``scale`` CFG++'s lam for both passes with
    ``uncond_kwargs`` (None: no guidance, ``scale`` must be 1), ``generator`` the re-noising's noise."""

    forward: Mapping[str, Any] | None
    backward: Mapping[str, Any] | None
    h: float
    flip: Callable[[Tensor], Tensor] | None = None
    scale: float = 1.0
    uncond_kwargs: Mapping[str, Any] | None = None
    generator: torch.Generator | None = None
    cfg_pp = True  # answers with the predictions at the moved state: the solvers' CFG++ forms step from it
    cfg_pp_solvers = MOVING_SOLVERS  # the forms that step from the implied state alone

    def __post_init__(self) -> None:
        for name in ("forward", "backward", "uncond_kwargs"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(
                    f"{name}: must be a mapping of model keyword arguments or None, got {type(value).__name__}"
                )
        check_h("h", self.h)
        if self.flip is not None and not callable(self.flip):
            raise TypeError(
                f"flip: must be a callable flip(x) -> x (an involution, e.g. reversing frames) or None, "
                f"got {self.flip!r}"
            )
        lam = finite_number("scale", self.scale)
        if self.uncond_kwargs is None and lam != 1.0:
            raise ValueError(
                f"uncond_kwargs: scale={self.scale} is CFG++ guidance, which needs the unconditional inputs, e.g. "
                "uncond_kwargs={'y': null_label}; or leave scale=1"
            )
        check_generator(self.generator)

    def check_solver(self, solver: object, sde_window: object = None) -> None:
        check_moving_solver("Bidirectional", solver, sde_window)

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        forward = _direction(network, self.forward, self.uncond_kwargs, float(self.scale))
        backward = _direction(network, self.backward, self.uncond_kwargs, float(self.scale))
        flip = self.flip if self.flip is not None else _identity
        rho, draw = rho_of(float(self.h)), drawer(self.generator)

        def evaluate(x: Tensor, p: Point) -> Prediction:
            x0, eps = forward(x, p)
            moved = flip(renoise(x0, eps, p, rho, draw(x)))
            x0, eps = backward(moved, p)
            return flip(x0), flip(eps)

        return evaluate


def _identity(x: Tensor) -> Tensor:
    return x


def _direction(
    network: Network, cond: Mapping[str, Any] | None, uncond: Mapping[str, Any] | None, lam: float
) -> Callable[[Tensor, Point], tuple[Tensor, Tensor]]:
    """One pass's evaluation: the network under ``cond``, with CFG++ at ``lam`` where ``uncond`` is given (one batched
    call of two branches)."""
    if uncond is None:
        single = Branches(network, [cond], "forward/backward")

        def plain(x: Tensor, p: Point) -> tuple[Tensor, Tensor]:
            (out,) = single.outputs(x, p.model_time, p.t)
            x0, eps = convert(x, out, p, True)
            assert eps is not None
            return x0, eps

        return plain
    pair = Branches(network, [uncond, cond], "uncond_kwargs")

    def guided(x: Tensor, p: Point) -> tuple[Tensor, Tensor]:
        out_u, out_c = pair.outputs(x, p.model_time, p.t)
        x0, eps = cfg_pp_pair(x, out_u, out_c, lam, p, True)
        assert eps is not None
        return x0, eps

    return guided
