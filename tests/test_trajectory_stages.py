"""Recorded trajectories of the samplers whose noise enters a step through other states than the next one:
``sa_solver`` with corrector (the predicted states), ``seeds_2``, ``seeds_3`` and ``dpm_solver_2_sde`` (one record
per stage draw), and ``pc_langevin`` (refused with a corrector, the predictor's transitions without)."""

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
from fewstep.bench.targets import GaussianMixture, mixture_2d
from fewstep.trajectory import Trajectory

F64 = torch.float64
TARGET = mixture_2d("default")
SCHEDULE = fewstep.DiscreteVP.linear()
MODEL = TARGET.model(SCHEDULE, "epsilon")
CASES: dict[str, tuple[str, int, dict[str, Any]]] = {  # solver, nfe, options
    "sa_solver": ("sa_solver", 8, {"tau_window": None}),
    "sa_solver_window": ("sa_solver", 8, {}),
    "sa_solver_2_2": ("sa_solver", 8, {"predictor_order": 2, "corrector_order": 2, "tau_window": None}),
    "seeds_2": ("seeds_2", 8, {}),  # orders [2, 2, 2, 1, 1]: the last step (to the data) is deterministic
    "seeds_3": ("seeds_3", 9, {}),  # orders [3, 3, 2, 1]
    "seeds_3_eta": ("seeds_3", 9, {"eta": 0.5, "s_noise": 0.9}),
    "dpm_solver_2_sde": ("dpm_solver_2_sde", 7, {}),  # orders [2, 2, 2, 1]
    "dpm_solver_2_sde_eta": ("dpm_solver_2_sde", 8, {"eta": 0.3}),
}
STAGES = {"sa_solver": 1, "seeds_2": 2, "seeds_3": 3, "dpm_solver_2_sde": 2}  # draws per full-order step


def record(case: str, noise: Tensor, model: Any = MODEL, schedule: Any = SCHEDULE, **kw: Any) -> Trajectory:
    solver, nfe, opts = CASES[case]
    return sample_with_logprob(model, noise, schedule, solver, nfe=nfe, **{**opts, **kw})


@pytest.mark.parametrize("case", CASES)
def test_log_probs_are_the_gaussian_densities_of_the_recorded_draws(case: str) -> None:
    noise = randn(16, 2, seed=5)
    traj = record(case, noise, seed=3)
    steps = len(traj.states) - 1
    assert len(traj.means) == len(traj.stds) == len(traj.noises) == len(traj.noisy) == len(traj.log_probs)
    assert len(traj.step) == len(traj.means) and traj.step == sorted(traj.step)
    assert set(traj.step) == set(range(steps))
    solver = CASES[case][0]
    counts = [traj.step.count(i) for i in range(steps)]
    assert max(counts) == STAGES[solver] and counts[-1] == 1 and not traj.stochastic[-1]  # the step to the data
    total = torch.zeros(16, dtype=F64)
    for k, (i, mean, std, z, noisy, lp) in enumerate(
        zip(traj.step, traj.means, traj.stds, traj.noises, traj.noisy, traj.log_probs, strict=True)
    ):
        if std == 0:
            assert lp is None and z is None and noisy is None and torch.equal(mean, traj.states[i + 1])
            continue
        assert lp is not None and z is not None and noisy is not None and lp.shape == (16,)
        torch.testing.assert_close(noisy, mean + std * z, rtol=1e-12, atol=1e-12)
        reference = torch.distributions.Normal(mean, std).log_prob(noisy).sum(1)
        torch.testing.assert_close(lp, reference, rtol=1e-10, atol=1e-10)
        last_of_step = k + 1 == len(traj.step) or traj.step[k + 1] != i
        if solver == "sa_solver" or last_of_step:
            # SA: the predicted state is the state the step emits; stages: the last stage is the step's end
            assert torch.equal(noisy, traj.states[i + 1])
        else:
            assert not torch.allclose(noisy, traj.states[i + 1])  # an intermediate stage
        total += lp
    torch.testing.assert_close(traj.log_prob, total)
    per_step = [lp for lp in traj.step_log_probs if lp is not None]
    noisy_steps = {i for i, s in zip(traj.step, traj.stds, strict=True) if s}
    assert len(traj.step_log_probs) == steps and len(per_step) == len(noisy_steps)
    torch.testing.assert_close(torch.stack(per_step).sum(0), total)
    if solver == "sa_solver" and "tau_window" not in CASES[case][2]:
        assert 0 < sum(traj.stochastic) < steps - 1  # tau = 0 outside the default window: deterministic steps


@pytest.mark.parametrize("case", CASES)
def test_recording_and_replay_reproduce_the_run_bit_for_bit(case: str) -> None:
    solver, nfe, opts = CASES[case]
    noise = randn(8, 2, seed=6)
    plain = fewstep.sample(MODEL, noise, SCHEDULE, solver, nfe=nfe, generator=torch.Generator().manual_seed(1), **opts)
    traj = assert_replay_reproduces(functools.partial(record, case, noise), plain)
    replayed = fewstep.sample(MODEL, noise, SCHEDULE, solver, nfe=nfe, noise_sampler=traj.replay(), **opts)
    assert torch.equal(replayed, plain)


def noisy_map(case: str, start: Tensor, model: Any, schedule: Any, draws: int) -> Any:
    """The recorded states as a function of all the drawn normals (flattened), through the solver itself."""

    def states(flat: Tensor) -> Tensor:
        zs = iter(flat.view(draws, *start.shape))
        traj = record(case, start, model, schedule, noise_sampler=lambda s, t: next(zs))
        return torch.cat([v.flatten() for v in traj.noisy if v is not None])

    return states


