"""Property test (hypothesis): every solver x reducer x NFE on the mixture target returns a finite sample, and the
layers' accounting is exact (network + substituted == requests, the network calls within the plan's bounds); the
same for bottleneck sampling on an image target exact at two resolutions (calls per resolution as planned)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import Counting
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reducers_bottleneck import BySize, tiny

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.reducers import SADA, ABCache, Bottleneck, GaussianFit, SkipCache, Stage, Teleport, TStitch

TARGET = mixture_2d("default")
SCHEDULES = {"vp": fewstep.VP(), "edm": fewstep.EDM(), "flow": fewstep.Flow(t_max=0.999)}
SOLVERS = sorted(info.name for info in fewstep.solvers.available())
FIT = GaussianFit(TARGET.mean(), TARGET.covariance())


@st.composite
def reducers(draw):
    kind = draw(st.sampled_from(["ab", "skip", "sada", "stitch", "teleport"]))
    variable = draw(st.sampled_from(["lambda", "t"]))
    quantity = draw(st.sampled_from(["x0", "eps"]))
    if kind == "ab":
        return ABCache(draw(st.integers(1, 4)), draw(st.integers(1, 3)), variable=variable, quantity=quantity)
    if kind in ("skip", "sada"):
        threshold = draw(st.sampled_from([0.0, 0.02, 0.2, float("inf")]))
        layer = SkipCache if kind == "skip" else SADA
        return layer(threshold, draw(st.integers(0, 3)), draw(st.integers(1, 3)), variable=variable, quantity=quantity)
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
    elif isinstance(layer, SkipCache):  # SADA included
        assert layer.min_network(nfe) <= calls.network <= layer.max_network(nfe)
    elif isinstance(layer, TStitch):
        assert layer.small_calls.network == calls.substituted
    else:
        assert calls.substituted == 0


IMAGES = tiny(5)  # three Gaussians of 4 x 4 images, exact at 4 x 4 and at 2 x 2


@pytest.mark.filterwarnings("ignore::fewstep.DivergenceWarning")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    solver=st.sampled_from(SOLVERS),
    nfes=st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
    three=st.booleans(),
    cuts=st.tuples(st.floats(0.1, 0.9), st.floats(0.0, 0.5), st.floats(0.0, 0.5)),
    mode=st.sampled_from(["fresh", "start"]),
    schedule_name=st.sampled_from(sorted(SCHEDULES)),
    seed=st.integers(0, 2**16),
)
def test_bottleneck_runs_any_solver_with_exact_accounting(solver, nfes, three, cuts, mode, schedule_name, seed) -> None:
    """Every solver x stage budget x schedule: a finite sample, network calls per resolution exactly as planned."""
    schedule = SCHEDULES[schedule_name]
    lo, hi = schedule.t_min, schedule.t_max
    cut, back, back2 = (lo + u * (hi - lo) for u in cuts)
    first_end = max(cut, lo + 0.1 * (hi - lo))
    if three:  # high-low-high
        stages = [
            Stage(1, nfes[0], t_end=first_end),
            Stage(2, nfes[1], t_end=first_end / 2 + lo / 2, t_start=min(hi, first_end + back - lo)),
            Stage(1, nfes[2], t_start=min(hi, first_end / 2 + lo / 2 + back2 - lo)),
        ]
    else:
        stages = [Stage(2, nfes[0], t_end=first_end), Stage(1, nfes[1], t_start=min(hi, first_end + back - lo))]
    model = BySize(IMAGES.model(schedule, "velocity" if schedule_name == "flow" else "epsilon"))
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64) * float(schedule.sigma(schedule.t_max))
    bottleneck = Bottleneck(stages, noise=mode)
    calls = fewstep.CallCount()
    try:
        out = bottleneck.sample(model, noise, schedule, solver, generator=g, calls=calls, progress=False)
    except ValueError as err:  # a budget the solver cannot spend exactly
        assert "nfe" in str(err), err
        return
    assert out.shape == noise.shape and bool(torch.isfinite(out).all()), out
    plan = bottleneck.network_calls()
    assert calls.network == calls.requests == sum(plan.values()) == sum(model.sizes.values())
    assert bottleneck.counts.by_factor() == plan
    assert {4 // f: n for f, n in plan.items()} == {size[0]: n for size, n in model.sizes.items()}
    assert math.isclose(bottleneck.counts.full_equivalent, bottleneck.full_equivalent())
