"""``linear_smc`` (:mod:`fewstep.posterior.smc.linear`): the exact Gaussian posterior of a random linear measurement,
noisy and noiseless, reproduced; the mixture posterior's component weights on the 2-D target; ``A x = y`` kept
exactly (to rounding) without noise; the documented calls; bad inputs refused before the first model call."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.bench.targets.posterior import FullCovarianceMixture, as_full_covariance, mixture_posterior
from fewstep.posterior import Linear, Mask
from fewstep.posterior.smc import inpaint_smc, linear_smc
from fewstep.posterior.smc.linear import singular_basis

F64 = torch.float64
SCHED = fewstep.VP()


def _weighted_moments(samples: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor, float]:
    """Pooled over prompts: the weighted mean ``(D,)``, covariance ``(D, D)`` and the total ESS."""
    w = log_w.exp().to(F64)
    mean = (w[..., None] * samples).sum(1).mean(0)
    d = samples - mean
    cov = (w[..., None, None] * d[..., :, None] * d[..., None, :]).sum(1).mean(0)
    return mean, cov, float((1.0 / w.square().sum(1)).sum())


def _gaussian_problem(noise_std: float, seed: int = 0) -> tuple[FullCovarianceMixture, Linear]:
    gen = torch.Generator().manual_seed(seed)
    root = torch.randn(5, 5, generator=gen, dtype=F64) * 0.4 + torch.eye(5, dtype=F64) * 0.5
    prior = FullCovarianceMixture(torch.tensor([[0.3, -0.2, 0.5, 0.1, 0.0]], dtype=F64), (root @ root.T)[None], [1.0])
    a = torch.randn(2, 5, generator=gen, dtype=F64)
    return prior, Linear(y=torch.tensor([[0.7, -0.4]], dtype=F64), noise_std=noise_std, A=a)


@pytest.mark.parametrize("noise_std", [0.0, 0.3])
def test_the_posterior_of_a_gaussian_under_a_random_operator(noise_std: float) -> None:
    prior, measurement = _gaussian_problem(noise_std)
    exact = mixture_posterior(prior, measurement)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(4, 2048, 5, generator=gen, dtype=F64)
    calls = fewstep.CallCount()
    out = linear_smc(prior.model(SCHED, "epsilon"), noise, SCHED, measurement, nfe=30, generator=gen, calls=calls)
    assert (calls.network, calls.backward) == (30, 0)
    if noise_std == 0.0:  # every particle on the affine set A x = y
        residual = out.samples @ measurement.A.T - measurement.y
        assert float(residual.abs().max()) < 1e-10
    mean, cov, ess = _weighted_moments(out.samples, out.log_weights)
    want_cov = exact.covariances[0]
    var = float(want_cov.diagonal().max())
    torch.testing.assert_close(mean, exact.means[0], atol=4.0 * math.sqrt(var / ess), rtol=0.0)
    torch.testing.assert_close(cov, want_cov, atol=4.0 * var * math.sqrt(2.0 / ess), rtol=0.0)


def test_the_mixture_posterior_component_weights_in_2d() -> None:
    """The 2-D mixture prior observed through one noisy direction: the particles' weighted mean of the exact
    posterior's responsibilities (whose expectation under the posterior is exactly its component weights) matches
    those weights, to 4 standard errors over 8 prompts plus 0.005 (NFE 40's discretisation)."""
    target = mixture_2d()
    prior = as_full_covariance(target)
    measurement = Linear(y=torch.tensor([[0.8]], dtype=F64), noise_std=0.1, A=torch.tensor([[0.6, 0.8]], dtype=F64))
    exact = mixture_posterior(prior, measurement)
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(8, 1024, 2, generator=gen, dtype=F64)
    out = linear_smc(target.model(SCHED, "epsilon"), noise, SCHED, measurement, nfe=40, generator=gen)
    responsibilities = exact.responsibilities(out.samples.reshape(-1, 2)).reshape(8, 1024, -1)
    per_prompt = (out.weights[..., None] * responsibilities).sum(1)
    got, se = per_prompt.mean(0), per_prompt.std(0) / math.sqrt(8)
    want = torch.as_tensor(exact.weights, dtype=F64)
    assert bool(((got - want).abs() <= 4.0 * se + 0.005).all()), (got, want)
    assert float(want.max()) > 0.5 and int((want > 0.1).sum()) == 3  # a posterior with three modes that matter


def test_a_selection_matrix_is_inpainting() -> None:
    """``A`` that picks coordinates 0 and 2 is the mask {0, 2}: the same posterior as inpaint_smc's (moments within
    their standard errors), the observed coordinates equal to y."""
    prior, _ = _gaussian_problem(0.0, seed=3)
    a = torch.zeros(2, 5, dtype=F64)
    a[0, 0] = a[1, 2] = 1.0
    y = torch.tensor([[0.9, -0.4]], dtype=F64)
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn(4, 1024, 5, generator=gen, dtype=F64)
    model = prior.model(SCHED, "epsilon")
    ours = linear_smc(model, noise, SCHED, Linear(y=y, A=a), nfe=30, generator=gen)
    full = torch.zeros(1, 5, dtype=F64)
    full[0, [0, 2]] = y[0]
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=F64)
    theirs = inpaint_smc(model, noise, SCHED, Mask(y=full, mask=mask), nfe=30, generator=gen)
    torch.testing.assert_close(ours.samples[..., [0, 2]], y.expand(4, 1024, 2), atol=1e-12, rtol=0.0)
    m1, _, e1 = _weighted_moments(ours.samples, ours.log_weights)
    m2, _, e2 = _weighted_moments(theirs.samples, theirs.log_weights)
    var = float(mixture_posterior(prior, Mask(y=full, mask=mask)).covariances[0].diagonal().max())
    torch.testing.assert_close(m1, m2, atol=4.0 * math.sqrt(var / e1 + var / e2), rtol=0.0)


