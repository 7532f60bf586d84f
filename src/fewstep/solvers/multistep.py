"""The multistep machinery of the data-prediction exponential integrators (DPM-Solver++ (Lu et al. 2022, App. B),
its SDE variants, ER-SDE, RES, EVODiff and the order plans of UniPC, DEIS and DPM-Solver-v3).

A step from ``x_s`` at ``lambda_s`` to ``lambda_t = lambda_s + h`` with the data estimates ``D_j`` is planned as
one row, :class:`DataStep`:

    x_t = ratio x_s + sum_j weights[j] D_{i-j} + noise z,         z ~ N(0, I)

(``noise = 0`` for ODE steps), and :func:`run_data_plan` is the one loop that runs such rows. The exact solution
of the data-prediction ODE gives ``ratio = sigma_t/sigma_s`` and ``alpha_t sum_k h^{k+1} phi_{k+1}(-h) x0^{(k)}``
(:mod:`fewstep.solvers.phi`); :func:`multistep_weights` turns the derivatives into divided differences of the last
data estimates. Multistep solvers warm up with lower orders; with ``lower_order_final`` (default, as diffusers) the
last step is first order when it goes to sigma = 0 or when there are fewer than 15 steps, and the one before it at
most second order in the latter case (:func:`multistep_orders`). A step of infinite lambda-size is always first
order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import repeat
from operator import mul
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..context import RunContext
from ..nodes import NodeTable
from .base import Solver, Steps
from .cfg_pp import guided_rows, run_guided_plan
from .momentum import check_momentum, momentum_combination
from .phi import hphi
from .stochastic import noise_levels
from .unic import CORRECTORS, PlanStep, check_corrector, predict_correct, unic_plan

PAPER_PP = "Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"


class DataStep(NamedTuple):
    """One planned step ``x_t = ratio x_s + sum_j weights[j] D_{i-j} + noise z`` (module docstring)."""

    ratio: float
    weights: list[float]
    noise: float = 0.0


class MomentumStep(NamedTuple):
    """One planned heavy-ball step: ``v = keep v + sum_j c[j] D_{i-j}``, ``x_t = ratio x_s + total v``
    (``total = alpha_t sum_j w_j``, :mod:`fewstep.solvers.momentum`)."""

    ratio: float
    total: float
    keep: float
    c: list[float]


def multistep_orders(nodes: NodeTable, order: int, lower_order_final: bool) -> list[int]:
    """Per-step orders of a multistep method: warm-up, lower-order final steps, first order on infinite steps."""
    n = nodes.steps
    short = lower_order_final and n < 15
    orders, history = [], 0  # history: previous steps with finite size that the current step can use
    for i, finite in enumerate(nodes.finite_steps):
        k = order if history >= order else history + 1
        if i == n - 1 and (short or nodes.clean_end):
            k = 1
        if i == n - 2 and short and k > 2:
            k = 2
        if finite:
            history += 1
        else:
            k, history = 1, 0
        orders.append(k)
    return orders


def multistep_weights(h: Sequence[float] | np.ndarray, i: int, order: int, d2_weight: str = "taylor") -> list[float]:
    """Weights ``w_j`` of the data estimates ``D_i, D_{i-1}, ...`` in ``alpha_t sum_j w_j D_{i-j}``.

    For order 3, ``D2 ~ h^2 x0''/2`` and the Taylor-exact weight is ``2 h phi_3(-h)`` (``d2_weight="taylor"``,
    the default: the step is exact for data estimates quadratic in lambda and the method third order).
    ``d2_weight="reference"`` gives D2 the weight ``h phi_3(-h)`` of DPM-Solver's reference code, diffusers and
    k-diffusion, which leaves an O(h^3) local error and makes that method second order.
    """
    hi = h[i]
    w1 = hphi(1, hi)
    if order == 1:
        return [w1]
    r0 = h[i - 1] / hi
    if order == 2:  # DPM-Solver++(2M), "midpoint" form: D1 = (D_i - D_{i-1}) / r0, weight w1 / 2 (eq. 13)
        c = 0.5 * w1 / r0
        return [w1 + c, -c]
    w2 = hphi(2, hi) / hi  # h phi_2(-h)
    w3 = hphi(3, hi) / hi**2  # h phi_3(-h)
    r1 = h[i - 2] / hi
    # D1_0 = (D_i - D_{i-1})/r0, D1_1 = (D_{i-1} - D_{i-2})/r1,
    # D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1)/(r0+r1)  (divided differences, scaled by h)
    d10 = np.array([1.0, -1.0, 0.0]) / r0
    d11 = np.array([0.0, 1.0, -1.0]) / r1
    d1 = d10 + r0 / (r0 + r1) * (d10 - d11)
    d2 = (d10 - d11) / (r0 + r1)
    c2 = 2.0 * w3 if d2_weight == "taylor" else w3
    return (np.array([w1, 0.0, 0.0]) + w2 * d1 + c2 * d2).tolist()


def ratio_tensors(plan: Sequence[DataStep], dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The plan's ratios as 0-dim CPU tensors in the state's dtype (the value a Python float is rounded to in the
    product): torch then multiplies without wrapping a Python float into a new tensor at every step. Plain tensors
    even under ``torch.inference_mode`` (they may be kept for later runs, :meth:`NodeTable.remember`)."""
    with torch.inference_mode(False):
        return torch.tensor([step.ratio for step in plan], dtype=dtype, device="cpu").unbind(0)


