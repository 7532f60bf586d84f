"""UniPC's UniC corrector on DEIS (``deis_k``/``deis_rho_k`` with ``corrector="unic"``).

- Measured convergence orders (tests/test_unipc.py's ``measure``: VP, logSNR spacing, ``final="t_min"``, float64,
  no lower-order final steps) on the wide 2-D mixture, against its DOP853 reference: the corrector raises each
  variant's order by one. Measured: deis_2 1.98 -> 3.26 (3.09 over 80..640 steps), deis_3 3.84 (plain 3.27, above
  its order on this target: see tests/test_convergence.py), deis_rho_2 1.86 -> 2.86, deis_rho_3 2.83 -> 3.90.
  On the single Gaussian deis_2 with the corrector is superconvergent (3.88 over 40..320 steps, 3.96 over 80..640),
  as deis_3 and the Taylor-exact dpmpp_3m are there.
- No extra model evaluation, finite down to sigma = 0 on every schedule kind, options checked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import node_table
from test_unipc import COUNTS, TOL, measure

import fewstep
from fewstep.bench.targets import mixture_2d

F64 = torch.float64


@pytest.mark.parametrize(
    ("solver", "options", "plain_order"),
    [("deis_2", {}, 2), ("deis_rho_2", {}, 2), ("deis_rho_3", {}, 3), ("deis_2", {"basis": "t"}, 2)],
)
def test_unic_raises_the_order_by_one(solver: str, options: dict, plain_order: int) -> None:
    counts = [40, 80, 160, 320]
    plain, plain_errors = measure(solver, "wide", counts, **options)
    slope, errors = measure(solver, "wide", counts, corrector="unic", **options)
    assert abs(plain - plain_order) <= TOL, (plain, plain_errors)
    assert abs(slope - (plain_order + 1)) <= TOL, (slope, errors)
    assert all(e < pe / 5 for e, pe in zip(errors, plain_errors, strict=True))


def test_unic_on_deis_3_is_fourth_order() -> None:
    slope, errors = measure("deis_3", "wide", COUNTS[3], corrector="unic")
    assert abs(slope - 4) <= TOL, (slope, errors)
    plain = measure("deis_3", "wide", COUNTS[3])[1]
    assert errors[-1] < plain[-1] / 3


@pytest.mark.parametrize("solver", ["deis_1", "deis_2", "deis_3", "deis_rho_2", "deis_rho_3"])
def test_no_extra_evaluations(solver: str) -> None:
    sched = fewstep.VP()
    denoiser = fewstep.Denoiser(mixture_2d().model(sched, "epsilon"), sched, "epsilon")
    grid = node_table(denoiser, np.append(np.linspace(1.0, 0.01, 12), math.nan), True, 4)
    corrected = fewstep.solvers.get_solver(solver, corrector="unic")
    assert corrected.nfe(grid) == fewstep.solvers.get_solver(solver).nfe(grid) == 12
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    calls = fewstep.CallCount()
    fewstep.sample(denoiser, noise, solver=corrected, nfe=12, calls=calls)  # the run checks its evaluations
    assert calls.nfe == calls.network == calls.branches == 12 and calls.substituted == calls.backward == 0


SCHEDULES = {
    "vp": (fewstep.VP(), "epsilon"),
    "sd_zero_snr": (fewstep.DiscreteVP.scaled_linear(rescale_zero_terminal_snr=True), "v_prediction"),
    "edm": (fewstep.EDM(), "sample"),
    "flow": (fewstep.Flow(), "velocity"),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize(("solver", "basis"), [("deis_2", "logrho"), ("deis_3", "logrho"), ("deis_3", "t"),
                                               ("deis_rho_3", None)])  # fmt: skip
@pytest.mark.parametrize("corrector", ["unic", "unic_bh1"])
def test_finite_to_sigma_zero(name: str, solver: str, basis: str | None, corrector: str) -> None:
    sched, prediction = SCHEDULES[name]
    model = mixture_2d().model(sched, prediction)
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    noise = noise * float(sched.sigma(sched.t_max))
    options = {"corrector": corrector} | ({"basis": basis} if basis else {})
    for nfe in (2, 3, 5, 12):
        x = fewstep.sample(model, noise, sched, solver, nfe=nfe, prediction=prediction, **options)
        assert bool(torch.isfinite(x).all()), (nfe, x)


def test_invalid_corrector_raises() -> None:
    for solver in ("deis_2", "deis_rho_3"):
        with pytest.raises(ValueError, match="corrector: choose None or one of"):
            fewstep.solvers.get_solver(solver, corrector="heun")
