"""EVODiff (``evodiff``): the variance-optimal coefficient, the measured order and the cost.

- ``variance_optimal_eta`` is the minimiser of ``||(1 - eta) b + eta f||^2`` over [0, 1], checked against a
  brute-force search.
- Measured order (tests/test_unipc.py's ``measure``: VP, logSNR, ``final="t_min"``, float64) on both exact 2-D
  targets: 1.84 (wide) / 1.84 (single) over 40..320 steps (1.97 over 160..1280; below 40 steps the data-dependent
  mix is pre-asymptotic, 1.55-1.6 over 20..160, with errors under DPM-Solver++(2M)'s). tests/test_convergence.py
  measures it on VP and EDM too.
- One model evaluation per step, as DPM-Solver++(2M), which it equals where no step is recombined.
"""

from __future__ import annotations

import pytest
import torch
from test_unipc import TOL, measure

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.solvers.ode.evodiff import variance_optimal_eta

F64 = torch.float64
COUNTS = [40, 80, 160, 320]


def test_eta_is_the_variance_minimiser() -> None:
    g = torch.Generator().manual_seed(0)
    b = torch.randn(6, 3, 4, generator=g, dtype=F64)
    f = torch.cat([b[:1], b[1:2] + 0.1 * torch.randn(1, 3, 4, generator=g, dtype=F64), -b[2:3], 3 * b[3:4]])
    f = torch.cat([f, torch.randn(2, 3, 4, generator=g, dtype=F64)])
    eta = variance_optimal_eta(b, f)
    assert eta.shape == (6, 1, 1)
    grid = torch.linspace(0, 1, 100001, dtype=F64)
    for k in range(1, 6):  # (sample 0: b = f, every eta gives the same moment)
        second_moment = (((1 - grid)[:, None] * b[k].reshape(1, -1) + grid[:, None] * f[k].reshape(1, -1)) ** 2).sum(1)
        assert abs(float(eta[k]) - float(grid[second_moment.argmin()])) <= 2e-5, k
    assert float(eta[0]) == 0.0  # equal estimates: the backward one
    assert float(eta[2]) == 0.5  # opposite estimates of equal size cancel halfway
    assert float(eta[3]) == 0.0  # a larger forward estimate in the same direction: the backward one


@pytest.mark.parametrize("target_name", ["wide", "single"])
def test_measured_order(target_name: str) -> None:
    slope, errors = measure("evodiff", target_name, COUNTS)
    assert abs(slope - 2) <= TOL, (slope, errors)
    if target_name == "wide":  # below DPM-Solver++(2M) at every step count there (measured 1.3x-1.9x)
        plain = measure("dpmpp_2m", target_name, COUNTS)[1]
        assert all(e < p for e, p in zip(errors, plain, strict=True)), (errors, plain)


def test_one_evaluation_per_step_and_2m_where_nothing_is_recombined() -> None:
    sched = fewstep.VP()
    model = mixture_2d().model(sched, "epsilon")
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    for nfe in (1, 2):  # first-order steps only: DPM-Solver++(2M)
        x = fewstep.sample(model, noise, sched, "evodiff", nfe=nfe)
        torch.testing.assert_close(x, fewstep.sample(model, noise, sched, "dpmpp_2m", nfe=nfe), rtol=0, atol=0)
    denoiser = fewstep.Denoiser(model, sched, "epsilon")
    calls = fewstep.CallCount()
    x = fewstep.sample(denoiser, noise, solver="evodiff", nfe=10, calls=calls)
    assert calls.nfe == 10 and bool(torch.isfinite(x).all())
    assert float((x - fewstep.sample(model, noise, sched, "dpmpp_2m", nfe=10)).abs().max()) > 1e-3


def test_options() -> None:
    with pytest.raises(TypeError, match="lower_order_final"):
        fewstep.solvers.get_solver("evodiff", lower_order_final="yes")
    with pytest.raises(TypeError, match="unknown option"):
        fewstep.solvers.get_solver("evodiff", corrector="unic")
