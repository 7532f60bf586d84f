"""lambda-DDIM (the conjugate integrator with B_t = lam I): DDIM at lam = 0, its step against an independent
quadrature of the conjugate ODE's coefficients, and its refusals. Its order is measured by
tests/test_convergence.py."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.solvers.ode.conjugate import ConjugateDDIM

TARGET = mixture_2d("wide")


def _noise(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("sched", [fewstep.VP(), fewstep.EDM(), fewstep.Flow()], ids=["vp", "edm", "flow"])
def test_lam_zero_is_ddim(sched) -> None:
    pred = "velocity" if isinstance(sched, fewstep.Flow) else "epsilon"
    model = TARGET.model(sched, pred)
    kw = dict(nfe=8, prediction=pred, progress=False)
    x = fewstep.sample(model, _noise(), sched, ConjugateDDIM(0.0), **kw)
    y = fewstep.sample(model, _noise(), sched, "ddim", **kw)
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("lam", [-0.5, 1.5])
def test_steps_match_an_independent_integration_of_the_conjugate_ode(lam: float) -> None:
    """x^ = e^{lam t} x / alpha (VP, t_max = 1): dx^/dt = lam x^ + e^{lam t} rho'(t) eps; one Euler step in x^ with
    the coefficient of eps integrated exactly (scipy quad of e^{lam v} rho'(v), rho' by the schedule's derivatives)."""
    sched = fewstep.VP()
    model = TARGET.model(sched, "epsilon")
    times = fewstep.spacing.model_times(sched, 7, "logsnr").numpy()
    x = _noise()
    got = fewstep.sample(model, x, sched, ConjugateDDIM(lam), spacing=times, final="t_min", prediction="epsilon")

    def rho(t: float) -> float:
        return float(sched.sigma(t) / sched.alpha(t))

    def drho(t: float, d: float = 1e-6) -> float:
        return (rho(t + d) - rho(t - d)) / (2 * d)

    for s, t in zip(times[:-1], times[1:], strict=True):
        eps = model(x, torch.full((x.shape[0],), float(s), dtype=torch.float64))
        xhat = math.exp(lam * s) * x / float(sched.alpha(s))
        phi = quad(lambda v: math.exp(lam * v) * drho(v), s, t, epsabs=1e-13, epsrel=1e-12)[0]
        xhat = xhat + lam * xhat * (t - s) + phi * eps
        x = xhat * float(sched.alpha(t)) / math.exp(lam * t)
    torch.testing.assert_close(got, x, rtol=1e-7, atol=1e-7)
    ddim = fewstep.sample(model, _noise(), sched, "ddim", spacing=times, final="t_min", prediction="epsilon")
    assert (got - ddim).abs().max() > 1e-3


def test_lowers_ddims_error_at_10_to_20_nfe() -> None:
    from fewstep.bench.targets import reference_solution_from_time

    sched = fewstep.VP()
    model = TARGET.model(sched, "epsilon")
    noise = _noise(256)
    ref = reference_solution_from_time(TARGET, noise, sched, sched.t_max)
    for nfe in (10, 20):
        err = {
            name: float((fewstep.sample(model, noise, sched, name, nfe=nfe, prediction="epsilon") - ref).abs().mean())
            for name in ("conjugate_ddim", "ddim")
        }
        assert err["conjugate_ddim"] < 0.5 * err["ddim"], err


@pytest.mark.parametrize("lam", [math.nan, "1", True])
def test_invalid_lam(lam) -> None:
    with pytest.raises(ValueError, match="lam"):
        ConjugateDDIM(lam)
