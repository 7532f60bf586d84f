"""The particles' reverse chain: B prompts x K particles as one batch of ``B*K`` through the model-call stack, and
the Gaussian proposal of each step, taken from a stochastic solver's own plan rows:

    x_{i+1} ~ N(m_i, c_i^2 I),   m_i = r_i x_i + u_i x0_hat_i + v_i x0_hat_{i-1} + e_i eps_hat_i

- ``"dpmpp_2m_sde"`` (default): SDE-DPM-Solver++(2M) at eta = 1 (:class:`fewstep.solvers.sde.sde_dpm.DPMSolverPP2MSDE`,
  ``data_plan``), second order; the pair ``(x_i, x0_hat_{i-1})`` is the Markov state, so resampling permutes both;
- ``"ddpm"``: DDPM's ancestral step (:class:`fewstep.solvers.sde.ancestral.DDPM`, ``plan``), first order.

The transition density is known, so resampling only permutes the current state. On the 2-D mixture at 20 steps the
2M proposal's own samples are far closer to the prior (component-weight error 0.009 against DDPM's 0.12, logSNR
spacing), which the particles inherit. The step to the clean end is deterministic (``c = 0``). Rows are
prompt-major: particle ``k`` of prompt ``b`` is row ``b*K + k``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ...model import CallCount, Denoiser, ModelStack
from ...model.point import Point
from ...nodes import NodeTable
from ...noise.source import NoiseSource
from ...options import suggestion
from ...prepare import as_denoiser, check_calls, check_counts, check_nfe, node_times, state_dtype
from ...schedules import NoiseSchedule
from ...solvers.base import Solver
from ...solvers.sde.ancestral import DDPM
from ...solvers.sde.sde_dpm import DPMSolverPP2MSDE
from ...solvers.stochastic import noise_levels
from ...spacing import SpacingLike

__all__ = ["PROPOSALS", "Chain", "ProposalStep", "check_particles_noise"]

#: the proposals (module docstring)
PROPOSALS = ("dpmpp_2m_sde", "ddpm")


class ProposalStep(NamedTuple):
    """One step's Gaussian ``N(r x + u x0_hat + v x0_hat_prev + e eps_hat, std^2 I)``."""

    r: float
    u: float
    v: float
    e: float
    std: float


def _proposal(name: object) -> Solver:
    if name not in PROPOSALS:
        hint = suggestion(name, PROPOSALS)
        raise ValueError(f"proposal: choose one of {', '.join(map(repr, PROPOSALS))}, got {name!r}{hint}")
    return DPMSolverPP2MSDE(eta=1.0) if name == "dpmpp_2m_sde" else DDPM(eta=1.0)


def proposal_plan(solver: Solver, nodes: NodeTable) -> list[ProposalStep]:
    """Every step's :class:`ProposalStep` from the solver's own plan rows."""
    if isinstance(solver, DDPM):
        return [
            ProposalStep(0.0, c.c_x0, 0.0, c.c_eps, c.c_z)
            for c in (solver.plan(nodes, i, 1.0) for i in range(nodes.steps))
        ]
    assert isinstance(solver, DPMSolverPP2MSDE)
    rows = solver.data_plan(nodes, lambda i: True)
    return [ProposalStep(d.ratio, d.weights[0], (d.weights[1:] or [0.0])[0], 0.0, d.noise) for d in rows]


def check_particles_noise(noise: object, particles: object) -> tuple[int, int]:
    """``(B, K)`` of start states ``noise`` of shape ``(B, K, *sample_shape)``; ``particles`` (optional) must agree."""
    if not isinstance(noise, Tensor):
        raise TypeError(f"noise: must be a tensor of start states (prompts, particles, *sample_shape), got {noise!r}")
    if noise.ndim < 3:
        raise ValueError(
            f"noise: need shape (prompts, particles, *sample_shape), got {tuple(noise.shape)}; for K particles of "
            "B prompts draw e.g. torch.randn(B, K, *sample_shape)"
        )
    if not noise.dtype.is_floating_point:
        raise TypeError(f"noise: must be a floating-point tensor, got {noise.dtype}")
    b, k = int(noise.shape[0]), int(noise.shape[1])
    if particles is not None:
        if isinstance(particles, bool) or not isinstance(particles, int | np.integer) or particles < 1:
            raise ValueError(f"particles: must be an integer K >= 1, got {particles!r}")
        if particles != k:
            raise ValueError(f"particles: {particles} particles, but noise holds {k} per prompt (its second dim)")
    if b < 1 or k < 1:
        raise ValueError(
            f"particles: need K >= 1 particles for B >= 1 prompts, got noise of shape {tuple(noise.shape)}"
        )
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("noise: contains NaN or inf (the start states must be finite)")
    return b, k


