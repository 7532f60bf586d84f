"""``DivergenceGuard``: notice a run whose state leaves the scale a diffusion's marginals can have.

At node ``i`` the state is ``x_i = alpha_i x0 + sigma_i eps``, so with data of unit scale each sample's
root-mean-square entry is about ``sqrt(alpha_i^2 + sigma_i^2)``. The guard keeps, per sample ``b`` and observed step,
the ratio

    r_i[b] = rms(x_{i+1}[b]) / sqrt(alpha_{i+1}^2 + sigma_{i+1}^2),    rms(v) = ||v||_2 / sqrt(numel(v)),

from per-sample norms kept on the state's device (one ``vector_norm`` reduction per observed step, no host-device
synchronisation) at up to ``OBSERVED`` evenly spread steps, the last among them (a divergence persists and compounds,
so a run of 50 steps is looked at every 7th step, at a cost of a few microseconds each). After the run it reads the norms back in one copy
and compares each sample's ratios with its start's ratio ``r_start[b]`` (at least 1): a step with
``r_i[b] > LIMIT * r_start[b]`` means that sample grew ``LIMIT`` times beyond anything the noise or data of the start
explain, and the run warns (:class:`DivergenceWarning`) naming the solver, the first such step looked at, its time
and the sample. ``strict=True`` checks after every step instead (one synchronisation per step) and raises
:class:`DivergenceError` at the first.

A diverged sampler is typically thousands of times off (a step-size instability compounds), while a sound run
stays within a few times ``r_start`` (the data's scale over the noise's): ``LIMIT = 100`` leaves a wide margin both
ways for data whose root-mean-square is below 100 (any normalised data or latent). Comparing each sample with its own
start catches one diverged sample in a large batch. Non-finite values are the finite check's (``check_finite``), not
the guard's.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .nodes import NodeTable

__all__ = ["LIMIT", "OBSERVED", "DivergenceError", "DivergenceGuard", "DivergenceWarning", "GuardPlan"]

#: How many times its start's scale a state may grow before the run is reported as diverged (module docstring).
LIMIT = 100.0
#: How many steps of a run the guard looks at by default (evenly spread, the last included); strict: every step.
OBSERVED = 8

ADVICE = (
    "more steps, a data-prediction solver (dpmpp_2m_sde, seeds_2, dpmpp_sde) or a smaller eta usually fix it "
    "(docs/solvers.md, 'Divergence')"
)


class DivergenceWarning(UserWarning):
    """A run's state grew far beyond the scale of the diffusion's marginals (see :mod:`fewstep.guard`)."""


class DivergenceError(RuntimeError):
    """With ``strict=True``: a step's state grew far beyond the scale of the diffusion's marginals."""


@dataclass(frozen=True)
class GuardPlan:
    """Which steps a guard looks at on a node table, and the marginal scale at their end nodes (host values, the
    same for every run on the table's values: :meth:`NodeTable.remember`)."""

    #: the observed steps, in order: row k + 1 is step ``steps[k]``'s end state, row 0 the start
    steps: tuple[int, ...]
    #: ``sqrt(alpha^2 + sigma^2)`` at each row's node
    scale: np.ndarray
    row_of: dict[int, int]  # observed step -> its row

    @classmethod
    def of(cls, nodes: NodeTable, strict: bool) -> GuardPlan:
        """Every stride-th step (at most :data:`OBSERVED`; strict: every step) and the last."""
        n = nodes.steps
        stride = 1 if strict else -(-n // OBSERVED)
        steps = (*range(stride - 1, n - 1, stride), n - 1) if n else ()
        at = [0, *(i + 1 for i in steps)]
        scale = np.sqrt(nodes.alpha[at] ** 2 + nodes.sigma[at] ** 2)
        return cls(steps, scale, {i: row for row, i in enumerate(steps, start=1)})


class _Plans:
    """The owner of the guard's plans in a node table's memo (stateless: its plans are shared by value)."""


_PLANS = _Plans()


class DivergenceGuard:
    """The per-sample scale ratios of one run over ``nodes`` (module docstring)."""

    def __init__(self, nodes: NodeTable, start: Tensor, solver: str, strict: bool = False) -> None:
        self.plan = nodes.remember(_PLANS, strict, lambda: GuardPlan.of(nodes, strict))
        self.dims = tuple(range(1, max(start.ndim, 2)))  # the entries of one sample
        self.root_numel = math.sqrt(math.prod(start.shape[1:]))
        self.norms = [self._norm(start)]  # the start's (now: the solver may write into it), then each observed step's
        self.rows: list[int] = []  # the plan's rows of the observed steps
        self.nodes, self.solver, self.strict = nodes, solver, strict

    def _norm(self, x: Tensor) -> Tensor:
        """Each sample's L2 norm of ``x``: one reduction on ``x``'s device, not read back."""
        x = x.detach() if x.requires_grad else x
        return torch.linalg.vector_norm(x.unsqueeze(1) if x.ndim < 2 else x, dim=self.dims)

    def observe(self, i: int, x: Tensor) -> None:
        """Step i's end state ``x`` (at node i + 1): keep its per-sample norms, one reduction (strict: check now)."""
        row = self.plan.row_of.get(i)
        if row is None:
            return
        self.norms.append(self._norm(x))
        self.rows.append(row)
        if self.strict:  # the start's and this step's, one synchronisation
            self._raise_or_warn(self._growth([self.norms[0], self.norms[-1]], [row]), [row])

    def check(self) -> None:
        """After the run: one synchronisation; a :class:`DivergenceWarning` for the first step beyond the bound."""
        if self.rows:
            self._raise_or_warn(self._growth(self.norms, self.rows), self.rows)

    def _growth(self, norms: list[Tensor], rows: list[int]) -> np.ndarray:
        """``r[k, b] / r_start[b]`` for the states of ``norms`` (the start's first, then those of the plan's ``rows``):
        the ratios ``rms / sqrt(alpha^2 + sigma^2)`` over the start's (raised to at least 1), read back in one copy."""
        values = torch.stack(norms).cpu().numpy().astype(np.float64)
        ratios = values / (self.plan.scale[[0, *rows]][:, None] * self.root_numel)
        return ratios[1:] / np.maximum(ratios[0], 1.0)

    def _raise_or_warn(self, growth: np.ndarray, rows: list[int]) -> None:
        """For the first of the plan's ``rows`` whose ``growth`` has a sample beyond the bound: a
        :class:`DivergenceError` (strict) or a :class:`DivergenceWarning`."""
        over = np.flatnonzero((growth > LIMIT).any(axis=1))
        if not over.size:
            return
        k = int(over[0])
        message = self._message(self.plan.steps[rows[k] - 1], growth[k])
        if self.strict:
            raise DivergenceError(message)
        warnings.warn(message, DivergenceWarning, stacklevel=4)

    def _message(self, i: int, times: np.ndarray) -> str:
        """The message for step i, whose per-sample growth over the start is ``times``."""
        b = int(np.nanargmax(times))
        t_next = float(self.nodes.t[i + 1])
        time = "the clean end" if math.isnan(t_next) else f"t={t_next:.6g}"
        which = f" (sample {b} of {times.size})" if times.size > 1 else ""
        return (
            f"solver {self.solver!r} diverged: after step {i} (to {time}) the state{which}, its root-mean-square in "
            f"units of the marginal scale sqrt(alpha^2 + sigma^2), is {times[b]:.3g} times as large as at the start; "
            f"{ADVICE}"
        )