def jacobian(f: Any, z: Tensor, h: float = 1e-5) -> Tensor:
    """Central differences (the target models are not differentiable in x; exact for an affine map)."""
    cols = []
    for k in range(z.numel()):
        e = torch.zeros_like(z)
        e[k] = h
        cols.append((f(z + e) - f(z - e)) / (2 * h))
    return torch.stack(cols, 1)


@pytest.mark.parametrize("case", ["sa_solver", "sa_solver_2_2", "seeds_2", "seeds_3", "dpm_solver_2_sde"])
def test_total_log_prob_is_the_density_of_the_recorded_states(case: str) -> None:
    """The recorded states V are a map of all the normals z: their log-density given the start is
    ``log N(z; 0, I) - log |det dV/dz|`` (change of variables, with the full Jacobian)."""
    start = randn(1, 2, seed=7)
    traj = record(case, start, seed=4)
    zs = torch.stack([z for z in traj.noises if z is not None])
    states = noisy_map(case, start, MODEL, SCHEDULE, zs.shape[0])
    flat = zs.flatten()
    assert torch.equal(states(flat), torch.cat([v.flatten() for v in traj.noisy if v is not None]))
    jac = jacobian(states, flat, h=1e-3)  # the diagonal is exactly linear in z: only rounding
    assert torch.equal(jac, jac.tril())  # each recorded state depends on its own and earlier draws only
    assert float(jac.tril(-1).abs().max()) > 0.01  # the means depend on the earlier draws
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(flat).sum() - torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(traj.log_prob[0], expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("case", ["sa_solver", "seeds_2", "seeds_3", "dpm_solver_2_sde_eta"])
def test_linear_gaussian_case_matches_the_joint_gaussian_density(case: str) -> None:
    """One Gaussian target in 1-D: the model is affine in x, so the recorded states are jointly Gaussian given the
    start, ``V = m + M z`` with ``m`` the run with zero noise and ``M = dV/dz``; the recorded chain's total
    log-density is ``log N(V; m, M M^T)``."""
    target = GaussianMixture.single(1, mean=0.7, std=0.4)
    schedule = fewstep.VP()
    model = target.model(schedule, "epsilon")
    start = randn(1, 1, seed=8)
    traj = record(case, start, model, schedule, seed=5)
    values = torch.cat([v.flatten() for v in traj.noisy if v is not None])
    draws = len(values)
    assert draws >= 4
    states = noisy_map(case, start, model, schedule, draws)
    zero = torch.zeros(draws, dtype=F64)
    mean, cov_factor = states(zero), jacobian(states, zero, h=1.0)
    joint = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov_factor @ cov_factor.T)
    torch.testing.assert_close(traj.log_prob[0], joint.log_prob(values), rtol=1e-9, atol=1e-8)
    zs = torch.cat([z.flatten() for z in traj.noises if z is not None])  # V = m + M z for the recorded normals
    torch.testing.assert_close(values, mean + cov_factor @ zs, rtol=1e-9, atol=1e-9)


def test_pc_langevin_refuses_with_a_corrector_and_records_its_predictor_without() -> None:
    vp = fewstep.VP()
    model = TARGET.model(vp, "epsilon")
    noise = randn(8, 2, seed=9)
    calls = []

    def counted(x: Tensor, t: Tensor) -> Tensor:
        calls.append(1)
        return model(x, t)

    for norm in ("batch", "sample"):
        with pytest.raises(NotImplementedError, match=r"depends on the drawn z"):
            sample_with_logprob(counted, noise, vp, "pc_langevin", nfe=9, seed=0, norm=norm)
    assert not calls  # refused before any model call
    pc = sample_with_logprob(model, noise, vp, "pc_langevin", nfe=5, n_corrector=0, predictor="ddpm", seed=0)
    alone = sample_with_logprob(model, noise, vp, "ddpm", nfe=5, seed=0)
    assert torch.equal(pc.sample, alone.sample)  # type: ignore[arg-type]
    assert pc.stochastic == alone.stochastic == [True] * 4 + [False]
    torch.testing.assert_close(pc.log_prob, alone.log_prob, rtol=0, atol=0)


def test_eta_zero_records_a_deterministic_run() -> None:
    noise = randn(4, 2)
    for case in ("seeds_3", "dpm_solver_2_sde"):
        traj = record(case, noise, eta=0.0, seed=0)
        assert traj.step == list(range(len(traj.states) - 1)) and not any(traj.stochastic)
        assert torch.equal(traj.log_prob, torch.zeros(4, dtype=F64))
    sa = record("sa_solver", noise, tau=0.0, seed=0)
    assert not any(sa.stochastic)
    assert math.isfinite(float(record("seeds_2", noise, seed=0).log_prob.sum()))


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
@pytest.mark.parametrize("case", ["sa_solver", "seeds_3", "dpm_solver_2_sde"])
def test_log_prob_is_differentiable_through_the_stage_means(case: str) -> None:
    scale = torch.tensor(1.0, dtype=F64, requires_grad=True)

    def model(x: Tensor, t: Tensor) -> Tensor:
        return scale * MODEL(x, t)

    traj = record(case, randn(4, 2), model, seed=0, grad=True)
    (grad,) = torch.autograd.grad(traj.log_prob.sum(), scale)
    assert math.isfinite(float(grad)) and float(grad) != 0.0
