"""TDS's lookahead proposal (``TDS(lookahead=True)``): the proposal linearises the twist of the node the step lands
on. Its gradient and curvature against the hand formula, the engine handing each step's next node to the potential,
exactness kept (the weighted particles still target the posterior), and the default left as published."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

import fewstep
from fewstep.bench.targets import GaussianMixture, mixture_2d
from fewstep.bench.targets.posterior import as_full_covariance, mixture_posterior
from fewstep.posterior import Linear
from fewstep.posterior.smc import TDS, smc
from fewstep.posterior.smc.twist import TwistStep
from fewstep.spacing import model_times

F64 = torch.float64
SCHED = fewstep.VP()
A = torch.tensor([[1.0, 0.0]], dtype=F64)
MEAS = Linear(y=torch.tensor([[1.4]], dtype=F64), noise_std=0.3, A=A)


def gaussian_r2(alpha: float, sigma: float, s: float = 1.0) -> float:
    """``S^2 q / (S^2 + q)``, ``q = sigma^2 / alpha^2``: the variance of ``x0 | x_t`` for data ``N(m, S^2 I)``."""
    q = sigma * sigma / (alpha * alpha)
    return s * s * q / (s * s + q)


@pytest.mark.parametrize("lookahead", [True, False])
def test_gradient_and_curvature_by_hand(lookahead: bool) -> None:
    """``x0_hat = c x`` (Jacobian ``c I``): value ``-|res|^2 / (2 w_i) - log(w_i) / 2``; gradient ``c A^T res / w``
    and curvature ``|c A^T res|^2 / (w |res|^2)`` with ``w = w_{i+1}`` (lookahead) or ``w_i``."""
    c, (alpha, sigma), following = 0.8, (0.6, 0.8), (0.9, 0.4359)
    x = torch.tensor([[0.3, -1.0], [2.0, 0.5]], dtype=F64)
    leaf = x.clone().requires_grad_(True)
    step = TDS(MEAS, lookahead=lookahead).value_and_gradient(leaf, c * leaf, alpha, sigma, following)
    res = 1.4 - c * x[:, 0]
    w_i = 0.09 + gaussian_r2(alpha, sigma)
    w = 0.09 + gaussian_r2(*following) if lookahead else w_i
    torch.testing.assert_close(step.value, -res.square() / (2 * w_i) - 0.5 * math.log(w_i))
    grad = torch.stack([c * res / w, torch.zeros_like(res)], 1)
    torch.testing.assert_close(step.grad, grad)
    assert step.curvature is not None
    torch.testing.assert_close(step.curvature, (c * res).square() / (w * res.square()))
    assert lookahead == (w < w_i - 1e-3)  # the next node's twist is the sharper one


def test_first_order_shift_and_tweedie_keep_the_current_twist() -> None:
    c, (alpha, sigma), following = 0.8, (0.6, 0.8), (0.9, 0.4359)
    x = torch.tensor([[0.3, -1.0]], dtype=F64)
    steps = []
    for pot in (TDS(MEAS, optimal_proposal=False, lookahead=True), TDS(MEAS, optimal_proposal=False)):
        leaf = x.clone().requires_grad_(True)
        steps.append(pot.value_and_gradient(leaf, c * leaf, alpha, sigma, following))
    assert steps[0].curvature is None
    torch.testing.assert_close(steps[0].grad, steps[1].grad)
    assert float(steps[0].grad[0, 0]) == pytest.approx(c * (1.4 - c * 0.3) / (0.09 + gaussian_r2(alpha, sigma)))
    for flag in (True, False):
        leaf = x.clone().requires_grad_(True)
        steps.append(TDS(MEAS, variance="tweedie", lookahead=flag).value_and_gradient(leaf, c * leaf, alpha, sigma))
    torch.testing.assert_close(steps[2].grad, steps[3].grad)


@dataclass(frozen=True)
class Spy(TDS):
    """TDS recording the schedule values of each gradient call and of the node it hands on."""

    seen: list[tuple[float, float, tuple[float, float] | None]] = field(default_factory=list)

    def value_and_gradient(
        self, leaf: torch.Tensor, x0: torch.Tensor, alpha: float, sigma: float, following: object = None
    ) -> TwistStep:
        self.seen.append((alpha, sigma, following))  # type: ignore[arg-type]
        return super().value_and_gradient(leaf, x0, alpha, sigma, following)  # type: ignore[arg-type]


def test_engine_hands_each_step_its_next_node() -> None:
    """Node ``i``'s gradient call gets ``(alpha, sigma)`` of node ``i + 1`` (the times of the logSNR spacing); the
    last step, to the clean end, is deterministic and takes no gradient."""
    spy = Spy(MEAS, lookahead=True)
    model = as_full_covariance(mixture_2d()).model(SCHED, "epsilon")
    smc(model, torch.randn(1, 3, 2, dtype=F64), SCHED, spy, nfe=6, generator=torch.Generator().manual_seed(0))
    t = model_times(SCHED, 6, "logsnr")
    alpha, sigma = SCHED.alpha(t).tolist(), SCHED.sigma(t).tolist()
    assert len(spy.seen) == 5
    for i, (a, s, nxt) in enumerate(spy.seen):
        assert (a, s) == pytest.approx((alpha[i], sigma[i]), rel=1e-9)
        assert nxt == pytest.approx((alpha[i + 1], sigma[i + 1]), rel=1e-9)


def test_lookahead_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="lookahead"):
        TDS(MEAS, lookahead="yes")  # type: ignore[arg-type]


def test_lookahead_keeps_the_posterior() -> None:
    """A Gaussian prior ``N(m, 0.5^2 I)`` and ``y = x_1 + n``: the weighted particles' mean and the variance of the
    observed coordinate match the exact Gaussian posterior (the proposal changes, the weights account for it)."""
    prior = GaussianMixture([[1.0, -0.5]], [0.5], [1.0])
    post = mixture_posterior(prior, MEAS)
    model = as_full_covariance(prior).model(SCHED, "epsilon")
    k = 4096
    r = smc(
        model,
        torch.randn(1, k, 2, dtype=F64, generator=torch.Generator().manual_seed(1)),
        SCHED,
        TDS(MEAS, lookahead=True),
        nfe=40,
        generator=torch.Generator().manual_seed(2),
    )
    x, w = r.samples[0], r.weights[0]
    mean = (w[:, None] * x).sum(0)
    var = (w * (x[:, 0] - mean[0]).square()).sum()
    # exact: precision 1/0.25 + 1/0.09 on x_1, prior on x_2
    v1 = 1.0 / (1.0 / 0.25 + 1.0 / 0.09)
    m1 = v1 * (1.0 / 0.25 + 1.4 / 0.09)
    ess = float(r.ess[-1, 0])
    tol = 4.0 * math.sqrt(0.25 / ess)
    torch.testing.assert_close(mean, torch.tensor([m1, -0.5], dtype=F64), atol=tol, rtol=0.0)
    assert abs(float(var) - v1) < 0.25 * v1, (float(var), v1)
    exact = post.sample(2000, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(exact.mean(0), torch.tensor([m1, -0.5], dtype=F64), atol=0.05, rtol=0.0)


def test_default_is_the_published_proposal_and_the_option_is_wired() -> None:
    """``TDS(measurement)`` proposes with the current node's twist (``lookahead=False``, bit for bit); the
    lookahead changes the particles from the same noise (the option reaches the proposal)."""
    model = as_full_covariance(mixture_2d()).model(SCHED, "epsilon")
    start = torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    runs = [
        smc(model, start, SCHED, pot, nfe=10, generator=torch.Generator().manual_seed(5))
        for pot in (TDS(MEAS), TDS(MEAS, lookahead=False), TDS(MEAS, lookahead=True))
    ]
    torch.testing.assert_close(runs[0].samples, runs[1].samples, rtol=0.0, atol=0.0)
    torch.testing.assert_close(runs[0].log_weights, runs[1].log_weights, rtol=0.0, atol=0.0)
    assert not torch.allclose(runs[0].samples, runs[2].samples)


@dataclass(frozen=True)
class FourArguments(TDS):
    """A potential whose own ``value_and_gradient`` predates ``following`` (four arguments)."""

    calls: list[int] = field(default_factory=list)

    def value_and_gradient(  # type: ignore[override]
        self, leaf: torch.Tensor, x0: torch.Tensor, alpha: float, sigma: float
    ) -> TwistStep:
        self.calls.append(1)
        return super().value_and_gradient(leaf, x0, alpha, sigma)


def test_a_potential_without_following_still_runs() -> None:
    pot = FourArguments(MEAS)
    model = as_full_covariance(mixture_2d()).model(SCHED, "epsilon")
    start = torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    r = smc(model, start, SCHED, pot, nfe=5, generator=torch.Generator().manual_seed(7))
    ref = smc(model, start, SCHED, TDS(MEAS), nfe=5, generator=torch.Generator().manual_seed(7))
    assert len(pot.calls) == 4
    torch.testing.assert_close(r.samples, ref.samples)
