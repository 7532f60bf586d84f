"""DC-Solver: the dynamic compensation against an independent loop written after the reference code, its ratio
search and cache, and its refusals. Its order (no ratios: UniPC's) is measured by tests/test_convergence.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.solvers.ode.dc_solver import DCRatios, DCSolver, lagrange_weights
from fewstep.solvers.unic import unic_weights, unip_weights

SCHED = fewstep.VP()
TARGET = mixture_2d("wide")


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _model():
    return TARGET.model(SCHED, "epsilon")


def reference_dc(noise: torch.Tensor, times: np.ndarray, ratios: list[float], dc_order: int = 2) -> torch.Tensor:
    """DC-Solver written after the reference code's ``DCSolverMultistepScheduler.step`` (UniPC bh2, solver_order
    2, lower-order final steps, corrector after every step but the last; a clean end after ``times``): correct,
    push the estimate, replace it by the Lagrange interpolation at ``t_ = ratio (t[-1] - t[-2]) + t[-2]``,
    predict."""
    model = _model()
    a = [float(SCHED.alpha(t)) for t in times] + [1.0]
    s = [float(SCHED.sigma(t)) for t in times] + [0.0]
    lam = np.array([math.log(ai / si) if si > 0 else math.inf for ai, si in zip(a, s, strict=True)])
    n = len(times)  # steps (the last to sigma = 0)
    outputs: list[torch.Tensor] = []
    ts: list[float] = []
    orders = [min(2, j + 1) for j in range(n)]  # warm-up; the last step first order, the one before at most second
    orders[-1] = 1
    x, last = noise, None
    for i in range(n):
        eps = model(x, torch.full((x.shape[0],), float(times[i]), dtype=torch.float64))
        x0 = (x - s[i] * eps) / a[i]
        if i > 0:  # UniC of the step i - 1 at its order, from the last state
            k = orders[i - 1]
            w_new, *w_old = unic_weights(lam, i - 1, k)
            x = s[i] / s[i - 1] * last + a[i] * (
                w_new * x0 + sum(w * d for w, d in zip(w_old, outputs[::-1], strict=False))
            )
        outputs.append(x0)
        ts.append(float(times[i]))
        if i >= dc_order and ratios[i] != 1.0:
            t_ = ratios[i] * (ts[-1] - ts[-2]) + ts[-2]
            dc = torch.zeros_like(x0)
            for p in range(dc_order + 1):
                term = outputs[-(p + 1)]
                for q in range(dc_order + 1):
                    if p != q:
                        term = term * ((t_ - ts[-(q + 1)]) / (ts[-(p + 1)] - ts[-(q + 1)]))
                dc = dc + term
            outputs[-1] = dc
        w = unip_weights(lam, i, orders[i])
        last = x
        x = s[i + 1] / s[i] * x + a[i + 1] * sum(wj * d for wj, d in zip(w, outputs[::-1], strict=False))
    return x


def test_lagrange_weights_interpolate_quadratics_exactly() -> None:
    pts = [0.7, 0.4, 0.15]
    f = lambda t: 3 * t**2 - 2 * t + 0.5  # noqa: E731
    for tau in (0.7, 0.55, 0.9, 0.2):
        w = lagrange_weights(pts, tau)
        assert sum(wk * f(pk) for wk, pk in zip(w, pts, strict=True)) == pytest.approx(f(tau), abs=1e-13)
    assert lagrange_weights(pts, 0.7) == pytest.approx([1.0, 0.0, 0.0], abs=1e-15)


def test_without_ratios_it_is_unipc_bh2() -> None:
    noise = _noise(16)
    for nfe in (5, 8):
        x = fewstep.sample(_model(), noise, SCHED, "dc_solver", nfe=nfe, prediction="epsilon", progress=False)
        y = fewstep.sample(_model(), noise, SCHED, "unipc_bh2", nfe=nfe, prediction="epsilon", progress=False)
        assert torch.equal(x, y)
    ones = DCSolver(ratios=[1.0] * 8)
    z = fewstep.sample(_model(), noise, SCHED, ones, nfe=8, prediction="epsilon", progress=False)
    assert torch.equal(z, y)


@pytest.mark.parametrize(
    "ratios", [[1.0, 1.0, 1.2, 0.8, 0.6, 1.1, 0.7, 0.9], [1.0, 1.3, 0.5, 1.5, 1.0, 0.9, 1.0, 0.75]]
)
def test_matches_the_reference_loop(ratios: list[float]) -> None:
    noise = _noise(32, 3)
    times = fewstep.spacing.model_times(SCHED, 8, "logsnr").numpy()
    want = reference_dc(noise, times, ratios)
    got = fewstep.sample(
        _model(), noise, SCHED, DCSolver(ratios=ratios), steps=8, prediction="epsilon", progress=False
    )  # fmt: skip
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    plain = fewstep.sample(_model(), noise, SCHED, "unipc_bh2", steps=8, prediction="epsilon", progress=False)
    assert (got - plain).abs().max() > 1e-4  # the compensation changes the result


def test_search_lowers_the_error_on_its_samples_and_is_cached(tmp_path) -> None:
    from fewstep.bench.targets import reference_solution_from_time

    noise = _noise(16, 5)
    calls = fewstep.CallCount()
    kw = dict(noise=noise, nfe=8, prediction="epsilon", model_key="wide-mixture", cache_dir=tmp_path)
    r = fewstep.compute_dc_ratios(_model(), SCHED, calls=calls, **kw)
    assert isinstance(r, DCRatios) and r.ratios.shape == (8,)
    assert np.all(r.ratios[:2] == 1.0) and np.any(r.ratios != 1.0)
    assert np.all((r.ratios >= 0.5) & (r.ratios <= 1.5))
    assert calls.nfe > 8 * 6  # the reference run and the trials
    ref = reference_solution_from_time(TARGET, noise, SCHED, SCHED.t_max)
    err = {}
    for name, solver in (("dc", DCSolver(ratios=r)), ("unipc", "unipc_bh2")):
        x = fewstep.sample(_model(), noise, SCHED, solver, nfe=8, prediction="epsilon", progress=False)
        err[name] = float((x - ref).square().mean())
    assert err["dc"] < 0.5 * err["unipc"], err
    again = fewstep.CallCount()
    cached = fewstep.compute_dc_ratios(_model(), SCHED, calls=again, **kw)
    assert again.nfe == 0 and np.array_equal(cached.ratios, r.ratios) and cached.key == r.key
    (path,) = tmp_path.rglob("*.pt")
    with pytest.raises(ValueError, match="key"):
        DCRatios.load(path, key="another")


def test_ratios_for_another_table_are_refused_before_any_call() -> None:
    r = DCRatios(fewstep.spacing.model_times(SCHED, 8, "logsnr").numpy().tolist() + [math.nan], np.ones(8))
    calls = fewstep.CallCount()
    for solver, match in ((DCSolver(ratios=r), "other node times"), (DCSolver(ratios=[1.0] * 5), "5 ratios")):
        with pytest.raises(ValueError, match=match):
            fewstep.sample(_model(), _noise(4), SCHED, solver, nfe=6, prediction="epsilon", calls=calls)
    assert calls.network == 0
    fewstep.sample(_model(), _noise(4), SCHED, DCSolver(ratios=r), nfe=8, prediction="epsilon", progress=False)


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="dc_order"):
        DCSolver(dc_order=4)
    with pytest.raises(TypeError, match="ratios"):
        DCSolver(ratios="1.0")
    with pytest.raises(ValueError, match="ratios"):
        DCSolver(ratios=[1.0, math.nan])
    with pytest.raises(ValueError, match="dc_order=2"):
        DCSolver(ratios=DCRatios(np.arange(4.0), np.ones(3)), dc_order=1)
    with pytest.raises(ValueError, match="one ratio per step"):
        DCRatios(np.arange(4.0), np.ones(4))
    with pytest.raises(ValueError, match="bounds"):
        fewstep.compute_dc_ratios(_model(), SCHED, noise=_noise(4), nfe=5, prediction="epsilon", bounds=(1.0, 2.0))
    with pytest.raises(ValueError, match="noise"):
        fewstep.compute_dc_ratios(_model(), SCHED, noise=torch.zeros(3), nfe=5, prediction="epsilon")
