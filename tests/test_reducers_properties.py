"""Property test (hypothesis): every solver x reducer x NFE on the mixture target returns a finite sample, and the
layers' accounting is exact (network + substituted == requests, the network calls within the plan's bounds)."""

from __future__ import annotations

import pytest
import torch
from helpers import Counting
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.reducers import ABCache, GaussianFit, SkipCache, Teleport, TStitch

TARGET = mixture_2d("default")
SCHEDULES = {"vp": fewstep.VP(), "edm": fewstep.EDM(), "flow": fewstep.Flow(t_max=0.999)}
SOLVERS = sorted(info.name for info in fewstep.solvers.available())
FIT = GaussianFit(TARGET.mean(), TARGET.covariance())


@st.composite
def reducers(draw):
    kind = draw(st.sampled_from(["ab", "skip", "stitch", "teleport"]))
    variable = draw(st.sampled_from(["lambda", "t"]))
    quantity = draw(st.sampled_from(["x0", "eps"]))
    if kind == "ab":
        return ABCache(draw(st.integers(1, 4)), draw(st.integers(1, 3)), variable=variable, quantity=quantity)
    if kind == "skip":
        threshold = draw(st.sampled_from([0.0, 0.02, 0.2, float("inf")]))
        return SkipCache(
            threshold, draw(st.integers(0, 3)), draw(st.integers(1, 3)), variable=variable, quantity=quantity
        )
    return kind, draw(st.floats(0.05, 0.95))  # stitch/teleport: built per schedule (a fraction of its span)


def build(spec, schedule):
    if not isinstance(spec, tuple):
        return spec
    kind, u = spec
    t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
    if kind == "teleport":
        return Teleport(FIT, t)
    return TStitch(fewstep.Denoiser(TARGET.model(schedule, "epsilon"), schedule, "epsilon"), t)


@pytest.mark.filterwarnings("ignore::fewstep.DivergenceWarning")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=reducers(),
    solver=st.sampled_from(SOLVERS),
    nfe=st.integers(1, 25),
    schedule_name=st.sampled_from(sorted(SCHEDULES)),
    seed=st.integers(0, 2**16),
)
def test_reducers_run_any_solver_with_exact_accounting(
    spec, solver: str, nfe: int, schedule_name: str, seed: int
) -> None:
    schedule = SCHEDULES[schedule_name]
    layer = build(spec, schedule)
    model = Counting(TARGET.model(schedule, "velocity" if schedule_name == "flow" else "epsilon"))
    denoiser = fewstep.Denoiser(model, schedule)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(4, 2, generator=g, dtype=torch.float64) * float(schedule.sigma(schedule.t_max))
    calls = fewstep.CallCount()
    options = {"generator": g, "calls": calls, "progress": False}
    try:
        if isinstance(layer, Teleport):
            out = layer.sample(denoiser, noise, solver=solver, nfe=nfe, **options)
        else:
            out = fewstep.sample(denoiser, noise, solver=solver, nfe=nfe, wrappers=[layer], **options)
    except ValueError as err:  # a budget the solver cannot spend exactly
        assert "nfe" in str(err), err
        return
    assert out.shape == noise.shape and bool(torch.isfinite(out).all()), out
    assert calls.network + calls.substituted == calls.requests == nfe
    assert model.calls == calls.network
    if isinstance(layer, ABCache):
        assert calls.network == layer.max_network(nfe)
    elif isinstance(layer, SkipCache):
        assert layer.min_network(nfe) <= calls.network <= layer.max_network(nfe)
    elif isinstance(layer, TStitch):
        assert layer.small_calls.network == calls.substituted
    else:
        assert calls.substituted == 0
