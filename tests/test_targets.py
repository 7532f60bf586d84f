"""Exact targets: closed-form denoisers, their use as models of any prediction type, reference PF-ODE solutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import randn
from scipy.integrate import quad

from fewstep.bench.targets import (
    GaussianMixture,
    digits_target,
    mixture_2d,
    reference_solution,
    reference_solution_from_time,
)
from fewstep.bench.targets import mixture as mixture_module
from fewstep.predictions import PREDICTIONS, conversion
from fewstep.schedules import EDM, VP, DiscreteVP, Flow

F64 = torch.float64


@pytest.fixture(scope="module")
def digits() -> GaussianMixture:
    return digits_target()


# --- denoise -------------------------------------------------------------------------------------------


def test_single_gaussian_denoise_closed_form() -> None:
    mu, s = torch.tensor([0.5, -1.0, 2.0], dtype=F64), 0.7
    target = GaussianMixture.single(3, mean=mu, std=s)
    x = randn(10, 3)
    for a, sg in [(1.0, 0.3), (0.2, 0.98), (0.0, 1.0), (1.0, 0.0), (1.0, 80.0)]:
        v = a * a * s * s + sg * sg
        x0, eps = target.denoise(x, a, sg)
        torch.testing.assert_close(x0, mu + a * s * s / v * (x - a * mu), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(eps, sg / v * (x - a * mu), rtol=1e-13, atol=1e-13)


def test_two_component_1d_denoise_matches_quadrature() -> None:
    means, stds, weights = [[-1.0], [1.5]], [0.4, 0.8], [0.3, 0.7]
    target = GaussianMixture(means, stds, weights)

    def prior(x0: float) -> float:
        return sum(
            w * math.exp(-0.5 * ((x0 - m[0]) / s) ** 2) / s for m, s, w in zip(means, stds, weights, strict=True)
        )

    for a, sg, x in [(0.8, 0.6, 0.3), (0.5, 1.2, -1.7), (1.0, 0.2, 1.1), (0.1, 1.0, 2.0)]:

        def lik(x0: float, a: float = a, sg: float = sg, x: float = x) -> float:
            return prior(x0) * math.exp(-0.5 * ((x - a * x0) / sg) ** 2)

        num = quad(lambda z: z * lik(z), -np.inf, np.inf, epsabs=0, epsrel=1e-13, limit=200)[0]
        den = quad(lik, -np.inf, np.inf, epsabs=0, epsrel=1e-13, limit=200)[0]
        x0, eps = target.denoise(torch.tensor([[x]], dtype=F64), a, sg)
        assert float(x0) == pytest.approx(num / den, rel=1e-10, abs=1e-12)
        assert float(eps) == pytest.approx((x - a * num / den) / sg, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", ["default", "ring", "grid", "wide"])
def test_denoise_consistency_and_ends(name: str) -> None:
    target = mixture_2d(name)
    x = 2.0 * randn(32, 2)
    g = torch.Generator().manual_seed(1)
    alpha, sigma = torch.rand(32, generator=g, dtype=F64), 2.0 * torch.rand(32, generator=g, dtype=F64)
    x0, eps = target.denoise(x, alpha, sigma)
    torch.testing.assert_close(alpha[:, None] * x0 + sigma[:, None] * eps, x, rtol=1e-12, atol=1e-12)
    # pure noise: x0_hat is the data mean, eps_hat = x / sigma
    x0, eps = target.denoise(x, 0.0, 1.5)
    torch.testing.assert_close(x0, target.mean().expand_as(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(eps, x / 1.5, rtol=1e-13, atol=1e-13)
    # clean data: eps_hat = 0 and x0_hat = x / alpha
    x0, eps = target.denoise(x, 0.8, 0.0)
    assert torch.all(eps == 0)
    torch.testing.assert_close(x0, x / 0.8, rtol=1e-12, atol=1e-12)


def test_denoise_paths_chunks_and_image_shapes(digits: GaussianMixture, monkeypatch: pytest.MonkeyPatch) -> None:
    x = (digits.means[:4] + 0.3 * randn(4, 64)).reshape(4, 8, 8)
    for a, sg in [(0.0, 1.0), (0.7, 0.7), (1.0, 0.02), (1.0, 0.0)]:
        x0, eps = digits.denoise(x, a, sg)
        assert x0.shape == eps.shape == (4, 8, 8) and x0.dtype == F64
        monkeypatch.setattr(mixture_module, "DIRECT_MAX", 10**9)  # explicit differences x - alpha mu_k
        monkeypatch.setattr(mixture_module, "CHUNK_ELEMENTS", 1)  # one sample per block
        x0d, epsd = digits.denoise(x, a, sg)
        monkeypatch.undo()
        torch.testing.assert_close(x0, x0d, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(eps, epsd, rtol=1e-11, atol=1e-11)


# --- the target as a model -----------------------------------------------------------------------------


def _model_time(schedule, t: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """What fewstep passes to a model with time_input='auto'."""
    if schedule.default_time_input == "sigma":
        return torch.exp(-schedule.lambda_(t))
    if schedule.default_time_input == "index":
        return schedule.index(t)
    return t


@pytest.mark.parametrize("schedule", [VP(), EDM(), Flow(), DiscreteVP.linear()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_model_round_trip(schedule, prediction: str) -> None:  # type: ignore[no-untyped-def]
    target = mixture_2d("default")
    model = target.model(schedule, prediction)
    assert model.time_input == schedule.default_time_input
    x = 3.0 * randn(5, 2)
    for t in np.linspace(schedule.t_min, schedule.t_max, 4):
        tt = torch.tensor(t, dtype=F64)
        a, sg = float(schedule.alpha(tt)), float(schedule.sigma(tt))
        if prediction in ("epsilon", "score") and a == 0:
            continue
        out = model(x, _model_time(schedule, tt).expand(5))
        aff = conversion(prediction, a, sg, float(schedule.dalpha(tt)), float(schedule.dsigma(tt)))
        x0, eps = target.denoise(x, a, sg)
        scale = 1.0 + x.abs().max() / max(a, 1e-3)
        torch.testing.assert_close(aff.x0_x * x + aff.x0_out * out, x0, rtol=1e-9, atol=1e-9 * scale)
        torch.testing.assert_close(aff.eps_x * x + aff.eps_out * out, eps, rtol=1e-9, atol=1e-9 * scale)


def test_model_time_inputs_dtype_and_shapes(digits: GaussianMixture) -> None:
    vp = VP()
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    x = randn(3, 2).float()
    target = mixture_2d("wide")
    by_t = target.model(vp, "v_prediction")(x, t)
    by_sigma = target.model(vp, "v_prediction", time_input="sigma")(x, torch.exp(-vp.lambda_(t)))
    assert by_t.dtype == torch.float32 and by_t.shape == (3, 2)
    torch.testing.assert_close(by_t, by_sigma)
    as64 = target.model(vp, "sample", dtype=F64)(x, 0.5)  # scalar time broadcasts over the batch
    assert as64.dtype == F64
    torch.testing.assert_close(as64, target.denoise(x, vp.alpha(0.5), vp.sigma(0.5))[0])
    img = digits.model(EDM(), "epsilon")(randn(2, 1, 8, 8), torch.tensor([1.0, 2.0], dtype=F64))
    assert img.shape == (2, 1, 8, 8) and torch.isfinite(img).all()


@pytest.mark.parametrize("name", ["default", "digits"])
def test_differentiable_model_gradients(name: str, digits: GaussianMixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``differentiable=True`` autograd follows the exact denoiser into x and the time input (both paths: the
    explicit differences of a few components, the expanded square of the digits' many; several blocks), checked
    against central differences; the values are those of the detached network, which has no gradient."""
    target = mixture_2d("default") if name == "default" else digits
    monkeypatch.setattr(mixture_module, "CHUNK_ELEMENTS", 2 * target.num_components * target.dim)  # 2 rows a block
    for schedule in (VP(), EDM()):
        model = target.model(schedule, "epsilon", differentiable=True)
        x = (0.6 * target.means[[0, 1, 2]] + 0.5 * randn(3, target.dim)).requires_grad_(True)
        time = _model_time(schedule, torch.tensor([0.3, 0.5, 0.8], dtype=F64)).requires_grad_(True)
        assert torch.autograd.gradcheck(model, (x, time), eps=1e-6, atol=1e-5)
        detached = target.model(schedule, "epsilon")(x, time)
        assert not detached.requires_grad
        torch.testing.assert_close(model(x, time).detach(), detached, rtol=0, atol=0)


