"""Heun++ 2: Heun's predictor-corrector with a look-ahead and step-position weights (ComfyUI ``sample_heunpp2``,
after the sd-webui-samplers-scheduler extension).

In the frame of :mod:`fewstep.solvers.ode.euler` (``y = x / c``, noise level ``tau``, ``dy/dtau = f``), with
``tau_0`` the first node's level, step i from ``tau_i`` to ``tau_{i+1}`` (``dtau = tau_{i+1} - tau_i``) is

- Heun++ (three evaluations, on every step but the last two): the Euler predictor
  ``y_2 = y_i + dtau f_1`` (``f_1 = f(y_i, tau_i)``), a second Euler step ``y_3 = y_2 + (tau_{i+2} - tau_{i+1}) f_2``
  (``f_2 = f(y_2, tau_{i+1})``) to the next node, ``f_3 = f(y_3, tau_{i+2})``, and
  ``y_{i+1} = y_i + dtau (w_1 f_1 + w_2 f_2 + w_3 f_3)`` with ``w_2 = tau_{i+1}/(3 tau_0)``,
  ``w_3 = tau_{i+2}/(3 tau_0)``, ``w_1 = 1 - w_2 - w_3``;
- the second-to-last step: Heun with ``w_2 = tau_{i+1}/(2 tau_0)``, ``w_1 = 1 - w_2`` (two evaluations);
- the last step: Euler (one evaluation).

The weights depend on the step's position in the run (they fall from about 1/3 each at the start to the Euler
weights at the end), not on the step size, so the local error stays O(dtau^2) and the method is first order
(measured in ``tests/test_comfyui_only.py``); its point is the averaging of three slopes at large noise levels.
Steps with ``tau_0 = inf`` (a first node with alpha = 0 in the sigma frame) take the Euler weights.

NFE: ``3 (N - 2) + 3`` for ``N >= 2`` steps (ComfyUI's plan). Given an NFE budget, the plan is
``[3, ..., 3, 2, 1]``, with ``[..., 2, 1, 1]`` or ``[..., 2, 2, 1]`` for the budgets that leave 1 or 2 evaluations
over (the entries: evaluations of each step), so every budget can be spent.
"""

from __future__ import annotations

import math

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, register
from ..stochastic import Churn, ChurnOptions, noise_levels

PAPER_HEUNPP = "Carzit, sd-webui-samplers-scheduler (Heun++ 2); Karras et al. 2022 (EDM), Alg. 1"


def heunpp_plan(steps: int) -> list[int]:
    """Evaluations of each of ``steps`` steps: ComfyUI's ``[3, ..., 3, 2, 1]``."""
    return [1] if steps == 1 else [3] * (steps - 2) + [2, 1]


def heunpp_budget(nfe: int) -> list[int]:
    """The evaluations of each step that spend exactly ``nfe`` (module docstring)."""
    if nfe < 3:
        return [1] * nfe
    k, rest = divmod(nfe - 3, 3)
    return [3] * k + {0: [2, 1], 1: [2, 1, 1], 2: [2, 2, 1]}[rest]


def heunpp_weights(tau: list[float], i: int, k: int) -> list[float]:
    """The weights ``w_1, ..., w_k`` of the slopes of step i with k evaluations (module docstring)."""
    if k == 1 or math.isinf(tau[0]):
        return [1.0] + [0.0] * (k - 1)
    later = [tau[i + j] / (k * tau[0]) for j in range(1, k)]  # w_j = tau_{i+j-1} / (k tau_0), j >= 2
    return [1.0 - math.fsum(later), *later]


