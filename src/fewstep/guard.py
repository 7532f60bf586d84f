"""``DivergenceGuard``: notice a run whose state leaves the scale a diffusion's marginals can have.

At node ``i`` the state is ``x_i = alpha_i x0 + sigma_i eps``, so with data of unit scale its largest entry is a few
times ``sqrt(alpha_i^2 + sigma_i^2)``. The guard keeps, per step, the ratio

    r_i = max |x_{i+1}| / sqrt(alpha_{i+1}^2 + sigma_{i+1}^2)

from the state's extremes kept on its device (one ``aminmax`` reduction, no host-device synchronisation) at up to
``OBSERVED`` evenly spread steps and the last (a divergence persists, so a run of 50 steps is looked at every 4th
step at a cost of a few microseconds each), and after the run compares them, once, with the start's ratio ``r_start`` (at least 1): a step with
``r_i > LIMIT * r_start`` means the sample grew ``LIMIT`` times beyond anything the noise or data of the start
explain, and the run warns (:class:`DivergenceWarning`) naming the solver, the first such step looked at and its
time, with the remedies of docs/solvers.md. ``strict=True`` checks after every step instead (one synchronisation
per step) and raises :class:`DivergenceError` at the first.

A diverged sampler is typically thousands of times off (a step-size instability compounds), while a sound run
stays within a few times ``r_start`` (the data's scale over the noise's): ``LIMIT = 100`` leaves a wide margin both
ways. Non-finite values are the finite check's (``check_finite``), not the guard's.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from .nodes import NodeTable

__all__ = ["LIMIT", "OBSERVED", "DivergenceError", "DivergenceGuard", "DivergenceWarning"]

#: How many times its start's scale a state may grow before the run is reported as diverged (module docstring).
LIMIT = 100.0
#: How many steps of a run the guard looks at by default (evenly spread, the last included); strict: every step.
OBSERVED = 16

ADVICE = (
    "more steps, a data-prediction solver (dpmpp_2m_sde, seeds_2, dpmpp_sde) or a smaller eta usually fix it "
    "(docs/solvers.md, 'Divergence')"
)


class DivergenceWarning(UserWarning):
    """A run's state grew far beyond the scale of the diffusion's marginals (see :mod:`fewstep.guard`)."""


class DivergenceError(RuntimeError):
    """With ``strict=True``: a step's state grew far beyond the scale of the diffusion's marginals."""


class DivergenceGuard:
    """The per-step scale ratios of one run over ``nodes`` (module docstring)."""

    def __init__(self, nodes: NodeTable, start: Tensor, solver: str, strict: bool = False) -> None:
        # now: the solver may write into the start tensor
        self.start = torch.aminmax(start.detach() if start.requires_grad else start)
        # by default every stride-th step (at most OBSERVED per run) and the last: a divergence persists
        self.stride = 1 if strict else -(-nodes.steps // OBSERVED)
        self.last = nodes.steps - 1
        self.steps: list[int] = []
        self.extremes: list[tuple[Tensor, Tensor]] = []  # (min, max) of each observed step's end state
        self.nodes, self.solver, self.strict = nodes, solver, strict

    def observe(self, i: int, x: Tensor) -> None:
        """Step i's end state ``x`` (at node i + 1): keep its extremes, one reduction (strict: check it now)."""
        if (i + 1) % self.stride and i != self.last:
            return
        self.steps.append(i)
        self.extremes.append(torch.aminmax(x.detach() if x.requires_grad else x))
        if self.strict:  # the start's ratio and this step's, one synchronisation
            start, now = self._ratios([self.start, self.extremes[-1]], [0, i + 1])
            if now > start * LIMIT:
                raise DivergenceError(self._message(i, now / start))

    def check(self) -> None:
        """After the run: one synchronisation; a :class:`DivergenceWarning` for the first step beyond the bound."""
        if not self.steps:
            return
        nodes = [0, *(i + 1 for i in self.steps)]
        ratios = self._ratios([self.start, *self.extremes], nodes)
        bound = ratios[0] * LIMIT
        over = next((k for k, r in enumerate(ratios[1:]) if r > bound), None)
        if over is not None:
            warnings.warn(
                self._message(self.steps[over], ratios[over + 1] / ratios[0]), DivergenceWarning, stacklevel=3
            )

    def _ratios(self, extremes: list[tuple[Tensor, Tensor]], nodes: list[int]) -> list[float]:
        """``max(1, r_start)`` and then ``r = max |x| / sqrt(alpha^2 + sigma^2)`` of states with these ``extremes`` at
        these ``nodes`` (the start's first), in float32: the extremes are read back in one copy (one host-device
        synchronisation) and the few ratios computed on the host."""
        flat = torch.stack([v for pair in extremes for v in pair]).float().cpu().numpy().reshape(-1, 2)
        scale = ((self.nodes.alpha[nodes] ** 2 + self.nodes.sigma[nodes] ** 2) ** 0.5).astype(np.float32)
        ratios = _peak(flat[:, 0], flat[:, 1]) / scale
        ratios[0] = np.maximum(ratios[0], np.float32(1.0))
        return ratios.tolist()

    def _message(self, i: int, times: float) -> str:
        t_next = float(self.nodes.t[i + 1])
        time = "the clean end" if math.isnan(t_next) else f"t={t_next:.6g}"
        return (
            f"solver {self.solver!r} diverged: after step {i} (to {time}) the state, in units of the marginal scale "
            f"sqrt(alpha^2 + sigma^2), is {times:.3g} times as large as at the start; {ADVICE}"
        )


def _peak(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``max |x|`` from ``x``'s extremes (NaN propagates)."""
    return np.maximum(hi, -lo)
