"""EVODiff (Li et al. 2025, "EVODiff: Entropy-aware Variance Optimized Diffusion Inference"): a second-order
data-prediction multistep solver whose difference term is the variance-optimal combination of two estimates.

The second-order data-prediction step from ``s = t_i`` to ``t = t_{i+1}`` (``h = lambda_t - lambda_s``) is

    x_t = (sigma_t/sigma_s) x_s + alpha_t (h phi_1(-h) m_i + h phi_2(-h) d),     d ~ h x0'(lambda_s),

and two estimates of ``d`` are at hand without an extra model evaluation (the paper's "gradient-based" step with
the model evaluation at the probing state reused, as UniPC's corrector does):

- backward, from the history: ``b = (h / h_{i-1}) (m_i - m_{i-1})``;
- forward, from the estimate ``m~_t`` at the state ``x~_t`` that DPM-Solver++(2M) predicts (the evaluation the
  next step needs anyway): ``f = m~_t - m_i``.

Both are exact for data estimates linear in lambda, so every combination ``d(eta) = (1 - eta) b + eta f`` with a
bounded ``eta`` keeps the step second order. EVODiff picks the coefficient that minimises the conditional
variance of the transition, the second moment of its data-dependent term, per sample and in closed form:

    eta* = argmin_eta ||(1 - eta) b + eta f||^2 = <b, b - f> / ||b - f||^2,     eta = clamp(eta*, 0, 1)

(the minimiser over the segment between the two estimates). The step is then recomputed from ``x_s`` with
``d(eta)``; the next step starts from that state and keeps ``m~_t`` in its history. ``eta`` is a per-sample
tensor computed from three reductions over the sample (no host-device synchronisation); every other coefficient
is precomputed as a float.

The authors' code (EDM, CIFAR-10) maps the same projection coefficient through smoothing heuristics (sigmoids,
clamps, time-dependent balancing of the differences, per-channel reductions) tuned for images; fewstep keeps the
exact minimiser above, per sample. Warm-up and final steps follow DPM-Solver++(2M) (``lower_order_final``,
:func:`~fewstep.solvers.multistep.multistep_orders`); first-order steps (the first, those of infinite lambda-size)
and the last step (no evaluation follows it) are not recombined.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ...options import bool_option
from ..base import Solver, Steps, register
from ..multistep import multistep_orders, multistep_weights
from ..phi import hphi

PAPER_EVODIFF = "Li et al. 2025, EVODiff: Entropy-aware Variance Optimized Diffusion Inference"


def variance_optimal_eta(b: Tensor, f: Tensor) -> Tensor:
    """``clamp(<b, b - f> / ||b - f||^2, 0, 1)`` per sample (shape ``(B, 1, ...)``): the ``eta`` minimising
    ``||(1 - eta) b + eta f||^2`` over ``[0, 1]`` (0 where ``b = f``)."""
    diff = b - f
    dims = tuple(range(1, b.ndim))
    num = (b * diff).sum(dim=dims, keepdim=True)
    den = (diff * diff).sum(dim=dims, keepdim=True)
    return (num / den.clamp_min(torch.finfo(den.dtype).tiny)).clamp_(0.0, 1.0)


@register
class EVODiff(Solver):
    name = "evodiff"
    order = 2
    needs_eps = False
    summary = "EVODiff: 2M predictor, then the variance-optimal mix of backward/forward differences (no extra NFE)"
    paper = PAPER_EVODIFF
    peers = "EVODiff repository (heuristic smoothing of the same coefficient; see notes)"

    def __init__(self, lower_order_final: bool = True):
        self.lower_order_final = bool_option("lower_order_final", lower_order_final)

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return multistep_orders(nodes, self.order, self.lower_order_final)

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        a, s, h = nodes.alpha, nodes.sigma, nodes.h
        orders = self.step_orders(nodes)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = s[1:] / s[:-1]  # 0 at a clean end
        # predictor (DPM-Solver++ 2M / DDIM): x~_{i+1} = ratio x_i + sum_j w_j m_{i-j}
        pred = [[float(a[i + 1] * w) for w in multistep_weights(h, i, k)] for i, k in enumerate(orders)]
        # recombination of step i (order 2, finite, followed by an evaluation): (alpha h phi_1, alpha h phi_2, h/h_{i-1})
        recomb: list[tuple[float, float, float] | None] = [
            (float(a[i + 1] * hphi(1, h[i])), float(a[i + 1] * hphi(2, h[i]) / h[i]), float(h[i] / h[i - 1]))
            if k == 2 and i < nodes.steps - 1
            else None
            for i, k in enumerate(orders)
        ]
        hist: list[Tensor] = []
        x_prev = x
        for i in ctx.loop():
            m, _ = yield x, nodes.node(i)
            c = recomb[i - 1] if i > 0 else None
            if c is not None:
                w1, w2, scale = c
                b = (hist[0] - hist[1]) * scale  # backward: (h/h_prev) (m_{i-1} - m_{i-2}) of the step just taken
                f = m - hist[0]  # forward: m~_t - m_s
                eta = variance_optimal_eta(b, f)
                d = b + eta * (f - b)  # d(eta) = (1 - eta) b + eta f
                x = (x_prev * float(ratios[i - 1])).add_(hist[0], alpha=w1).add_(d * w2)
            hist = [m, *hist[:1]]
            x_prev = x
            x = x * float(ratios[i])  # a new tensor: the states already passed on are never changed
            for w, d_ in zip(pred[i], hist, strict=False):
                x.add_(d_, alpha=w)
            ctx.emit(i, x, m)
        return x