def run_data_plan(
    x: Tensor,
    nodes: NodeTable,
    ctx: RunContext,
    plan: Sequence[DataStep],
    history_size: int,
    ratios: Sequence[Tensor] | None = None,
) -> Steps:
    """The step loop of a data-prediction multistep SDE solver from its precomputed plan: step i is
    ``x_t = ratio_i x_s + sum_j w_ij D_{i-j} + c_i z`` for ``plan[i] = (ratio_i, [w_i0, w_i1, ...], c_i)``
    (``ratios``: :func:`ratio_tensors` of the plan, made here when not given)."""
    level = noise_levels(nodes)
    if ratios is None:
        ratios = ratio_tensors(plan, x.dtype)
    node, emit = nodes.node, ctx.emit
    history: deque[Tensor] = deque(maxlen=history_size)  # D_i, D_{i-1}, ...
    for i in ctx.loop():
        x0, _ = yield x, node(i)
        history.appendleft(x0)
        step = plan[i]
        x = x * ratios[i]  # a new tensor: the caller's noise and the states already passed on are never changed
        for w, d in zip(step.weights, history, strict=False):
            x.add_(d, alpha=w)
        if step.noise:
            x = ctx.transition(i, x, level[i], level[i + 1], step.noise)[0]
        emit(i, x, x0)
    return x


