"""DC-Solver (Zhao, Wang, Zhou & Lu 2024, "DC-Solver: Improving Predictor-Corrector Diffusion Sampler via Dynamic
Compensation"): UniPC (:mod:`fewstep.solvers.ode.unipc`, B(h) = e^h - 1) whose data estimates are replaced,
before each predictor step, by a Lagrange interpolation of the last ``K + 1`` estimates at a shifted time.

A predictor-corrector sampler evaluates the model at the predicted state ``x~_i`` and continues from the
corrected state ``x_i^c``: the estimate ``m_i = x0_hat(x~_i, t_i)`` it keeps is misaligned with the state it
steps from. The dynamic compensation (paper eq. 10) replaces it by

    m^_i = sum_{k=0}^{K} L_k(tau_i) m^_{i-k},     tau_i = t_{i-1} + rho_i (t_i - t_{i-1}),
    L_k(tau) = prod_{m != k} (tau - t_{i-m}) / (t_{i-k} - t_{i-m})                   (``m^_i`` on the left: ``m_i``)

in the schedule's time ``t`` (``dc_order = K``, 2 by default; the earlier entries are the compensated estimates
themselves), from the step ``i = K`` on. ``m^_i`` drives the predictor of step ``i`` and stays in the history;
the UniC corrector of node ``i`` uses ``m_i`` itself. ``rho_i = 1`` gives ``m_i`` back: without ratios the
solver is ``unipc_bh2``. The ratios are searched for a model and a node table by
:func:`fewstep.compute_dc_ratios` (a few samples pushed towards a high-NFE reference trajectory, step by step,
and cached on disk as DPM-Solver-v3's statistics are) and passed as ``ratios=``; they are fixed before the run,
so the compensation is a fixed combination of the history (no extra evaluation, memory O(K x state)).

With ratios held fixed as the steps grow, ``m^_i - m_i = O(h)`` and the method is first order; the searched
ratios tend to 1 as the steps shrink (the misalignment vanishes), and the solver is a few-step method.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...cache import save_atomic
from ...context import RunContext
from ...nodes import NodeTable
from ..base import Steps, register
from ..unic import predict_correct
from .unipc import _UniPC

PAPER_DC = "Zhao et al. 2024, DC-Solver: Improving Predictor-Corrector Diffusion Sampler via Dynamic Compensation"
CACHE_VERSION = "dc-ratios-1"


def lagrange_weights(points: Sequence[float], tau: float) -> list[float]:
    """``L_k(tau)`` of the Lagrange basis on ``points`` (paper eq. 10): ``sum_k L_k(tau) f(points[k])``
    interpolates ``f`` at ``tau``."""
    return [math.prod((tau - pm) / (pk - pm) for m, pm in enumerate(points) if m != k) for k, pk in enumerate(points)]


def compensation_weights(t: np.ndarray, i: int, ratio: float, dc_order: int) -> list[float] | None:
    """The weights of ``m_i, m^_{i-1}, ..., m^_{i-K}`` in the compensated estimate of step ``i`` (module
    docstring), or None where none is applied (``i < K`` or ``ratio == 1``)."""
    if i < dc_order or ratio == 1.0:
        return None
    tau = float(t[i - 1] + ratio * (t[i] - t[i - 1]))
    return lagrange_weights([float(t[i - k]) for k in range(dc_order + 1)], tau)


@dataclass(frozen=True)
class DCRatios:
    """The compensation ratios of one node table: ``ratios[i]`` for step ``i`` (1 where no compensation is
    applied), searched on the node times ``times`` (nan at a clean end) for ``dc_order``; ``key`` names the
    model, schedule and search settings (:func:`fewstep.compute_dc_ratios`)."""

    times: np.ndarray
    ratios: np.ndarray
    dc_order: int = 2
    key: str = ""

    def __post_init__(self) -> None:
        times = np.asarray(self.times, dtype=np.float64)
        ratios = np.asarray(self.ratios, dtype=np.float64)
        if times.ndim != 1 or ratios.shape != (times.size - 1,):
            raise ValueError(f"ratios: need one ratio per step ({times.size - 1}), got shape {ratios.shape}")
        if not np.all(np.isfinite(ratios)):
            raise ValueError("ratios: need finite values")
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "ratios", ratios)

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (torch.save of plain tensors, the order and the key; atomic)."""
        blob: dict[str, Any] = {"version": CACHE_VERSION, "key": self.key, "dc_order": self.dc_order}
        blob.update(times=torch.from_numpy(self.times.copy()), ratios=torch.from_numpy(self.ratios.copy()))
        save_atomic(blob, Path(path))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, key: str | None = None) -> DCRatios:
        """Read ratios written by :meth:`save`; ValueError when ``key`` is given and differs from the stored one."""
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION:
            raise ValueError(f"path: {path} is not a DC-Solver ratio file of version {CACHE_VERSION}")
        if key is not None and blob["key"] != key:
            raise ValueError(f"key: {path} holds ratios for {blob['key']!r}, not for {key!r}")
        return cls(blob["times"].numpy(), blob["ratios"].numpy(), int(blob["dc_order"]), str(blob["key"]))


