"""SADA-style step skipping (fewstep.reducers.SADA): its stability criterion by hand and its call accounting."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import Counting

import fewstep
from fewstep.bench.targets import mixture_nd
from fewstep.reducers import SADA, SkipCache
from fewstep.reducers.sada import ode_gradient, second_difference, stability

F64 = torch.float64
VP = fewstep.VP()


def test_second_difference_is_zero_on_a_line_and_exact_on_a_parabola() -> None:
    a, b, c = (torch.randn(2, 3, generator=torch.Generator().manual_seed(i), dtype=F64) for i in range(3))
    us = [-1.0, 0.5, 1.25]
    line = [(u, a + b * u) for u in us]
    torch.testing.assert_close(second_difference(line), torch.zeros(2, 3, dtype=F64), atol=1e-14, rtol=0)
    parabola = [(u, a + b * u + c * u**2) for u in us]
    # the line through the first two points misses c u^2 at u_2 by c (u_2 - u_0)(u_2 - u_1)
    expected = c * (us[2] - us[0]) * (us[2] - us[1])
    torch.testing.assert_close(second_difference(parabola), expected, rtol=1e-13, atol=1e-13)
    y2 = parabola[-1][1]
    by_hand = math.sqrt(float(expected.square().sum() / y2.square().sum()))
    assert math.isclose(stability(parabola), by_hand, rel_tol=1e-12)


def test_equal_steps_give_the_classical_second_difference() -> None:
    ys = [torch.tensor([[v]], dtype=F64) for v in (1.0, 4.0, 2.0)]
    out = second_difference([(0.0, ys[0]), (0.3, ys[1]), (0.6, ys[2])])
    assert float(out) == pytest.approx(2.0 - 2 * 4.0 + 1.0)


def test_ode_gradient_is_the_pf_ode_rate() -> None:
    """dx/dt = alpha' x0 + sigma' eps, and dx/dlambda = (dx/dt) / (dlambda/dt), checked against finite differences
    of the schedule."""
    denoiser = fewstep.Denoiser(mixture_nd().model(VP, "epsilon"), VP, "epsilon")
    p = denoiser.point(0.4, 3, torch.device("cpu"), F64)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    x = p.alpha * x0 + p.sigma * eps
    h = 1e-6
    ta, tb = torch.tensor(0.4 + h, dtype=F64), torch.tensor(0.4 - h, dtype=F64)
    dalpha = float(VP.alpha(ta) - VP.alpha(tb)) / (2 * h)
    dsigma = float(VP.sigma(ta) - VP.sigma(tb)) / (2 * h)
    dlam = float(VP.lambda_(ta) - VP.lambda_(tb)) / (2 * h)
    torch.testing.assert_close(ode_gradient(x, p, (x0, eps), "t"), dalpha * x0 + dsigma * eps, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(ode_gradient(x, p, (x0, None), "lambda"), (dalpha * x0 + dsigma * eps) / dlam,
                               rtol=1e-6, atol=1e-6)  # fmt: skip


def _run(layer, nfe: int = 20, solver: str = "dpmpp_2m"):
    target = mixture_nd()
    model = Counting(target.model(VP, "epsilon"))
    noise = torch.randn(16, target.dim, generator=torch.Generator().manual_seed(1), dtype=F64)
    calls = fewstep.CallCount()
    wrappers = [] if layer is None else [layer]
    out = fewstep.sample(model, noise, VP, solver, nfe=nfe, calls=calls, wrappers=wrappers, progress=False)
    return out, calls, model


def test_threshold_zero_never_skips_and_equals_the_plain_run() -> None:
    layer = SADA(threshold=0.0)
    out, calls, model = _run(layer)
    plain, _, _ = _run(None)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert calls.substituted == 0 and model.calls == calls.network == 20 == layer.counts.network


def test_infinite_threshold_skips_as_often_as_the_cap_allows() -> None:
    layer = SADA(threshold=math.inf, max_skips=1)
    _, calls, model = _run(layer)
    assert layer.warmup == 3
    assert calls.network == model.calls == layer.min_network(20) == 3 + 17 // 2
    assert calls.network + calls.substituted == calls.requests == 20
    assert (layer.counts.network, layer.counts.substituted) == (calls.network, calls.substituted)


def test_the_decision_follows_the_measured_stability() -> None:
    """Replaying the run by hand: from the real calls' gradients (recorded below the layer), the second difference
    by hand decides which requests (recorded above it) the layer substitutes."""
    threshold, max_skips, warmup = 0.15, 2, 3
    target = mixture_nd()
    denoiser = fewstep.Denoiser(target.model(VP, "epsilon"), VP, "epsilon")
    real: list[tuple[float, torch.Tensor]] = []  # (lambda, dx/dlambda) of each real call
    requests: list[float] = []

    class Below:
        def wrap(self, inner, needs_eps, calls):
            def evaluate(x, p):
                x0, eps = inner(x, p)
                eps_full = eps if eps is not None else (x - p.alpha * x0) / p.sigma
                dlam = p.dalpha / p.alpha - p.dsigma / p.sigma
                real.append((p.lam, (p.dalpha * x0 + p.dsigma * eps_full) / dlam))
                return x0, eps

            return evaluate

    class Above:
        def wrap(self, inner, needs_eps, calls):
            def evaluate(x, p):
                requests.append(p.lam)
                return inner(x, p)

            return evaluate

    noise = torch.randn(16, target.dim, generator=torch.Generator().manual_seed(1), dtype=F64)
    layer = SADA(threshold=threshold, max_skips=max_skips)
    wrappers = [Below(), layer, Above()]
    fewstep.sample(denoiser, noise, solver="dpmpp_2m", nfe=24, wrappers=wrappers, progress=False)
    # the expected pattern: after real call k (k >= 3), stable iff |y_k - line(y_{k-2}, y_{k-1})| < threshold |y_k|
    expected, k, skips, stable = [], 0, 0, False
    for n, _ in enumerate(requests):
        if n >= warmup and stable and skips < max_skips:
            expected.append(False)
            skips += 1
            continue
        expected.append(True)
        k, skips = k + 1, 0
        if k >= 3:
            (u0, y0), (u1, y1), (u2, y2) = real[k - 3 : k]
            line = y0 + (y1 - y0) * (u2 - u0) / (u1 - u0)
            stable = float((y2 - line).norm() / y2.norm()) < threshold
    assert sum(expected) == len(real) == layer.counts.network
    assert 0 < layer.counts.substituted == expected.count(False)
    assert [lam for lam, is_real in zip(requests, expected, strict=True) if is_real] == [lam for lam, _ in real]


def test_sada_differs_from_skipcache_only_in_the_criterion() -> None:
    a, b = SADA(threshold=math.inf, max_skips=1, warmup=3), SkipCache(threshold=math.inf, max_skips=1, warmup=3)
    out_a, calls_a, _ = _run(a)
    out_b, calls_b, _ = _run(b)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)  # both always stable: the same substitutions
    assert calls_a == calls_b


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"threshold": -1.0}, "threshold: must be >= 0"),
        ({"threshold": "x"}, "threshold: must be a number"),
        ({"max_skips": -1}, "max_skips: must be an integer >= 0"),
        ({"order": 0}, "order: must be an integer >= 1"),
        ({"warmup": 1}, "warmup: must be an integer >= 2"),
        ({"variable": "sigma"}, "variable: choose 'lambda' or 't'"),
    ],
)
def test_invalid_options_are_refused(options, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        SADA(**options)


def test_a_solver_that_returns_to_an_earlier_time_keeps_the_extrapolation_finite() -> None:
    """Heun++ evaluates at the next two nodes and then starts its next step at the first of them again. The kept
    outputs held that time twice (only a repeat of the last one was replaced), so the Lagrange extrapolation divided
    by zero and the run returned NaN (found by tests/test_reducers_properties.py's hypothesis search)."""
    from fewstep.bench.targets import mixture_2d
    from fewstep.reducers.counts import keep

    schedule = fewstep.Flow(t_max=0.999)
    denoiser = fewstep.Denoiser(mixture_2d("default").model(schedule, "velocity"), schedule)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layer = SADA(threshold=0.02, max_skips=1, order=3, warmup=3, variable="lambda", quantity="x0")
    calls = fewstep.CallCount()
    out = fewstep.sample(denoiser, noise, solver="heunpp2", nfe=7, wrappers=[layer], calls=calls, check_finite="each")
    assert bool(torch.isfinite(out).all()) and calls.network + calls.substituted == calls.requests == 7
    history: list = []
    point = fewstep.Denoiser(lambda x, t: x, schedule).point
    for t in (0.9, 0.5, 0.9):
        keep(history, point(t, 1, torch.device("cpu"), torch.float64), torch.zeros(1), 3)
    assert [h.t for h in history] == [0.5, 0.9]  # distinct times, the newest output kept