# --- reference solutions -------------------------------------------------------------------------------


def test_reference_single_gaussian_closed_form() -> None:
    # The PF-ODE flow map of N(mu, s^2 I) is affine and keeps z = (x - alpha mu) / sqrt(alpha^2 s^2 + sigma^2).
    mu, s = torch.tensor([1.0, -0.5], dtype=F64), 0.6
    target = GaussianMixture.single(2, mean=mu, std=s)
    x = randn(16, 2)
    for a, sg in [(0.0, 1.0), (0.6, 0.8), (1.0, 80.0), (1.0, 0.05), (0.3, 0.0)]:
        exact = mu + s * (x - a * mu) / math.sqrt(a * a * s * s + sg * sg)
        torch.testing.assert_close(reference_solution(target, x, a, sg), exact, rtol=1e-9, atol=1e-9)
    # to an intermediate level (alpha1, sigma1): x1 = alpha1 mu + sqrt(alpha1^2 s^2 + sigma1^2) z
    a, sg, a1, s1 = 0.2, 3.0, 0.9, 0.4
    z = (x - a * mu) / math.sqrt(a * a * s * s + sg * sg)
    exact = a1 * mu + math.sqrt(a1 * a1 * s * s + s1 * s1) * z
    got = reference_solution(target, x, a, sg, alpha_end=a1, sigma_end=s1)
    torch.testing.assert_close(got, exact, rtol=1e-9, atol=1e-9)