class DataMultistep(Solver):
    """The data-prediction multistep solvers (DPM-Solver++(2M)/(3M), RES): ``x_t = (sigma_t/sigma_s) x_s +
    alpha_t sum_j w_j D_{i-j}`` with the weights of :meth:`weights`, optionally with the UniC corrector or momentum."""

    paper = PAPER_PP
    needs_eps = False

    @property
    def corrects_requests(self) -> bool:
        return self.corrector is not None

    def __init__(
        self,
        lower_order_final: bool = True,
        d2_weight: str = "taylor",
        corrector: str | None = None,
        momentum: float | None = None,
        momentum_type: str = "hb",
    ):
        if not isinstance(lower_order_final, bool):
            raise TypeError(f"lower_order_final: must be a bool, got {lower_order_final!r}")
        if d2_weight not in ("reference", "taylor"):
            raise ValueError(f"d2_weight: choose 'reference' or 'taylor', got {d2_weight!r}")
        self.lower_order_final = lower_order_final
        self.d2_weight = d2_weight
        self.corrector = check_corrector(corrector)
        self.momentum = check_momentum(momentum, momentum_type)
        self.momentum_type = momentum_type
        if self.momentum is not None and self.corrector is not None:
            raise ValueError("momentum, corrector: the UniC corrector is not combined with momentum; give one")

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return multistep_orders(nodes, self.order, self.lower_order_final)

    def weights(self, h: Sequence[float], i: int, order: int) -> list[float]:
        """The weights ``w_j`` of step i at the given order (see :func:`multistep_weights`)."""
        return multistep_weights(h, i, order, self.d2_weight)

    def cfg_pp_refusal(self) -> str | None:
        if self.corrector is not None:
            return f"{self.name!r} with the UniC corrector has no CFG++ form (leave corrector out)"
        if self.momentum is not None and self.momentum != 1.0:
            return f"{self.name!r} with momentum has no CFG++ form (leave momentum out)"
        return super().cfg_pp_refusal()

    def cfg_pp_guided(self, order: int) -> bool:
        """In the CFG++ form, whether a step of this order takes the guided ``x0_hat`` as its current data estimate
        (DPM-Solver++(2M) CFG++) rather than the unconditional one (:mod:`fewstep.solvers.cfg_pp`)."""
        return True

    def data_plan(self, nodes: NodeTable) -> list[DataStep]:
        """Step i as ``x_t = ratio_i x_s + alpha_t sum_j w_j D_{i-j}`` (:class:`DataStep`, weights times alpha_t),
        computed once per table (:meth:`NodeTable.remember`; the rows are shared: never written to)."""
        return nodes.remember(self, "data_plan", lambda: self._data_plan(nodes))

    def _data_plan(self, nodes: NodeTable) -> list[DataStep]:
        s = nodes.sigma
        ratios = (s[1:] / s[:-1]).tolist()  # sigma > 0 at every model node; 0 at a clean end
        a, h = nodes.alpha.tolist(), nodes.h.tolist()  # Python floats: the same IEEE arithmetic, faster per step
        weights = self.weights
        # map and _make: no Python frame per row
        rows = [
            (ratios[i], list(map(mul, repeat(a[i + 1]), weights(h, i, k))), 0.0)
            for i, k in enumerate(self.step_orders(nodes))
        ]
        return list(map(DataStep._make, rows))

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        # the step loop itself is returned (not delegated to with ``yield from``): one generator per request
        plan = self.data_plan(nodes)
        if self.runs_cfg_pp:
            return run_guided_plan(x, nodes, ctx, guided_rows(plan, nodes, self.cfg_pp_guided), self.order)
        if self.corrector is not None:
            corr = unic_plan(nodes, self.step_orders(nodes), CORRECTORS[self.corrector])
            return predict_correct(x, nodes, ctx, [PlanStep(r, w, ()) for r, w, _ in plan], corr)
        if self.momentum is not None and self.momentum != 1.0:  # beta = 1 is the solver itself
            return self._solve_momentum(x, nodes, ctx, plan)
        ratios = nodes.remember(self, ("ratio tensors", x.dtype), lambda: ratio_tensors(plan, x.dtype))
        return run_data_plan(x, nodes, ctx, plan, self.order, ratios)

    def _solve_momentum(self, x: Tensor, nodes: NodeTable, ctx: RunContext, coef: list[DataStep]) -> Steps:
        """The multistep loop with the combined derivative replaced by a heavy-ball velocity (see momentum.py)."""
        beta, h = float(self.momentum), nodes.h  # type: ignore[arg-type]
        plan = []
        fresh = True  # the velocity starts (or restarts) at the step's combined derivative
        for i, k in enumerate(self.step_orders(nodes)):
            ratio, weights, _ = coef[i]
            total, c, keep = momentum_combination(h, i, k, weights, beta, self.momentum_type)
            if fresh or not nodes.finite(i):
                c, keep = [w / total for w in weights], 0.0
            fresh = not nodes.finite(i)
            plan.append(MomentumStep(ratio, total, keep, c))
        history: list[Tensor] = []
        v: Tensor | None = None
        for i in ctx.loop():
            x0, _ = yield x, nodes.node(i)
            history = [x0, *history[: self.order - 1]]
            step = plan[i]  # v = keep v + sum_j c_j D_{i-j};  x_t = ratio x_s + total v
            v_new = v * step.keep if v is not None and step.keep != 0.0 else torch.zeros_like(x0)
            for w, d in zip(step.c, history, strict=False):
                v_new.add_(d, alpha=w)
            v = v_new
            x = x * step.ratio + step.total * v
            ctx.emit(i, x, x0)
        return x
