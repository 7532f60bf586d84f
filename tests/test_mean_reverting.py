"""The mean-reverting schedule (MRS / IR-SDE): its identities, the VP case, exact marginals of the shifted variable,
and sampling around the mean with the package's solvers (the MRS ODE solvers' orders on the exact targets)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import GaussianMixture, mixture_2d
from fewstep.mean_reverting import sample_mean_reverting
from fewstep.schedules import MeanReverting

SCHED = MeanReverting(theta_min=0.05, theta_max=10.0, sigma_inf=0.5)
MU = torch.tensor([1.5, -0.5], dtype=torch.float64)


def test_identities_and_inverse() -> None:
    t = torch.linspace(SCHED.t_min, SCHED.t_max, 41, dtype=torch.float64)
    a, s = SCHED.alpha(t), SCHED.sigma(t)
    torch.testing.assert_close(s**2, 0.25 * (1 - a**2))  # sigma_inf^2 (1 - alpha^2)
    torch.testing.assert_close(SCHED.t_of_lambda(SCHED.lambda_(t)), t, rtol=1e-10, atol=1e-12)
    d = 1e-6
    for f, df in ((SCHED.alpha, SCHED.dalpha), (SCHED.sigma, SCHED.dsigma)):
        torch.testing.assert_close(df(t), (f(t + d) - f(t - d)) / (2 * d), rtol=1e-6, atol=1e-8)
    assert float(SCHED.alpha(SCHED.t_max)) < 0.01  # near the stationary law N(mu, sigma_inf^2) at t_max


def test_unit_stationary_std_is_vp_with_beta_twice_theta() -> None:
    mr, vp = MeanReverting(0.05, 10.0, 1.0), fewstep.VP(0.1, 20.0)
    t = torch.linspace(1e-3, 1.0, 17, dtype=torch.float64)
    for name in ("alpha", "sigma", "lambda_", "dalpha", "dsigma"):
        torch.testing.assert_close(getattr(mr, name)(t), getattr(vp, name)(t))


def _shifted(target: GaussianMixture) -> GaussianMixture:
    """The law of y0 = x0 - mu."""
    return GaussianMixture(target.means - MU, target.stds, target.weights)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc_bh2", "dpmpp_2m_sde"])
def test_sampling_around_the_mean_is_the_shifted_problem(solver: str) -> None:
    """A network of x (the exact mixture denoiser of x0, reached through y = x - mu) sampled with
    sample_mean_reverting equals mu plus the sample of the shifted mixture from the same noise."""
    target = mixture_2d()
    y_model = _shifted(target).model(SCHED, "epsilon")
    x_model = lambda x, t: y_model(x - MU, t)  # noqa: E731
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(nfe=8, prediction="epsilon", progress=False)
    got = sample_mean_reverting(
        x_model, MU.expand(64, 2), z, SCHED, solver, generator=torch.Generator().manual_seed(1), **kw
    )
    want = MU + fewstep.sample(
        y_model, float(SCHED.sigma(SCHED.t_max)) * z, SCHED, solver, generator=torch.Generator().manual_seed(1), **kw
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("solver", "order"), [("ddim", 1), ("dpmpp_2m", 2), ("dpmpp_3m", 3)])
def test_ode_solver_orders_on_the_mean_reverting_schedule(solver: str, order: int) -> None:
    """The MRS ODE solvers in data prediction (= DPM-Solver++ on y) against the exact PF-ODE map of a single
    Gaussian N(m, s^2) of y0: the standardised coordinate (y - alpha m)/sqrt(alpha^2 s^2 + sigma^2) is constant."""
    target = GaussianMixture.single(2, [0.5, -0.3], 0.6)
    model = target.model(SCHED, "epsilon")
    g = torch.Generator().manual_seed(3)
    a0, s0 = float(SCHED.alpha(SCHED.t_max)), float(SCHED.sigma(SCHED.t_max))
    y = a0 * target.sample(32, g) + s0 * torch.randn(32, 2, generator=g, dtype=torch.float64)
    a1, s1 = float(SCHED.alpha(SCHED.t_min)), float(SCHED.sigma(SCHED.t_min))
    m = torch.tensor([0.5, -0.3], dtype=torch.float64)
    zeta = (y - a0 * m) / math.sqrt(a0**2 * 0.36 + s0**2)
    ref = a1 * m + math.sqrt(a1**2 * 0.36 + s1**2) * zeta
    counts = [20, 40, 80, 160] if order < 3 else [40, 80, 160, 320]
    opts = {"lower_order_final": False} if solver != "ddim" else {}
    errors = [
        float((fewstep.sample(model, y, SCHED, solver, steps=n, final="t_min", prediction="epsilon", **opts) - ref)
              .abs().max())
        for n in counts
    ]  # fmt: skip
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert slope >= order - 0.3, (slope, errors)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="sigma_inf"):
        MeanReverting(sigma_inf=0.0)
    with pytest.raises(ValueError, match="theta_min"):
        MeanReverting(theta_min=2.0, theta_max=1.0)
    with pytest.raises(TypeError, match="schedule"):
        sample_mean_reverting(lambda x, t: x, MU, MU, fewstep.VP(), nfe=5)
    with pytest.raises(ValueError, match="mu, noise"):
        sample_mean_reverting(lambda x, t: x, MU, MU[:1], SCHED, nfe=5)