def test_reference_tolerance_halving_and_per_sample_starts() -> None:
    target = mixture_2d("wide")
    x = randn(64, 2)
    ref = reference_solution(target, x, 0.3, 0.9)
    finer = reference_solution(target, x, 0.3, 0.9, rtol=5e-12, atol=5e-12)
    assert float((ref - finer).abs().max() / finer.abs().max()) < 1e-9
    # per-sample starts in one solve agree with separate solves; the answer is invariant to scaling (alpha, sigma, x)
    alpha = torch.tensor([0.0, 0.3, 1.0, 0.9], dtype=F64)
    sigma = torch.tensor([1.0, 0.9, 5.0, 0.1], dtype=F64)
    together = reference_solution(target, x[:4], alpha, sigma)
    for i in range(4):
        alone = reference_solution(target, 2.5 * x[i : i + 1], 2.5 * float(alpha[i]), 2.5 * float(sigma[i]))
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-9, atol=1e-9)


def test_reference_from_flow_noise_and_shapes(digits: GaussianMixture) -> None:
    target = mixture_2d("default")
    x = randn(8, 2)
    from_time = reference_solution_from_time(target, x, Flow(), 1.0)
    torch.testing.assert_close(from_time, reference_solution(target, x, 0.0, 1.0))
    assert torch.isfinite(from_time).all() and from_time.dtype == F64
    # stopping at t_min and going on from there composes to the same clean sample
    mid = reference_solution_from_time(target, x, Flow(), 1.0, 0.05)
    torch.testing.assert_close(reference_solution_from_time(target, mid, Flow(), 0.05), from_time, rtol=1e-9, atol=1e-9)
    # digits: a pure-noise start lands within a few stds of a training image
    out = reference_solution(digits, randn(2, 8, 8), 0.0, 1.0, rtol=1e-8, atol=1e-8)
    assert out.shape == (2, 8, 8)
    nearest = torch.cdist(out.reshape(2, 64), digits.means).min(dim=1).values
    assert torch.all(nearest < 2 * 0.05 * 8)  # typical distance std * sqrt(64) = 0.4


