"""``inpaint_smc`` (:mod:`fewstep.posterior.smc.inpaint`) against exact posteriors: a correlated Gaussian's
conditional, the two-mode case whose modes are weighted by their spreads alone, and a noisy mask; the observed entries
reproduced exactly, the documented calls, and every bad input refused before the first model call."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import GaussianMixture, mixture_2d
from fewstep.bench.targets.posterior import FullCovarianceMixture, as_full_covariance, mixture_posterior
from fewstep.posterior import Linear, Mask
from fewstep.posterior.smc import inpaint_smc

F64 = torch.float64
SCHED = fewstep.VP()


def _weighted_moments(samples: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor, float]:
    """Pooled over prompts: the weighted mean ``(D,)``, covariance ``(D, D)`` and the mean ESS per prompt."""
    w = log_w.exp().to(F64)
    b = w.shape[0]
    mean = (w[..., None] * samples).sum(1).mean(0)
    d = samples - mean
    cov = (w[..., None, None] * d[..., :, None] * d[..., None, :]).sum(1).mean(0)
    ess = float((1.0 / w.square().sum(1)).mean())
    return mean, cov, ess * b


@pytest.mark.parametrize("ess_threshold", [0.0, 0.5])
def test_the_conditional_of_a_correlated_gaussian(ess_threshold: float) -> None:
    """Prior ``N(m, C)`` with correlated coordinates, entries 0 and 2 observed exactly: the unobserved ones follow
    ``N(m_u + C_uo C_oo^-1 (y - m_o), C_uu - C_uo C_oo^-1 C_ou)``, with or without resampling."""
    gen = torch.Generator().manual_seed(0)
    root = torch.randn(4, 4, generator=gen, dtype=F64) * 0.4 + torch.eye(4, dtype=F64) * 0.5
    prior = FullCovarianceMixture(torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=F64), (root @ root.T)[None], [1.0])
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)
    inpaint = Mask(y=torch.tensor([[0.9, 0.0, -0.4, 0.0]], dtype=F64), mask=mask)
    exact = mixture_posterior(prior, inpaint)
    noise = torch.randn(4, 2048, 4, generator=gen, dtype=F64)
    calls = fewstep.CallCount()
    out = inpaint_smc(prior.model(SCHED, "epsilon"), noise, SCHED, inpaint, nfe=30, generator=gen,
                      ess_threshold=ess_threshold, calls=calls)  # fmt: skip
    assert (calls.network, calls.backward) == (30, 0)
    assert bool((out.samples[..., [0, 2]] == inpaint.y[:, [0, 2]]).all())  # exactly, not to rounding
    mean, cov, ess = _weighted_moments(out.samples, out.log_weights)
    u = [1, 3]
    want_cov = exact.covariances[0][u][:, u]
    var = float(want_cov.diagonal().max())
    # standard errors from the weights' effective sample size: sqrt(var / ESS) for a mean, var sqrt(2 / ESS) for a
    # (co)variance
    torch.testing.assert_close(mean[u], exact.means[0][u], atol=4.0 * math.sqrt(var / ess), rtol=0.0)
    torch.testing.assert_close(cov[u][:, u], want_cov, atol=4.0 * var * math.sqrt(2.0 / ess), rtol=0.0)


def test_two_modes_weighted_by_their_spreads() -> None:
    """Two modes equally far from ``y`` on the 4 observed entries, spreads 0.3 and 0.2: the conditional puts about
    0.94 on the wider (the weights come from the spreads alone, felt only at low noise); the pooled weighted
    responsibilities get it."""
    d = 12
    mu = torch.zeros(2, d, dtype=F64)
    mu[0, :4], mu[1, :4] = 0.4, -0.4
    mu[0, 4:], mu[1, 4:] = 1.0, -1.0
    prior = GaussianMixture(mu.tolist(), [0.3, 0.2], [0.5, 0.5])
    mask = torch.zeros(d, dtype=F64)
    mask[:4] = 1.0
    inpaint = Mask(y=torch.zeros(1, d, dtype=F64), mask=mask)
    exact = mixture_posterior(prior, inpaint)
    assert 0.9 < float(exact.weights[0]) < 0.99
    gen = torch.Generator().manual_seed(1)
    out = inpaint_smc(prior.model(SCHED, "epsilon"), torch.randn(16, 64, d, generator=gen, dtype=F64), SCHED,
                      inpaint, nfe=20, generator=gen)  # fmt: skip
    resp = exact.responsibilities(out.samples.reshape(-1, d)).reshape(16, 64, 2)
    weights = (out.weights[..., None] * resp).sum(1).mean(0)
    assert abs(float(weights[0] - exact.weights[0])) < 0.05, (weights, exact.weights)


def test_a_noisy_mask_on_the_2d_mixture() -> None:
    """``x_1 = 1.0`` observed with noise 0.3 on the 2-D mixture: the weighted component weights against the exact
    posterior's (a K = 512 run per prompt; the observed entry is not clamped)."""
    prior = as_full_covariance(mixture_2d())
    inpaint = Mask(y=torch.tensor([[1.0, 0.0]], dtype=F64), noise_std=0.3, mask=torch.tensor([1.0, 0.0], dtype=F64))
    exact = mixture_posterior(prior, inpaint)
    gen = torch.Generator().manual_seed(2)
    out = inpaint_smc(prior.model(SCHED, "epsilon"), torch.randn(8, 512, 2, generator=gen, dtype=F64), SCHED,
                      inpaint, nfe=20, generator=gen)  # fmt: skip
    resp = exact.responsibilities(out.samples.reshape(-1, 2)).reshape(8, 512, -1)
    weights = (out.weights[..., None] * resp).sum(1).mean(0)
    assert float((weights - exact.weights).abs().sum()) < 0.1, (weights, exact.weights)
    assert not bool((out.samples[..., 0] == 1.0).all())


