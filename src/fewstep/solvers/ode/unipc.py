"""UniPC (Zhao et al. 2023): the UniP-p multistep predictor with the UniC-p corrector, data prediction.

The update rules and their coefficients are in :mod:`fewstep.solvers.unic` (shared with the UniC corrector
that ``dpmpp_2m``/``dpmpp_3m`` accept as ``corrector="unic"``). Per step, from node ``s`` to ``t``:

    predictor  x~_t  = (sigma_t/sigma_s) x_s + alpha_t h phi_1(-h) m_0 + alpha_t B(h) sum_{k<p} a_k D_k
    model      m_t   = x0_hat(x~_t, t)                       (the one evaluation the next step needs anyway)
    corrector  x_t^c = (sigma_t/sigma_s) x_s + alpha_t h phi_1(-h) m_0 + alpha_t B(h) (sum_{k<p} c_k D_k + c_p (m_t - m_0))

UniP-p has order p; UniPC-p (with UniC-p) has order p + 1, as the paper proves (and tests/test_unipc.py
measures). ``unipc_bh1``
uses ``B(h) = h``, ``unipc_bh2`` ``B(h) = e^h - 1`` (written here as ``1 - e^{-h}`` for the data-prediction
step); with bh2, UniP-2 is DPM-Solver++(2M).

Orders: multistep warm-up (p <= steps taken so far + 1), first order on a step of infinite lambda-size (to
sigma = 0 or from alpha = 0) and no correction of it (bh1's B(h) = h is infinite there, and diffusers' bh1
returns NaN on its step to sigma = 0). ``lower_order_final``: True lowers the final steps as
:func:`fewstep.solvers.multistep.multistep_orders` (below 15 steps; as diffusers' docstring says), "always" as
diffusers' ``UniPCMultistepScheduler`` code does (``min(p, steps left)`` at any step count), False never
(the step to sigma = 0 is first order regardless).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import numpy as np
from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, register
from ..multistep import multistep_orders
from ..unic import CorrectorStep, PlanStep, check_variant, predict_correct, unic_plan, unip_weights

PAPER_UNIPC = "Zhao et al. 2023, UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"


def unipc_orders(nodes: NodeTable, order: int, lower_order_final: bool | str) -> list[int]:
    """Per-step predictor orders (see the module docstring for ``lower_order_final``)."""
    orders = multistep_orders(nodes, order, bool(lower_order_final))
    if lower_order_final == "always":
        orders = [min(k, nodes.steps - i) for i, k in enumerate(orders)]
    return orders


class _UniPC(Solver):
    """UniPC-p with data prediction; ``p = solver_order`` (diffusers' name), order p + 1 with the corrector."""

    order = 3  # the default solver_order=2 with the corrector
    paper = PAPER_UNIPC
    needs_eps = False
    variant: ClassVar[str]

    @property
    def corrects_requests(self) -> bool:
        return True

    def __init__(
        self,
        solver_order: int = 2,
        corrector: bool = True,
        lower_order_final: bool | str = True,
        disable_corrector: Iterable[int] = (),
    ):
        if (
            not isinstance(solver_order, int | np.integer)
            or isinstance(solver_order, bool)
            or solver_order not in (1, 2, 3)
        ):
            raise ValueError(f"solver_order: choose 1, 2 or 3, got {solver_order!r}")
        if not isinstance(corrector, bool):
            raise TypeError(f"corrector: must be a bool, got {corrector!r}")
        if not (isinstance(lower_order_final, bool) or lower_order_final == "always"):
            raise ValueError(f"lower_order_final: choose True, False or 'always', got {lower_order_final!r}")
        disable = tuple(disable_corrector)
        if not all(isinstance(i, int | np.integer) and not isinstance(i, bool) and i >= 0 for i in disable):
            raise ValueError(f"disable_corrector: need step indices (integers >= 0), got {disable_corrector!r}")
        check_variant(self.variant)
        self.solver_order = int(solver_order)
        self.corrector = corrector
        self.lower_order_final = lower_order_final
        self.disable_corrector = tuple(int(i) for i in disable)

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return unipc_orders(nodes, self.solver_order, self.lower_order_final)

    def plan(self, nodes: NodeTable) -> tuple[list[PlanStep], list[CorrectorStep | None]]:
        """The predictor row of each step and the corrector row of its end node (None: no correction)."""
        a, s, lam = nodes.alpha, nodes.sigma, nodes.lam
        orders = self.step_orders(nodes)
        plan: list[PlanStep] = []
        for i, k in enumerate(orders):
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = float(s[i + 1] / s[i])  # 0 at a clean end
            plan.append(PlanStep(ratio, [float(a[i + 1] * w) for w in unip_weights(lam, i, k, self.variant)], []))
        corr: list[CorrectorStep | None] = [None] * nodes.steps
        if self.corrector:
            corr = unic_plan(nodes, orders, self.variant, self.disable_corrector)
        return plan, corr

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        plan, corr = self.plan(nodes)
        return (yield from predict_correct(x, nodes, ctx, plan, corr))


@register
class UniPCBH1(_UniPC):
    name = "unipc_bh1"
    variant = "bh1"
    summary = "UniPC, B(h) = h: UniP-2 multistep predictor + UniC-2 corrector (no extra NFE), data prediction"
    peers = 'diffusers UniPCMultistepScheduler(solver_type="bh1")'


@register
class UniPCBH2(_UniPC):
    name = "unipc_bh2"
    variant = "bh2"
    summary = "UniPC, B(h) = e^h - 1: UniP-2 multistep predictor + UniC-2 corrector (no extra NFE), data prediction"
    peers = 'diffusers UniPCMultistepScheduler(solver_type="bh2") (its default)'