# --- sampling, moments, presets --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "grid"])
def test_sample_moments_and_reproducibility(name: str) -> None:
    target = mixture_2d(name)
    xs = target.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert xs.shape == (20_000, 2) and xs.dtype == F64
    torch.testing.assert_close(xs.mean(0), target.mean(), rtol=0, atol=0.05)
    torch.testing.assert_close(torch.cov(xs.T), target.covariance(), rtol=0, atol=0.1)
    again = target.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(xs, again)
    assert target.sample(0).shape == (0, 2)


def test_moments_and_presets() -> None:
    target = GaussianMixture([[0.0, 0.0], [2.0, 0.0]], [1.0, 0.5], [1.0, 3.0])
    torch.testing.assert_close(target.weights, torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(target.mean(), torch.tensor([1.5, 0.0], dtype=F64))
    # var_x = E[s^2] + Var(mu_x) = (0.25 + 0.1875) + 0.75;  var_y = E[s^2]
    torch.testing.assert_close(target.covariance(), torch.diag(torch.tensor([1.1875, 0.4375], dtype=F64)))
    assert (mixture_2d().num_components, mixture_2d("grid").num_components, mixture_2d("wide").num_components) == (
        9,
        25,
        3,
    )
    assert "GaussianMixture(num_components=9, dim=2" in repr(mixture_2d())


def test_digits_target(digits: GaussianMixture) -> None:
    assert digits.num_components == 1797 and digits.dim == 64 and digits.image_shape == (8, 8)
    assert digits.means.dtype == F64 and digits.means.min() == -1.0 and digits.means.max() == 1.0
    assert torch.all(digits.stds == 0.05)
    unit = digits_target(std=0.1, scale="[0,1]")
    assert unit.means.min() == 0.0 and unit.means.max() == 1.0


# --- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: GaussianMixture([1.0, 2.0], 1.0), "means"),
        (lambda: GaussianMixture([[0.0], [1.0]], [1.0, -1.0]), "stds"),
        (lambda: GaussianMixture([[0.0], [1.0]], [1.0, 1.0, 1.0]), "stds"),
        (lambda: GaussianMixture([[0.0], [1.0]], 1.0, [1.0]), "weights"),
        (lambda: GaussianMixture([[0.0], [1.0]], 1.0, [1.0, 0.0]), "weights"),
        (lambda: GaussianMixture([[0.0, 1.0]], 1.0, image_shape=(3, 1)), "image_shape"),
        (lambda: GaussianMixture([[float("nan")]], 1.0), "means"),
        (lambda: GaussianMixture.single(0), "dim"),
        (lambda: GaussianMixture.single(2, mean=[1.0, 2.0, 3.0]), "mean"),
        (lambda: mixture_2d("spiral"), "name"),
        (lambda: mixture_2d().sample(-1), "n"),
        (lambda: mixture_2d().denoise(torch.zeros(4, 3), 1.0, 1.0), "x"),
        (lambda: mixture_2d().denoise(torch.zeros(4, 2), 0.0, 0.0), "alpha, sigma"),
        (lambda: mixture_2d().denoise(torch.zeros(4, 2), -1.0, 1.0), "alpha"),
        (lambda: mixture_2d().denoise(torch.zeros(4, 2), 1.0, torch.ones(3)), "sigma"),
        (lambda: mixture_2d().model(VP(), "noise"), "prediction"),
        (lambda: mixture_2d().model(VP(), time_input="step"), "time_input"),
        (lambda: mixture_2d().model(VP(), time_input="index"), "time_input"),
        (lambda: reference_solution(mixture_2d(), torch.zeros(2, 2), 0.0, 0.0), "alpha, sigma"),
        (lambda: reference_solution(mixture_2d(), torch.zeros(2, 2), 1.0, 1.0, rtol=0.0), "rtol"),
        (lambda: reference_solution(mixture_2d(), torch.zeros(2, 2), 1.0, 1.0, sigma_end=2.0), "alpha_end, sigma_end"),
        (lambda: digits_target(std=0.0), "std"),
        (lambda: digits_target(scale="[0,255]"), "scale"),
    ],
)
def test_validation_names_the_argument(make, argument: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=rf"^{argument}"):
        make()
