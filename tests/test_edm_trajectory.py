"""Recorded trajectories of ``edm_sde``: the churn ``x_hat_i ~ N((alpha_hat/alpha_i) x_i, std_i^2 I)`` of every
step, its log-density, and replay of the recorded noise."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
from helpers import assert_replay_reproduces, randn
from torch import Tensor

import fewstep
from fewstep import sample_with_logprob
from fewstep.bench.targets import mixture_2d
from fewstep.trajectory import Trajectory

F64 = torch.float64
TARGET = mixture_2d("default")
CASES = {  # schedule, prediction, start scale, options
    "vp": (fewstep.DiscreteVP.linear(), "epsilon", 1.0, {"s_churn": 5.0, "s_tmin": 0.0, "s_tmax": math.inf}),
    "edm": (fewstep.EDM(), "sample", 80.0, {"s_churn": 5.0, "s_noise": 1.003}),  # EDM's s_tmin, s_tmax
}
NFE = 11  # 6 steps: 5 Heun steps and the Euler step to sigma = 0


def record(case: str, noise: Tensor, **kw: Any) -> Trajectory:
    schedule, prediction, scale, opts = CASES[case]
    model = TARGET.model(schedule, prediction)
    return sample_with_logprob(
        model, scale * noise, schedule, "edm_sde", nfe=NFE, prediction=prediction, **{**opts, **kw}
    )  # type: ignore[arg-type]


def churn(case: str, steps: int) -> list[tuple[float, float] | None]:
    """EDM Alg. 2 in the levels s = sigma/alpha: gamma = min(s_churn/N, sqrt(2) - 1) where s_tmin <= s_i <= s_tmax,
    s_hat = (1 + gamma) s_i (none above the schedule's largest level), and in x = alpha y the churn
    x_hat = (alpha_hat/alpha_i) x_i + alpha_hat sqrt(s_hat^2 - s_i^2) s_noise z: (mean factor, std) per step."""
    schedule, _, _, opts = CASES[case]
    s_churn, s_noise = opts["s_churn"], opts.get("s_noise", 1.0)
    s_tmin, s_tmax = opts.get("s_tmin", 0.05), opts.get("s_tmax", 50.0)
    times = fewstep.spacing.model_times(schedule, steps, "logsnr")
    levels = [float(v) for v in schedule.level(times)]
    s_top = float(schedule.level(torch.tensor(schedule.t_max, dtype=F64)))
    gamma = min(s_churn / steps, math.sqrt(2.0) - 1.0)
    out: list[tuple[float, float] | None] = []
    for s in levels:
        s_hat = min((1.0 + gamma) * s, s_top)
        if not s_tmin <= s <= s_tmax or s_hat <= s * (1 + 1e-12):
            out.append(None)
            continue
        alpha, alpha_hat = 1.0 / math.sqrt(1.0 + s**2), 1.0 / math.sqrt(1.0 + s_hat**2)  # VP: alpha^2 (1 + s^2) = 1
        if case == "edm":
            alpha = alpha_hat = 1.0
        out.append((alpha_hat / alpha, alpha_hat * math.sqrt(s_hat**2 - s**2) * s_noise))
    return out


@pytest.mark.parametrize("case", CASES)
def test_log_prob_is_the_gaussian_density_of_the_churn(case: str) -> None:
    noise = randn(16, 2, seed=5)
    traj = record(case, noise, seed=3)
    steps = len(traj.means)
    assert steps == 6 and len(traj.states) == 7 and len(traj.noisy) == len(traj.log_probs) == 6
    expected = churn(case, steps)
    assert traj.stochastic == [c is not None for c in expected] and 2 <= sum(traj.stochastic) < steps
    total = torch.zeros(16, dtype=F64)
    for i, c in enumerate(expected):
        mean, std, lp, noisy = traj.means[i], traj.stds[i], traj.log_probs[i], traj.noisy[i]
        if c is None:
            assert std == 0 and lp is None and noisy is None and torch.equal(mean, traj.states[i + 1])
            continue
        assert lp is not None and noisy is not None and lp.shape == (16,)
        factor, expected_std = c
        assert std == pytest.approx(expected_std, rel=1e-9)
        torch.testing.assert_close(
            mean, factor * traj.states[i], rtol=1e-12, atol=1e-12
        )  # mean (alpha_hat/alpha_i) x_i
        torch.testing.assert_close(noisy, mean + std * traj.noises[i], rtol=1e-12, atol=1e-12)  # type: ignore[operator]
        reference = torch.distributions.Normal(mean, std).log_prob(noisy).sum(1)
        torch.testing.assert_close(lp, reference, rtol=1e-10, atol=1e-10)
        assert not torch.equal(noisy, traj.states[i + 1])  # the Heun step follows the churn
        total += lp
    torch.testing.assert_close(traj.log_prob, total)


@pytest.mark.parametrize("case", CASES)
def test_recording_and_replay_reproduce_the_run(case: str) -> None:
    noise = randn(8, 2, seed=6)
    schedule, prediction, scale, opts = CASES[case]
    plain = fewstep.sample(
        TARGET.model(schedule, prediction), scale * noise, schedule, "edm_sde", nfe=NFE, prediction=prediction,
        generator=torch.Generator().manual_seed(1), **opts,
    )  # fmt: skip
    assert_replay_reproduces(functools.partial(record, case, noise), plain)


def test_no_churn_records_a_deterministic_run() -> None:
    traj = record("vp", randn(4, 2), s_churn=0.0, seed=0)
    assert traj.stochastic == [False] * 6 and torch.equal(traj.log_prob, torch.zeros(4, dtype=F64))


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_the_churn_means_carry_the_model() -> None:
    """The mean of step i's churn is (alpha_hat/alpha_i) Heun_{i-1}(x_hat_{i-1}): it depends on the model."""
    schedule, prediction, _, opts = CASES["vp"]
    scale = torch.tensor(1.0, dtype=F64, requires_grad=True)
    model = TARGET.model(schedule, prediction)

    def scaled(x: Tensor, t: Tensor) -> Tensor:
        return scale * model(x, t)

    traj = sample_with_logprob(scaled, randn(4, 2), schedule, "edm_sde", nfe=NFE, seed=0, grad=True, **opts)
    (grad,) = torch.autograd.grad(traj.log_prob.sum(), scale)
    assert math.isfinite(float(grad)) and float(grad) != 0.0