@register
class HeunPP2(Solver):
    name = "heunpp2"
    order = 1
    nfe_per_step = 3
    lambda_based = False
    summary = "Heun++ 2: Euler predictor, look-ahead to the next node, three slopes weighted by the step's position"
    paper = PAPER_HEUNPP
    peers = "ComfyUI sample_heunpp2"

    def step_orders(self, nodes: NodeTable) -> list[int]:
        if nodes.nfe_budget is None:
            return heunpp_plan(nodes.steps)
        orders = heunpp_budget(nodes.nfe_budget)
        assert len(orders) == nodes.steps
        return orders

    def steps_for_nfe(self, nfe: int, first_infinite: bool, clean_end: bool) -> int:
        if nfe < 1:
            raise ValueError(f"nfe: {self.name!r} needs at least 1 evaluation, got {nfe}")
        return len(heunpp_budget(nfe))

    def churn(self, nodes: NodeTable, ctx: RunContext, i: int) -> Churn | None:
        """Step i's churn before its first evaluation (none here; :class:`HeunPP2Churn`)."""
        return None

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        tau, c = nodes.ode_frame()
        taus = [float(v) for v in tau]
        level = noise_levels(nodes)
        orders = self.step_orders(nodes)
        vel = [nodes.ode_velocity(p) if p is not None else (0.0, 0.0) for p in nodes.points]
        # the Euler step from node j: x_{j+1} = cx x_j + cf f_j  (y_{j+1} = y_j + dtau f_j in y = x / c)
        coef = [(float(c[j + 1] / c[j]), float(c[j + 1] * (tau[j + 1] - tau[j]))) for j in range(nodes.steps)]
        churns = [self.churn(nodes, ctx, i) for i in range(nodes.steps)]
        starts = [nodes.node(i) if ch is None else ch.point for i, ch in enumerate(churns)]
        start_vel = [vel[i] if ch is None else nodes.ode_velocity(ch.point) for i, ch in enumerate(churns)]
        first = list(coef)  # the Euler step from the step's start: from (tau_hat, c_hat) after a churn
        for i, ch in enumerate(churns):
            if ch is not None:
                tau_hat, c_hat = nodes.frame_at(ch.point)
                first[i] = (float(c[i + 1]) / c_hat, float(c[i + 1]) * (float(tau[i + 1]) - tau_hat))
        weights = [heunpp_weights(taus, i, k) for i, k in enumerate(orders)]
        for i in ctx.loop():
            ch = churns[i]
            if ch is not None:  # x_hat ~ N(scale x_i, std^2 I), recorded as step i's transition
                x = ctx.transition(i, ch.scale * x, level[i], level[i + 1], ch.std)[0]
            x0, eps = yield x, starts[i]
            a, b = start_vel[i]
            slopes = [a * x0 + b * eps]  # f_1
            x_j = x
            for j in range(1, orders[i]):  # Euler to node i + j, then the slope there
                cx, cf = first[i] if j == 1 else coef[i + j - 1]
                x_j = cx * x_j + cf * slopes[-1]
                x0_j, eps_j = yield x_j, nodes.node(i + j)
                a_j, b_j = vel[i + j]
                slopes.append(a_j * x0_j + b_j * eps_j)
            cx, cf = first[i]
            x = cx * x  # y_{i+1} = y_i + dtau sum_j w_j f_j
            for w, f in zip(weights[i], slopes, strict=True):
                if w:
                    x.add_(f, alpha=cf * w)
            ctx.emit(i, x, x0)
        return x


class HeunPP2Churn(ChurnOptions, HeunPP2):
    """ComfyUI's ``sample_heunpp2`` with ``s_churn > 0``: EDM's churn to ``s_hat = (1 + gamma) s_i`` before each step
    (:class:`~fewstep.solvers.stochastic.ChurnOptions`), then the step from ``s_hat``: the first slope at the churned
    point, ``dtau = tau_{i+1} - tau_hat`` in the Euler predictor and the weighted update, the look-ahead and the
    weights as without churn (the weights use the grid's first level ``tau_0``)."""

    stochastic = True
    records_transitions = True
    peers = "ComfyUI sample_heunpp2(s_churn, s_tmin, s_tmax, s_noise)"

    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0):
        ChurnOptions.__init__(self, s_churn, s_tmin, s_tmax, s_noise)