def test_image_shaped_float32_states_and_a_denoiser() -> None:
    prior, _ = _gaussian_problem(0.0)
    network = prior.model(SCHED, "epsilon")

    def image_model(x: Tensor, t: Tensor) -> Tensor:  # a (1, 5) "image" per sample
        return network(x.reshape(x.shape[0], 5).to(F64), t).reshape(x.shape).to(x.dtype)

    a = torch.randn(3, 5, generator=torch.Generator().manual_seed(5), dtype=F64)
    measurement = Linear(y=torch.randn(2, 3, generator=torch.Generator().manual_seed(6), dtype=F64), A=a)
    denoiser = fewstep.Denoiser(image_model, SCHED, "epsilon")
    noise = torch.randn(2, 16, 1, 5, generator=torch.Generator().manual_seed(7))
    out = linear_smc(denoiser, noise, measurement=measurement, nfe=8)
    assert out.samples.shape == noise.shape and out.samples.dtype == torch.float32
    residual = out.samples.reshape(2, 16, 5).to(F64) @ a.T - measurement.y[:, None]
    assert float(residual.abs().max()) < 1e-4  # float32 states


def test_the_rank_ignores_directions_the_operator_does_not_see() -> None:
    a = torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]], dtype=F64)  # rank 1
    assert singular_basis(a)[3] == 1


def _never_called(x: Tensor, t: Tensor) -> Tensor:
    raise AssertionError("the model was called")


@pytest.mark.parametrize(
    ("measurement", "noise_shape", "options", "error", "match"),
    [
        (Mask(y=torch.zeros(1, 3), mask=torch.ones(3)), (2, 4, 3), {}, TypeError, "linear_smc takes a Linear"),
        (Linear(y=torch.zeros(1, 2), A=torch.ones(2, 4)), (2, 4, 3), {}, ValueError, "A: has 4 columns"),
        (Linear(y=torch.zeros(3, 2), A=torch.ones(2, 3)), (2, 4, 3), {}, ValueError, "y: need shape"),
        (Linear(y=torch.zeros(1, 2), A=torch.zeros(2, 3)), (2, 4, 3), {}, ValueError, "A: every singular value"),
        (Linear(y=torch.zeros(1, 2), A=torch.ones(2, 3)), (4, 3), {}, ValueError, "noise: need"),
        (Linear(y=torch.zeros(1, 2), A=torch.ones(2, 3)), (2, 4, 3), {"data_std": -1.0}, ValueError, "data_std"),
        (Linear(y=torch.zeros(1, 2), A=torch.ones(2, 3)), (2, 4, 3), {"particles": 5}, ValueError, "particles"),
    ],
)
def test_bad_inputs_fail_before_any_model_call(
    measurement: object, noise_shape: tuple[int, ...], options: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        linear_smc(_never_called, torch.randn(*noise_shape), SCHED, measurement, nfe=5, **options)  # type: ignore[arg-type]
