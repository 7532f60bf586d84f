"""A multistep exponential integrator whose every step follows its own :class:`StepChoice` (the unified sampling
framework of Liu et al. 2023, "A Unified Sampling Framework for Solver Searching of Diffusion Probabilistic Models",
USF, Sec. 3-4: a *solver schedule* picks the solving strategy step by step).

A step from node ``s = t_i`` to ``t = t_{i+1}`` (``h = lambda_t - lambda_s``) integrates one prediction ``f`` of
the model exactly against the linear part of the probability-flow ODE, with ``f`` replaced by its truncated Taylor
series at ``lambda_s`` (DPM-Solver, eq. 3.4; DPM-Solver++, eq. 9; :mod:`fewstep.solvers.phi`)::

    data  (f = x0):  x_t = (sigma_t/sigma_s) x_s + alpha_t sum_{m<k} c_m(-h) a_m
    noise (f = eps): x_t = (alpha_t/alpha_s) x_s - sigma_t sum_{m<k} c_m(h) a_m,      c_m(z) = m! h phi_{m+1}(z)

``a_m ~ h^m f^{(m)}(lambda_s) / m!`` are the coefficients, in ``u = (lambda - lambda_s)/h``, of the polynomial
through the last ``k`` estimates ``f_i, ..., f_{i-k+1}`` (the finite differences: ``a_0 = f_i``, ``a_1`` the
scaled first divided difference, ``a_2`` the second), and ``k`` is the step's order. Each step chooses:

- ``order`` k in 1..3, lowered to the estimates available (``k <= steps since the start or since a step of
  infinite lambda-size + 1``), and 1 on a step of infinite lambda-size (from alpha = 0 or to sigma = 0);
- ``prediction``: ``"data"`` (x0, DPM-Solver++) or ``"noise"`` (eps, DPM-Solver), the ``f`` above;
- ``scale`` of the highest-order term (USF's choice of how the last derivative enters, Sec. 3.2): ``"taylor"``
  gives it its exact Taylor weight ``c_{k-1}``, so the step is exact for ``f`` polynomial of degree k - 1
  (order k); ``"low"`` (the default) the lower weight that DPM-Solver's reference code, diffusers and
  k-diffusion use: at k = 2 ``(1 - e^{-h})/2`` (data) or ``(e^h - 1)/2`` (noise) instead of ``h phi_2(-/+h)``
  (the same to O(h^2): still second order; DPM-Solver++(2M)), at k = 3 ``h phi_3`` instead of
  ``2 h phi_3`` on ``a_2`` (an O(h^3) local error: second order, the damping that helps at very few steps);
- ``corrector``: UniPC's UniC-k corrector (bh2, in data prediction; :mod:`fewstep.solvers.unic`), which redoes
  the step from ``x_s`` once the model has been evaluated at the predicted ``x~_t``, reusing that evaluation for
  the next step (no extra evaluation; one order more). There is no evaluation after the last step and UniC is
  not defined on a step of infinite lambda-size, so it is off there.

One evaluation per step: NFE = steps. A step of infinite lambda-size is first order, in data prediction
``(sigma_t/sigma_s) x_s + alpha_t x0`` and in noise prediction DDIM's ``alpha_t x0 + sigma_t eps`` (finite there).
``choices=None`` is DPM-Solver++(2M) with diffusers' ``lower_order_final`` rule (``dpmpp_2m``); otherwise one
choice for every step, or a list with one per step (its length must be the number of steps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, register
from ..multistep import multistep_orders
from ..phi import hphi, phi
from ..unic import CorrectorStep, PlanStep, predict_correct, unic_plan

PAPER_USF = "Liu et al. 2023, A Unified Sampling Framework for Solver Searching of Diffusion Probabilistic Models"
PREDICTIONS = ("data", "noise")
SCALES = ("low", "taylor")
ORDERS = (1, 2, 3)
#: The UniC variant of the corrector: B(h) = e^h - 1, UniPC's default (with it UniP-2 is DPM-Solver++(2M)).
CORRECTOR_VARIANT = "bh2"


@dataclass(frozen=True)
class StepChoice:
    """The solving strategy of one step (module docstring): ``order`` 1..3, ``prediction`` ``"data"`` or
    ``"noise"``, ``corrector`` (UniC, no extra evaluation) and ``scale`` ``"low"`` or ``"taylor"`` of the
    highest-order term. ``to_dict``/``from_dict`` give and take a JSON-serialisable dict."""

    order: int = 2
    prediction: str = "data"
    corrector: bool = False
    scale: str = "low"

    def __post_init__(self) -> None:
        if isinstance(self.order, bool) or not isinstance(self.order, int | np.integer) or self.order not in ORDERS:
            raise ValueError(f"order: choose 1, 2 or 3, got {self.order!r}")
        object.__setattr__(self, "order", int(self.order))
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction: choose 'data' or 'noise', got {self.prediction!r}")
        if not isinstance(self.corrector, bool | np.bool_):
            raise TypeError(f"corrector: must be a bool, got {self.corrector!r}")
        object.__setattr__(self, "corrector", bool(self.corrector))
        if self.scale not in SCALES:
            raise ValueError(f"scale: choose 'low' or 'taylor', got {self.scale!r}")

    def to_dict(self) -> dict[str, Any]:
        """``{"order": ..., "prediction": ..., "corrector": ..., "scale": ...}`` (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepChoice:
        """The choice of a :meth:`to_dict` dict (missing keys take their defaults; unknown keys are refused)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"choices: each must be a StepChoice or a dict, got {type(data).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"choices: unknown key(s) {unknown}; allowed: {allowed}")
        return cls(**data)


def as_choice(choice: StepChoice | Mapping[str, Any]) -> StepChoice:
    """A :class:`StepChoice` from itself or from its dict."""
    return choice if isinstance(choice, StepChoice) else StepChoice.from_dict(choice)


def effective_orders(nodes: NodeTable, wanted: Sequence[int]) -> list[int]:
    """Each step's order: the wanted one lowered to the estimates available (multistep warm-up, restarted after a
    step of infinite lambda-size), and 1 on a step of infinite lambda-size."""
    orders, history = [], 0  # history: earlier finite steps whose estimates the current step can use
    for k, finite in zip(wanted, nodes.finite_steps, strict=True):
        if finite:
            orders.append(min(k, history + 1))
            history += 1
        else:
            orders.append(1)
            history = 0
    return orders


def divided_differences(lam: np.ndarray, i: int, order: int) -> np.ndarray:
    """Row m: the weights of ``f_i, f_{i-1}, ...`` in ``a_m``, the coefficient of ``u^m`` of the polynomial through
    the last ``order`` estimates in ``u = (lambda - lambda_i) / h_i`` (``a_m ~ h^m f^{(m)} / m!``)."""
    h = float(lam[i + 1] - lam[i])
    r = [float(lam[i - j] - lam[i]) / h for j in range(order)]  # r_0 = 0, then negative
    return np.linalg.inv(np.vander(r, increasing=True))  # V[j, m] = r_j^m;  a = V^{-1} f


def term_weights(h: float, order: int, prediction: str, scale: str) -> list[float]:
    """The weights ``c_m`` of ``a_0 .. a_{order-1}``: ``m! h phi_{m+1}(-h)`` (data) or ``m! h phi_{m+1}(h)`` (noise),
    with the highest replaced by the ``"low"`` weight of the module docstring when asked."""
    if prediction == "data":  # c_m(-h) = m! h phi_{m+1}(-h), with hphi(m + 1, h) = h^{m+1} phi_{m+1}(-h)
        c = [math.factorial(m) * hphi(m + 1, h) / h**m for m in range(order)]
    else:  # c_m(h) = m! h phi_{m+1}(h)
        c = [math.factorial(m) * h * float(phi(m + 1, h)) for m in range(order)]
    if scale == "low" and order == 2:  # DPM-Solver(++)(2M): half the first-order weight, (1 - e^{-h})/2 or (e^h - 1)/2
        c[1] = 0.5 * c[0]
    elif scale == "low" and order == 3:  # the reference codes' second-difference weight: h phi_3, not 2 h phi_3
        c[2] *= 0.5
    return c


def predictor_step(nodes: NodeTable, i: int, order: int, choice: StepChoice) -> PlanStep:
    """Step i as a :class:`~fewstep.solvers.unic.PlanStep` (``alpha``/``sigma`` factors included)."""
    a, s, lam = nodes.alpha, nodes.sigma, nodes.lam
    a_t, s_t = float(a[i + 1]), float(s[i + 1])
    if not nodes.finite(i):  # first order, finite at alpha_s = 0 and at sigma_t = 0
        if choice.prediction == "data":  # x_t = (sigma_t/sigma_s) x_s + alpha_t x0  (h phi_1(-h) -> 1)
            return PlanStep(s_t / float(s[i]), [a_t * hphi(1, math.inf)], [])
        return PlanStep(0.0, [a_t], [s_t])  # DDIM: x_t = alpha_t x0 + sigma_t eps
    h = float(lam[i + 1] - lam[i])
    c = term_weights(h, order, choice.prediction, choice.scale)
    w = (np.asarray(c) @ divided_differences(lam, i, order)).tolist()  # weights of f_i, f_{i-1}, ...
    if choice.prediction == "data":  # x_t = (sigma_t/sigma_s) x_s + alpha_t sum_m c_m a_m
        return PlanStep(s_t / float(s[i]), [a_t * wj for wj in w], [])
    return PlanStep(a_t / float(a[i]), [], [-s_t * wj for wj in w])  # x_t = (alpha_t/alpha_s) x_s - sigma_t sum ...


@register
class PerStep(Solver):
    """The per-step solver schedule of USF (module docstring): ``choices`` one :class:`StepChoice` (or its dict)
    for every step or a list of one per step; None is DPM-Solver++(2M) (``dpmpp_2m``)."""

    name = "per_step"
    order = 2  # the default schedule's; up to 4 with order 3, scale "taylor" and the corrector
    summary = "USF solver schedule: per-step order, data/noise prediction, derivative scale and UniC corrector"
    paper = PAPER_USF
    peers = "USF repository (the framework; its predictor-based search is not reproduced)"

    def __init__(
        self, choices: StepChoice | Mapping[str, Any] | Sequence[StepChoice | Mapping[str, Any]] | None = None
    ):
        if choices is None:
            self.choices: StepChoice | tuple[StepChoice, ...] | None = None
        elif isinstance(choices, StepChoice | Mapping):
            self.choices = as_choice(choices)
        elif isinstance(choices, Sequence) and not isinstance(choices, str):
            if not choices:
                raise ValueError("choices: need one StepChoice (or dict) per step, got an empty list")
            self.choices = tuple(as_choice(c) for c in choices)
        else:
            raise TypeError(f"choices: a StepChoice, a dict, a list of them or None, got {type(choices).__name__}")

    @property
    def corrects_requests(self) -> bool:
        return any(c.corrector for c in self._all_choices())

    def _all_choices(self) -> tuple[StepChoice, ...]:
        if self.choices is None:
            return ()
        return self.choices if isinstance(self.choices, tuple) else (self.choices,)

    def step_choices(self, nodes: NodeTable) -> list[StepChoice]:
        """The choice of each step of ``nodes`` (ValueError when a list does not have one per step)."""
        if self.choices is None:
            return [StepChoice()] * nodes.steps
        if isinstance(self.choices, StepChoice):
            return [self.choices] * nodes.steps
        if len(self.choices) != nodes.steps:
            raise ValueError(
                f"choices: got {len(self.choices)} step choices for a run of {nodes.steps} steps (one evaluation "
                "per step: give as many choices as nfe)"
            )
        return list(self.choices)

    def step_orders(self, nodes: NodeTable) -> list[int]:
        if self.choices is None:  # DPM-Solver++(2M) with diffusers' lower-order final steps
            return multistep_orders(nodes, 2, True)
        return effective_orders(nodes, [c.order for c in self.step_choices(nodes)])

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        choices, orders = self.step_choices(nodes), self.step_orders(nodes)
        plan = [predictor_step(nodes, i, k, c) for i, (k, c) in enumerate(zip(orders, choices, strict=True))]
        off = [i for i, c in enumerate(choices) if not c.corrector]
        corr: list[CorrectorStep | None] = unic_plan(nodes, orders, CORRECTOR_VARIANT, off)
        return (yield from predict_correct(x, nodes, ctx, plan, corr))
