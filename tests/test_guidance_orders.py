"""Measured convergence orders under classifier-free guidance, against the exact guided probability-flow ODE.

CFG at scale w turns the conditional and unconditional predictions into ``eps_w = eps_u + w (eps_c - eps_u)``, which
is again a smooth vector field: each solver keeps its order on the guided ODE. On the labelled 2-D "wide" mixture
(its smooth density, as in ``test_convergence.py``; here in two angle-sector classes, one of one component and one
of two) each solver runs with ``guidance_scale=w`` in float64 from the same noise to ``t_min``, with the step counts
(doubled for the third-order methods, see :func:`counts_for`), options and tolerance of ``test_convergence.py``; the reference is the DOP853 solution of
:class:`fewstep.bench.targets.GuidedMixture` to ``t_min``. (On the narrow default 2-D mixture the first-order methods
are still pre-asymptotic at 80 steps for w = 7.5: measured slope 0.2.)
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from test_convergence import ORDER_OPTIONS, SOLVERS, TOL, step_counts

import fewstep
from fewstep.bench.targets import labelled_mixture_2d, reference_solution_from_time

BATCH = 32
SCHEDULE = fewstep.VP()
TARGET = labelled_mixture_2d("wide", sectors=2)
LABELS = torch.arange(BATCH) % TARGET.num_classes
SCALES = (1.0, 3.0, 7.5)
ORDERS = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3, "unipc_bh2": 3}
FAST = {"ddim", "dpmpp_2m", "unipc_bh2"}  # one per order at the largest scale; the rest is marked slow


def counts_for(solver: str) -> list[int]:
    """test_convergence's step counts, doubled for the third-order methods: the guided field's larger derivatives
    leave their 40-step runs pre-asymptotic (UniPC at w = 7.5: slope 3.41 over 40..320, 3.04 over 80..640)."""
    counts = step_counts(SOLVERS[solver])
    return [2 * n for n in counts] if ORDERS[solver] == 3 else counts


@functools.cache
def problem(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise at t_max and the exact guided PF-ODE image at t_min."""
    noise = torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    guided = TARGET.guided(LABELS, scale)
    return noise, reference_solution_from_time(guided, noise, SCHEDULE, SCHEDULE.t_max, SCHEDULE.t_min)


def measured_order(solver: str, scale: float) -> tuple[float, list[float]]:
    noise, ref = problem(scale)
    model = TARGET.model(SCHEDULE, "epsilon")
    counts = counts_for(solver)
    errors = []
    for n in counts:
        out = fewstep.sample(
            model, noise, SCHEDULE, solver, steps=n, spacing="logsnr", final="t_min", progress=False,
            model_kwargs={"y": LABELS}, uncond_kwargs={"y": torch.full_like(LABELS, -1)}, guidance_scale=scale,
            **ORDER_OPTIONS.get(solver, {}),
        )  # fmt: skip
        errors.append(float((out - ref).abs().max()))
    assert all(e > 0 and math.isfinite(e) for e in errors), errors
    return float(-np.polyfit(np.log(counts), np.log(errors), 1)[0]), errors


PARAMS = [
    pytest.param(
        solver, scale, id=f"{solver}-w{scale:g}", marks=() if (solver in FAST and scale == 7.5) else pytest.mark.slow
    )
    for scale in SCALES
    for solver in ORDERS
]


@pytest.mark.parametrize(("solver", "scale"), PARAMS)
def test_measured_order_under_cfg(solver: str, scale: float) -> None:
    assert SOLVERS[solver].order == ORDERS[solver]
    slope, errors = measured_order(solver, scale)
    assert abs(slope - ORDERS[solver]) <= TOL, f"{solver} at w = {scale}: slope {slope:.3f}, errors {errors}"
    assert errors[-1] < errors[0]


def test_guidance_changes_the_solution() -> None:
    """The guided references differ from each other (the test measures guidance, not the conditional model alone),
    and w = 1 is the conditional model's own ODE."""
    _, ref1 = problem(1.0)
    _, ref7 = problem(7.5)
    assert float((ref1 - ref7).abs().max()) > 0.5
    noise, _ = problem(1.0)
    cond = torch.cat([
        reference_solution_from_time(TARGET.condition(int(y)), noise[i : i + 1], SCHEDULE, SCHEDULE.t_max, SCHEDULE.t_min)
        for i, y in enumerate(LABELS[:4])
    ])  # fmt: skip
    torch.testing.assert_close(cond, ref1[:4], rtol=0, atol=1e-8)
