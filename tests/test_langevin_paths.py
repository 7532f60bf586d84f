"""Brownian paths drive ``sgld``, ``dropout_sgmcmc``, ``aldi`` and ``multiscale_annealed``: refining the step on
one path converges (the end points of coarser runs approach the finest run's at about the rate of the step, far
closer than a run on another path), and a decaying SGLD step reads the path over the cumulative times of its
schedule (checked against the update written out by hand)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import fewstep.langevin as L
from fewstep.noise.brownian import BrownianPath

F64 = torch.float64
D = 2


def _gaussian() -> L.Target:
    return L.Target.from_log_prob(lambda x: -0.5 * (x * x).sum(-1))


def _sgld(n: int, path: BrownianPath) -> torch.Tensor:
    x0 = torch.full((8, D), 1.5, dtype=F64)
    return L.sample(_gaussian(), "sgld", x0, draws=n, step_size=1.0 / n, brownian=path).draws[:, -1]


def _dropout(n: int, path: BrownianPath) -> torch.Tensor:
    x0 = torch.full((8, D), 1.5, dtype=F64)
    run = L.sample(_gaussian(), "dropout_sgmcmc", x0, draws=n, step_size=1.0 / n, groups=2, keep=1.0, brownian=path,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    return run.draws[:, -1]


def _aldi(n: int, path: BrownianPath) -> torch.Tensor:
    x0 = torch.randn(8, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    return L.sample(_gaussian(), "aldi", x0, draws=n, step_size=1.0 / n, brownian=path).draws[:, -1]


def _multiscale(n: int, path: BrownianPath) -> torch.Tensor:
    """Each level lasts the slow time ``s^2`` whatever ``n`` (``c = 1 / n`` moves of ``e = c s^2``)."""
    x0 = 2.0 * torch.randn(8, D, generator=torch.Generator().manual_seed(2), dtype=F64)
    run = L.sample(_gaussian(), "multiscale_annealed", x0, draws=n, step_size=1.0 / n, sigmas=[2.0, 1.0, 0.5],
                   steps_per_level=n, epsilon=0.5, fast_step=10.0, brownian=path)  # fmt: skip
    return run.draws[:, -1]


CASES: dict[str, tuple[Callable[[int, BrownianPath], torch.Tensor], tuple[int, ...], float, float]] = {
    # name: (run with n steps per unit of path time, the path's shape, the path's length, the strong order of
    # Euler-Maruyama: 1 for additive noise, 1/2 for ALDI's noise, which depends on the state)
    "sgld": (_sgld, (D,), 1.0, 1.0),
    "dropout_sgmcmc": (_dropout, (D,), 1.0, 1.0),
    "aldi": (_aldi, (8,), 1.0, 0.5),
    "multiscale_annealed": (_multiscale, (2, D), 4.0 + 1.0 + 0.25 + 0.25, 1.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refining_the_step_on_one_path_converges(name: str) -> None:
    run, shape, length, order = CASES[name]
    path = BrownianPath(shape, 11, 0.0, length, batch_size=8, dtype=F64)
    finest = run(512, path)
    counts = [16, 32, 64]
    errors = [float((run(n, path) - finest).norm(dim=-1).mean()) for n in counts]
    other = float((run(64, BrownianPath(shape, 12, 0.0, length, batch_size=8, dtype=F64)) - finest).norm(dim=-1).mean())
    slope = math.log(errors[0] / errors[-1]) / math.log(counts[-1] / counts[0])
    assert errors[0] > errors[1] > errors[2], (name, errors)
    assert slope > order - 0.25, (name, errors, slope)
    assert errors[-1] < 0.1 * other, (name, errors, other)


def test_a_decaying_sgld_step_reads_the_path_over_its_cumulative_times() -> None:
    h, decay, offset, n = 0.1, 0.55, 3.0, 6
    steps = [h * (offset / (offset + t)) ** decay for t in range(n)]
    path = BrownianPath((D,), 5, 0.0, sum(steps), batch_size=4, dtype=F64)
    x = torch.full((4, D), 1.0, dtype=F64)
    run = L.sample(_gaussian(), "sgld", x, draws=n, step_size=h, decay=decay, decay_offset=offset, brownian=path)
    t = 0.0
    for k, s in enumerate(steps):  # theta <- theta + s grad log p + sqrt(2) (W_{t + s} - W_t)
        x = x - s * x + math.sqrt(2.0) * path.increment(t, t + s)
        t += s
        torch.testing.assert_close(run.draws[:, k], x)


def test_a_path_of_the_wrong_shape_is_refused() -> None:
    x0 = torch.zeros(8, D, dtype=F64)
    with pytest.raises(ValueError, match=r"shape = \(d,\) = \(8,\)"):
        L.sample(_gaussian(), "aldi", x0, draws=2, step_size=0.1,
                 brownian=BrownianPath((D,), 0, batch_size=8, dtype=F64))  # fmt: skip
    with pytest.raises(ValueError, match="batch_size = chains"):
        L.sample(_gaussian(), "sgld", x0, draws=2, step_size=0.1, brownian=BrownianPath((D,), 0, batch_size=4))
