"""Every registered stochastic sampler's samples approach the exact distribution as the NFE grows, on the exact
mixture targets in 2-D and 64-D: the sliced W2 distance (``fewstep.bench.metrics.sliced_wasserstein2``) between 4,096
samples and 4,096 exact samples is smaller at NFE 50 (30 in 64-D, where each evaluation costs more) than at
NFE 10, and there within a few times the distance between two independent sets of exact samples. (``tests/test_stochastic.py`` checks the 2-D mixture on
the VP and flow schedules; this file adds the cosine schedule in 2-D and the 64-D mixture.)"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.metrics import sliced_wasserstein2
from fewstep.bench.targets import GaussianMixture, mixture_2d, mixture_nd

F64 = torch.float64
N = 4096
#: The stochastic samplers whose samples approach the data distribution (not lcm: ``Solver.converges``).
STOCHASTIC = [
    i.name for i in fewstep.solvers.available() if i.stochastic and fewstep.solvers.get_solver(i.name).converges
]
TARGETS = {  # target, schedule, the larger NFE
    "2d-cosine": (mixture_2d("default"), fewstep.Cosine(), 50),
    "nd64-vp": (mixture_nd(64), fewstep.VP(), 30),
}
FLOOR_FACTOR = 3.0  # the NFE-50 distance is at most this many times the exact-vs-exact distance


def distance(x: Tensor, exact: Tensor) -> float:
    return sliced_wasserstein2(x, exact, projections=128)


def nfes(solver: str, high: int) -> tuple[int, int]:
    """NFE about 10 and ``high``: a solver of k > 1 evaluations per step spends one on the last step to sigma = 0."""
    k = fewstep.solvers.get_solver(solver).nfe_per_step
    return (10, high) if k == 1 else (k * (10 // k) + 1, k * (high // k) + 1)


@pytest.fixture(scope="module", params=list(TARGETS))
def setup(request: pytest.FixtureRequest) -> tuple[GaussianMixture, fewstep.NoiseSchedule, int, Tensor, Tensor, float]:
    target, schedule, high = TARGETS[request.param]
    noise = torch.randn(N, target.dim, generator=torch.Generator().manual_seed(1), dtype=F64)
    noise = noise * float(schedule.sigma(schedule.t_max))
    exact = target.sample(N, generator=torch.Generator().manual_seed(5))
    floor = distance(target.sample(N, generator=torch.Generator().manual_seed(6)), exact)
    return target, schedule, high, noise, exact, floor


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_sliced_w2_decreases_with_nfe(solver: str, setup: tuple) -> None:
    target, schedule, high, noise, exact, floor = setup
    model = target.model(schedule, "epsilon")
    d = []
    for nfe in nfes(solver, high):
        x = fewstep.sample(model, noise, schedule, solver, nfe=nfe, generator=torch.Generator().manual_seed(2))
        assert torch.isfinite(x).all()
        d.append(distance(x, exact))
    assert d[1] < d[0], (d, floor)
    assert d[1] < FLOOR_FACTOR * floor, (d, floor)
