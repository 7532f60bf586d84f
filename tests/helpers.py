"""Small helpers shared by the test modules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

import fewstep
from fewstep import DiscreteVP
from fewstep.context import RunContext
from fewstep.nodes import NodeTable

F64 = torch.float64
N_TRAIN = 1000
BETAS = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}
DIFFUSERS_RTOL = 1e-4  # diffusers' coefficients are float32
KDIFF_RTOL = 1e-8  # float64 on both sides


def rel(a: Tensor, b: Tensor) -> float:
    """Relative difference ``|a - b| / |b|``."""
    return float((a - b).norm() / b.norm())


def randn(*shape: int, seed: int = 0) -> Tensor:
    """Standard normal float64 values from a fixed seed."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def schedule_of(scheduler: object) -> DiscreteVP:
    """fewstep's schedule on a diffusers scheduler's own (float32) ``alphas_cumprod`` table."""
    return DiscreteVP(alphas_cumprod=scheduler.alphas_cumprod.to(F64))  # type: ignore[attr-defined]


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> Tensor:
    """k-diffusion's Karras grid (with the appended 0) computed in float64.

    ``get_sigmas_karras`` builds its ramp with ``torch.linspace`` in the default dtype; in float32 the ends come
    out as 79.99998 and 0.0019999996, slightly outside EDM's [0.002, 80], where fewstep clamps the times to the
    schedule's range (a 2e-7 relative shift of the last noise level, ~1e-8 in the samples).
    """
    from k_diffusion import sampling

    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        return sampling.get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0)
    finally:
        torch.set_default_dtype(old)


class FineBrownianPath:
    """A Brownian motion in the noise level, pre-drawn on a fine grid of levels (sums of independent normal
    increments); ``noise(s, t)`` is its normalised increment between two fine nodes, so that the noise of any
    sub-grid is that of one path (k-diffusion's ``BrownianTreeNoiseSampler`` convention)."""

    def __init__(self, levels: np.ndarray, batch: int, seed: int):
        steps = torch.from_numpy(np.sqrt(np.abs(np.diff(levels))))[:, None, None]
        inc = randn(len(levels) - 1, batch, 2, seed=seed) * steps
        self.levels, self.w = levels, torch.cat([torch.zeros(1, batch, 2, dtype=F64), inc.cumsum(0)])

    def __call__(self, s: float, t: float) -> Tensor:
        i, j = (int(np.argmin(np.abs(self.levels - v))) for v in (s, t))
        assert math.isclose(self.levels[i], s, rel_tol=1e-12) and math.isclose(self.levels[j], t, rel_tol=1e-12)
        return (self.w[j] - self.w[i]) / math.sqrt(abs(self.levels[j] - self.levels[i]))


def assert_replay_reproduces(record: Callable[..., Any], plain: Tensor) -> Any:
    """``record(generator=...)`` / ``record(noise_sampler=...)`` return a run's :class:`~fewstep.Trajectory`:
    recording with seed 1 leaves the sample ``plain`` unchanged, replaying its noise reproduces every state and the
    log-probabilities bit for bit, and seed 2 gives another sample. Returns the seed-1 trajectory."""
    traj = record(generator=torch.Generator().manual_seed(1))
    assert torch.equal(traj.sample, plain)
    again = record(noise_sampler=traj.replay())
    assert torch.equal(again.sample, traj.sample)
    for a, b in zip(traj.states, again.states, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(again.log_prob, traj.log_prob, rtol=0, atol=0)
    other = record(generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(other.sample, traj.sample)
    return traj


def node_table(
    denoiser: fewstep.Denoiser,
    times: np.ndarray | list[float],
    clean_end: bool = False,
    batch: int = 1,
    device: torch.device | None = None,
    dtype: torch.dtype = F64,
) -> NodeTable:
    """The node table of ``times`` (a trailing nan for a clean end) for states of ``batch`` samples."""
    t = np.asarray(times, dtype=np.float64)
    return NodeTable.build(denoiser, t, clean_end, batch, device or torch.device("cpu"), dtype)


def run_solver(
    solver: fewstep.solvers.Solver,
    x: Tensor,
    nodes: NodeTable,
    evaluate: Callable[[Tensor, Any], Any] | fewstep.Denoiser,
) -> Tensor:
    """Drive ``solver`` over ``nodes`` with a plain run context, answering its requests with ``evaluate`` (a
    callable, or a Denoiser's model-call stack)."""
    if isinstance(evaluate, fewstep.Denoiser):
        evaluate = evaluate.stack(fewstep.CallCount(), solver.needs_eps).evaluate
    return solver.run(x, nodes, RunContext(nodes), evaluate)


class Counting:
    """Wraps a model and counts its calls."""

    def __init__(self, model: Callable[..., Tensor]):
        self.model, self.calls = model, 0

    def __call__(self, x: Tensor, time: Tensor, **kwargs: Any) -> Tensor:
        self.calls += 1
        return self.model(x, time, **kwargs)
