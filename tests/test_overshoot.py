"""AMO's overshooting sampler: its steps against the reference scheduler's algebra, the Euler step at c = 0, and
its weak convergence (the samples' law approaches the data's as the steps grow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import GaussianMixture, mixture_2d
from fewstep.nodes import NodeTable
from fewstep.solvers.sde.overshoot import Overshoot

SCHED = fewstep.Flow()


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("c", [0.5, 1.0, 3.0])
def test_steps_follow_the_reference_scheduler(c: float) -> None:
    """diffusers' FlowMatchStochasticOvershootDiscreteScheduler.step (attn_map=None, overshot_func
    t + dt (1 - t)): r = 1 - sigma, r_o = min(r' + c dr (1 - r'), 1), x' = a (x + (r_o - r)(-v)) + b z,
    a = r'/r_o, b = sqrt((1 - r')^2 - (a - r')^2); with v = eps - x0 that is (r', a - r', b) on (x0, eps, z)."""
    den = fewstep.Denoiser(mixture_2d().model(SCHED, "velocity"), SCHED, "velocity")
    times = fewstep.spacing.model_times(SCHED, 8, "uniform").numpy()
    nodes = NodeTable.build(den, np.append(times, math.nan), True, 1, torch.device("cpu"), torch.float64)
    solver = Overshoot(c)
    for i in range(nodes.steps):
        got = solver.plan(nodes, i, c)
        sigma, sigma_next = float(nodes.sigma[i]), float(nodes.sigma[i + 1])
        r_next = 1 - sigma_next
        if not nodes.finite(i):  # from pure noise or to the data: the deterministic step
            assert got.c_z == 0.0 and got.c_x0 == pytest.approx(float(nodes.alpha[i + 1]))
            continue
        r_o = min(r_next + c * (sigma - sigma_next) * (1 - r_next), 1.0)
        a = r_next / r_o
        b = math.sqrt((1 - r_next) ** 2 - (a - r_next) ** 2)
        assert got.c_x0 == pytest.approx(r_next, abs=1e-12)
        assert got.c_eps == pytest.approx(a - r_next, abs=1e-12)
        assert got.c_z == pytest.approx(b, abs=1e-12)


def test_c_zero_is_the_euler_step() -> None:
    model = mixture_2d("wide").model(SCHED, "velocity")
    kw = dict(nfe=8, prediction="velocity", progress=False)
    x = fewstep.sample(model, _noise(32), SCHED, Overshoot(0.0), generator=torch.Generator().manual_seed(3), **kw)
    torch.testing.assert_close(x, fewstep.sample(model, _noise(32), SCHED, "euler", **kw), rtol=1e-12, atol=1e-12)


def test_draws_are_recorded_and_counted() -> None:
    model = mixture_2d().model(SCHED, "velocity")
    calls = fewstep.CallCount()
    traj = fewstep.Trajectory()
    fewstep.sample(
        model, _noise(8), SCHED, "overshoot", nfe=6, prediction="velocity", calls=calls, trajectory=traj,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert calls.network == 6
    solver = Overshoot()
    den = fewstep.Denoiser(model, SCHED, "velocity")
    times = fewstep.spacing.model_times(SCHED, 6, "uniform").numpy()
    nodes = NodeTable.build(den, np.append(times, math.nan), True, 8, torch.device("cpu"), torch.float64)
    assert solver.nfe(nodes) == 6
    # from pure noise and to the data the steps are deterministic; the four between draw noise
    assert traj.stochastic == [False, True, True, True, True, False]
    assert traj.log_prob.shape == (8,)


def test_law_converges_to_the_data() -> None:
    """A single Gaussian N(mu, s^2 I): the samples' mean and standard deviation approach the data's with the steps,
    about first order in the steps (weak error)."""
    target = GaussianMixture.single(2, [0.5, -0.3], 0.6)
    model = target.model(SCHED, "velocity")
    noise = _noise(20000, 7)
    errors = []
    for n in (8, 32):
        x = fewstep.sample(
            model, noise, SCHED, "overshoot", nfe=n, prediction="velocity", progress=False,
            generator=torch.Generator().manual_seed(11),
        )  # fmt: skip
        err = (x.mean(0) - torch.tensor([0.5, -0.3], dtype=torch.float64)).abs().max() + (x.std(0) - 0.6).abs().max()
        errors.append(float(err))
    assert errors[1] < errors[0] / 2.5, errors  # measured 0.27 -> 0.088


def test_invalid_c() -> None:
    with pytest.raises(ValueError, match="c"):
        Overshoot(-1.0)