@register
class DCSolver(_UniPC):
    """DC-Solver: UniPC (bh2) with the dynamic compensation of its data estimates (module docstring)."""

    name = "dc_solver"
    variant = "bh2"
    summary = "DC-Solver: UniPC (bh2) with dynamically compensated data estimates (ratios from compute_dc_ratios)"
    paper = PAPER_DC
    peers = "DC-Solver reference code (wl-zhao/DC-Solver, DCSolverMultistepScheduler)"

    def __init__(
        self,
        ratios: DCRatios | Sequence[float] | None = None,
        dc_order: int = 2,
        solver_order: int = 2,
        corrector: bool = True,
        lower_order_final: bool | str = True,
        disable_corrector: Iterable[int] = (),
    ):
        super().__init__(solver_order, corrector, lower_order_final, disable_corrector)
        if isinstance(dc_order, bool) or dc_order not in (1, 2, 3):
            raise ValueError(f"dc_order: choose 1, 2 or 3 (the paper's is 2), got {dc_order!r}")
        if isinstance(ratios, DCRatios):
            if ratios.dc_order != dc_order:
                raise ValueError(
                    f"dc_order: the ratios were searched with dc_order={ratios.dc_order}, got {dc_order}; "
                    f"pass dc_order={ratios.dc_order}"
                )
        elif ratios is not None:
            if isinstance(ratios, str | bytes) or not isinstance(ratios, Sequence | np.ndarray):
                raise TypeError(
                    "ratios: need a DCRatios (fewstep.compute_dc_ratios), a sequence of floats (one per step) or "
                    f"None (no compensation: unipc_bh2), got {type(ratios).__name__}"
                )
            values = np.asarray(ratios, dtype=np.float64)
            if values.ndim != 1 or not np.all(np.isfinite(values)):
                raise ValueError(f"ratios: need a flat sequence of finite floats, got {ratios!r}")
            ratios = tuple(values.tolist())
        self.ratios = ratios
        self.dc_order = int(dc_order)

    def step_ratios(self, nodes: NodeTable) -> list[float]:
        """The ratio of each step of ``nodes`` (ValueError when the ratios were searched for another table)."""
        if self.ratios is None:
            return [1.0] * nodes.steps
        if isinstance(self.ratios, DCRatios):
            r = self.ratios
            if r.times.shape != nodes.t.shape or not np.allclose(r.times, nodes.t, rtol=1e-9, atol=0, equal_nan=True):
                raise ValueError(
                    f"ratios: searched on {r.times.size - 1} steps at other node times than this run's "
                    f"{nodes.steps} steps; search them for this nfe, spacing and final (fewstep.compute_dc_ratios)"
                )
            return r.ratios.tolist()
        if len(self.ratios) != nodes.steps:
            raise ValueError(f"ratios: {len(self.ratios)} ratios given for a run of {nodes.steps} steps")
        return list(self.ratios)

    def compensation(self, nodes: NodeTable) -> list[list[float] | None]:
        """Per step the weights of :func:`compensation_weights` (None: the estimate is kept)."""
        t = nodes.t
        return [compensation_weights(t, i, r, self.dc_order) for i, r in enumerate(self.step_ratios(nodes))]

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        comp = self.compensation(nodes)
        plan, corr = self.plan(nodes)
        return (yield from predict_correct(x, nodes, ctx, plan, corr, comp))

    def __repr__(self) -> str:
        r = self.ratios
        shown = f"DCRatios({r.ratios.size} steps)" if isinstance(r, DCRatios) else repr(r)
        return f"DCSolver(ratios={shown}, dc_order={self.dc_order}, solver_order={self.solver_order})"


__all__ = ["DCRatios", "DCSolver", "compensation_weights", "lagrange_weights"]