def test_image_shaped_states_float32_and_one_observation_per_prompt() -> None:
    """States ``(B, K, 1, 4, 4)`` with a mask of one channel's shape, float32 noise, and a ``y`` per prompt."""
    prior = GaussianMixture([[0.0] * 16, [1.0] * 16], 0.5, image_shape=(1, 4, 4))
    mask = torch.zeros(1, 4, 4)
    mask[..., :2] = 1.0
    y = torch.stack([torch.full((1, 4, 4), 0.2), torch.full((1, 4, 4), 0.8)])
    gen = torch.Generator().manual_seed(3)
    out = inpaint_smc(prior.model(SCHED, "epsilon"), torch.randn(2, 8, 1, 4, 4, generator=gen), SCHED,
                      Mask(y=y, mask=mask), nfe=6, generator=gen)  # fmt: skip
    assert out.samples.dtype == torch.float32 and out.samples.shape == (2, 8, 1, 4, 4)
    assert bool(torch.isfinite(out.samples).all()) and bool(torch.isfinite(out.log_weights).all())
    for b in range(2):
        assert bool((out.samples[b][..., :2] == y[b, ..., :2]).all())
    assert math.isclose(float(out.weights.sum()), 2.0, rel_tol=1e-6)


@pytest.mark.parametrize("data_std", [1.0, None])
def test_one_step_from_pure_noise(data_std: float | None) -> None:
    """A flow from ``t = 1`` (``alpha = 0``) in one step: finite weights, the observed entries set, one call."""
    schedule = fewstep.Flow()
    prior = GaussianMixture([[0.4, 1.0], [-0.4, -1.0]], [0.3, 0.2])
    inpaint = Mask(y=torch.zeros(1, 2, dtype=F64), mask=torch.tensor([1.0, 0.0], dtype=F64))
    calls = fewstep.CallCount()
    out = inpaint_smc(prior.model(schedule, "epsilon"), torch.randn(2, 4, 2, dtype=F64), schedule, inpaint, nfe=1,
                      data_std=data_std, calls=calls)  # fmt: skip
    assert calls.network == 1 and bool(torch.isfinite(out.log_weights).all())
    assert bool((out.samples[..., 0] == 0.0).all())


def _never_called(x: Tensor, t: Tensor) -> Tensor:
    raise AssertionError("the model was called")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"measurement": Linear(y=torch.zeros(1, 1), A=torch.ones(1, 3))}, TypeError, "measurement: inpaint_smc"),
        ({"measurement": None}, TypeError, "measurement"),
        ({"measurement": Mask(y=torch.zeros(1, 2), mask=torch.ones(2))}, ValueError, "mask: shape"),
        ({"measurement": Mask(y=torch.zeros(3, 3), mask=torch.ones(3))}, ValueError, "y: need shape"),
        ({"data_std": 0.0}, ValueError, "data_std"),
        ({"ess_threshold": 1.5}, ValueError, "ess_threshold"),
        ({"resample": "stratifed"}, ValueError, "resample"),
        ({"resample_schedule": "noisy"}, ValueError, "resample_schedule"),
        ({"proposal": "euler"}, ValueError, "proposal"),
        ({"particles": 5}, ValueError, "particles"),
    ],
)
def test_bad_inputs_fail_before_any_model_call(change: dict, error: type, match: str) -> None:
    options: dict = {"measurement": Mask(y=torch.zeros(1, 3), mask=torch.tensor([1.0, 0.0, 1.0])), "nfe": 5}
    options.update(change)
    measurement = options.pop("measurement")
    with pytest.raises(error, match=match):
        inpaint_smc(_never_called, torch.randn(2, 4, 3), SCHED, measurement, **options)
