"""GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"): the best times are a
cheapest path through a fine grid.

On the teacher's trajectory ``x*(g_0), ..., x*(g_{G-1})`` at the grid times (and ``x*(0)``, its final sample), one
batched network call per grid time gives the data and noise estimates there, and with them the cost of every jump
``i -> j`` (``j > i``, or to the clean end ``j = G``) of a first-order (DDIM) step

    x_hat(g_j) = alpha_j x0_hat(x*(g_i)) + sigma_j eps_hat(x*(g_i)),     c(i, j) = RMS(x_hat(g_j) - x*(g_j)),

the end's cost being that of ``x0_hat`` against the final sample. The ``n`` times are the path ``0 = i_0 < ... <
i_{n-1}`` (then the end ``G``) of ``n`` jumps with the least total cost: :func:`cheapest_path`, dynamic programming.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model import Denoiser
from .budget import Budget, rmse
from .teacher import Teacher


def cheapest_path(cost: np.ndarray, jumps: int) -> tuple[list[int], float]:
    """The path ``0 = p_0 < p_1 < ... < p_jumps = N - 1`` through the nodes of ``cost`` (N, N) with the least sum of
    ``cost[p_k, p_{k+1}]``, and that sum. Only ``cost[i, j]`` with ``i < j`` is read (inf forbids a jump).

    Dynamic programming over (jumps taken, node): ``best[k, j] = min_{i < j} best[k-1, i] + cost[i, j]``; O(jumps N^2).
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1] or cost.shape[0] < 2:
        raise ValueError(f"cost: need a square (N, N) matrix with N >= 2, got shape {cost.shape}")
    n = cost.shape[0]
    if isinstance(jumps, bool) or not isinstance(jumps, int) or not 1 <= jumps <= n - 1:
        raise ValueError(f"jumps: must be an integer in [1, {n - 1}], got {jumps!r}")
    upper = np.where(np.triu(np.ones((n, n), dtype=bool), k=1), cost, np.inf)  # only forward jumps
    best = np.full((jumps + 1, n), np.inf)
    parent = np.zeros((jumps + 1, n), dtype=np.int64)
    best[0, 0] = 0.0
    for k in range(1, jumps + 1):
        total = best[k - 1][:, None] + upper  # total[i, j] = best[k-1, i] + cost[i, j]
        parent[k] = np.argmin(total, axis=0)
        best[k] = total[parent[k], np.arange(n)]
    if not np.isfinite(best[jumps, n - 1]):
        raise ValueError("cost: no path of this many jumps has a finite cost")
    path = [n - 1]
    for k in range(jumps, 0, -1):
        path.append(int(parent[k, path[-1]]))
    return path[::-1], float(best[jumps, n - 1])


def jump_costs(denoiser: Denoiser, teacher: Teacher, budget: Budget) -> np.ndarray:
    """The (G + 1, G + 1) matrix of DDIM jump costs on the teacher trajectory (module docstring); the last node is
    the clean end. One batched network call per grid time, from ``budget``."""
    grid, states = teacher.grid, teacher.states
    g = len(grid)
    budget.reserve(g)
    stack = denoiser.stack(budget.calls, True)
    batch, dtype = states.shape[1], states.dtype
    alpha = denoiser.schedule.alpha(torch.from_numpy(grid)).tolist()
    sigma = denoiser.schedule.sigma(torch.from_numpy(grid)).tolist()
    cost = np.full((g + 1, g + 1), np.inf)
    with torch.no_grad():
        for i in range(g):
            point = denoiser.point(float(grid[i]), batch, states.device, dtype)
            x0, eps = stack.evaluate(states[i], point)
            for j in range(i + 1, g):
                jumped = alpha[j] * x0 + sigma[j] * eps  # DDIM: the state at g_j from the estimates at g_i
                cost[i, j] = rmse(jumped, states[j], teacher.weights)
            cost[i, g] = rmse(x0, teacher.final, teacher.weights)
    return cost


def gits_times(denoiser: Denoiser, teacher: Teacher, n_times: int, budget: Budget) -> np.ndarray:
    """The ``n_times`` model-evaluation times of the cheapest path (module docstring)."""
    cost = jump_costs(denoiser, teacher, budget)
    cost = np.where(np.isfinite(cost), cost, np.inf)
    path, _ = cheapest_path(cost, n_times)
    return teacher.grid[path[:-1]].copy()