def _repeat_kwargs(kwargs: Mapping[str, Any] | None, prompts: int, particles: int) -> dict[str, Any]:
    """Per-prompt tensors (first dim B) repeated for each prompt's K particles; other values as they are."""
    out: dict[str, Any] = {}
    for key, value in (kwargs or {}).items():
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == prompts and particles > 1:
            value = value.repeat_interleave(particles, dim=0)
        out[key] = value
    return out


@dataclass
class Chain:
    """One run's nodes, proposal plan rows, noise source and counted model-call stack (module docstring)."""

    prompts: int
    particles: int
    nodes: NodeTable
    plan: list[ProposalStep]
    levels: np.ndarray
    stack: ModelStack
    source: NoiseSource
    calls: CallCount
    dtype: torch.dtype

    @classmethod
    def build(
        cls,
        model: Callable[..., Tensor] | Denoiser,
        noise: Tensor,
        schedule: NoiseSchedule | None,
        nfe: int | None,
        steps: int | None,
        spacing: SpacingLike | None,
        prediction: str,
        generator: torch.Generator | None,
        model_kwargs: Mapping[str, Any] | None,
        calls: CallCount | None,
        particles: int | None,
        proposal: str = "dpmpp_2m_sde",
        batch_factor: int = 1,
    ) -> Chain:
        """Check every option (before any model call) and plan the run; ``batch_factor``: the model is called on up
        to ``B*K*batch_factor`` rows (candidates)."""
        solver = _proposal(proposal)
        b, k = check_particles_noise(noise, particles)
        kwargs = _repeat_kwargs(model_kwargs, b, k * batch_factor)
        denoiser = as_denoiser(model, schedule, prediction, "auto", kwargs, 1.0, None, 0.0, None)
        if isinstance(model, Denoiser) and model_kwargs is not None:
            raise ValueError("model_kwargs: a Denoiser brings its own model_kwargs (with B*K rows); leave this out")
        spacing = "logsnr" if spacing is None else spacing
        check_counts(nfe, steps, spacing)
        check_calls(calls)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: must be a torch.Generator, got {type(generator).__name__}")
        times = node_times(denoiser.schedule, solver, nfe, steps, spacing, True)
        dtype = state_dtype(noise)
        n = b * k * batch_factor
        nodes = NodeTable.build(denoiser, times, True, n, noise.device, dtype)
        check_nfe(solver, nodes, nfe)
        plan = proposal_plan(solver, nodes)
        run_calls = CallCount()
        stack = denoiser.stack(run_calls, True, None, (), "end", "smc")
        return cls(b, k, nodes, plan, noise_levels(nodes), stack, NoiseSource(generator), run_calls, dtype)

    @property
    def steps(self) -> int:
        return self.nodes.steps

    def point(self, i: int, rows: int) -> Point:
        """Node ``i``'s point for a batch of ``rows``."""
        p = self.nodes.node(i)
        return p._replace(model_time=p.model_time[:rows]) if p.model_time.shape[0] != rows else p

    def evaluate(self, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """``(x0_hat, eps_hat)`` at node ``i`` (one network call on the whole batch)."""
        x0, eps = self.stack.evaluate(x, self.point(i, x.shape[0]))
        assert eps is not None
        return x0, eps

    def mean(self, i: int, x: Tensor, x0: Tensor, eps: Tensor, prev: Tensor) -> Tensor:
        """Step ``i``'s proposal mean ``r x + u x0_hat + v x0_hat_prev + e eps_hat``."""
        c = self.plan[i]
        out = c.u * x0
        for coef, term in ((c.r, x), (c.v, prev), (c.e, eps)):
            if coef:
                out = out + coef * term
        return out

    def std(self, i: int) -> float:
        """The proposal standard deviation of step ``i`` (0: deterministic)."""
        return self.plan[i].std

    def draw(self, i: int, like: Tensor) -> Tensor:
        """Step ``i``'s standard normal noise, shaped like ``like``."""
        return self.source.draw(float(self.levels[i]), float(self.levels[i + 1]), like)

    def alpha_sigma(self, i: int) -> tuple[float, float]:
        """Schedule values at node ``i`` (``(1, 0)`` at the clean end)."""
        if i >= self.steps:
            return 1.0, 0.0
        return float(self.nodes.alpha[i]), float(self.nodes.sigma[i])

    def finish(self, result: Tensor, calls: CallCount | None) -> None:
        """The stack's deferred checks on the result, and the counts added to the caller's ``calls``."""
        try:
            self.stack.finish(result)
        finally:
            if calls is not None:
                calls.add(self.calls)
