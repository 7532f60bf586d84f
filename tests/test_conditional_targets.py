"""Class-labelled exact targets (fewstep.bench.targets.conditional): the conditional network is exact per sample,
the null label is the full mixture, and the guided target is classifier-free guidance's combination, whose reference
solution is the guided sampler's exact answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import (
    GaussianMixture,
    LabelledMixture,
    labelled_digits,
    labelled_mixture_2d,
    labelled_mixture_nd,
    mixture_2d,
    reference_solution,
    reference_solution_from_time,
)

GEN = torch.Generator().manual_seed(0)
PREDICTIONS = ["epsilon", "sample", "v_prediction", "velocity"]


def _x(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return 1.5 * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_condition_keeps_the_class_components_with_renormalised_weights() -> None:
    lm = labelled_mixture_2d()
    full = mixture_2d()
    for y in range(lm.num_classes):
        keep = [k for k in range(full.num_components) if int(lm.labels[k]) == y]
        sub = lm.condition(y)
        torch.testing.assert_close(sub.means, full.means[keep], rtol=0, atol=0)
        torch.testing.assert_close(sub.stds, full.stds[keep], rtol=0, atol=0)
        torch.testing.assert_close(sub.weights, full.weights[keep] / full.weights[keep].sum())
    assert lm.condition(-1) is lm.mixture
    torch.testing.assert_close(lm.class_weights().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_default_2d_labels_are_the_quadrants_of_the_means() -> None:
    """8 ring components at 0, 45, ..., 315 degrees two per quadrant; the centre (angle 0) in class 0."""
    lm = labelled_mixture_2d()
    assert lm.num_classes == 4
    assert lm.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 0]
    wide = labelled_mixture_2d("wide", sectors=2)  # means at 180, 26.6 and 270 degrees
    assert wide.labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", [fewstep.VP(), fewstep.EDM(), fewstep.DiscreteVP.scaled_linear()], ids=str)
def test_model_at_a_label_is_that_class_mixture_model(prediction: str, schedule: fewstep.NoiseSchedule) -> None:
    lm = labelled_mixture_2d()
    model = lm.model(schedule, prediction)
    x = _x(12, 2)
    t = torch.linspace(0.2, 0.8, 12, dtype=torch.float64) * (schedule.t_max - schedule.t_min) + schedule.t_min
    time = fewstep.Denoiser(model, schedule, prediction).time_of(t)
    for y in [-1, *range(lm.num_classes)]:
        ours = model(x, time, torch.full((12,), y, dtype=torch.long))
        theirs = lm.condition(y).model(schedule, prediction)(x, time)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    full = lm.mixture.model(schedule, prediction)(x, time)
    torch.testing.assert_close(model(x, time, -1), full, rtol=0, atol=0)  # an int label stands for every sample


def test_a_batch_mixing_labels_is_exact_per_sample() -> None:
    lm = labelled_mixture_2d()
    schedule = fewstep.VP()
    model = lm.model(schedule, "epsilon", dtype=torch.float32)
    x = _x(10, 2)
    y = torch.tensor([3, -1, 0, 0, 2, 1, -1, 3, 2, 1])
    t = torch.linspace(0.1, 0.9, 10, dtype=torch.float64)
    out = model(x, t, y)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for i in range(10):
        one = lm.condition(int(y[i])).model(schedule, "epsilon", dtype=torch.float32)(x[i : i + 1], t[i : i + 1])
        torch.testing.assert_close(out[i : i + 1], one, rtol=0, atol=0)
    scalar_time = model(x, 0.5, y)  # one time for the batch
    torch.testing.assert_close(scalar_time[1], model(x[1:2], 0.5, -1)[0], rtol=0, atol=0)


def test_single_gaussian_class_denoiser_is_the_closed_form() -> None:
    """The wide mixture in 3 sectors has one component per class: E[x0 | x, y] = mu + alpha s^2 / v (x - alpha mu)
    with v = alpha^2 s^2 + sigma^2, by hand."""
    lm = labelled_mixture_2d("wide", sectors=3)
    assert lm.num_classes == 3
    x, alpha, sigma = _x(6, 2), 0.8, 0.6
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    x0, eps = lm.denoise(x, alpha, sigma, y)
    for i in range(6):
        k = int((lm.labels == y[i]).nonzero()[0, 0])
        mu, s = lm.mixture.means[k], float(lm.mixture.stds[k])
        v = alpha**2 * s**2 + sigma**2
        torch.testing.assert_close(x0[i], mu + alpha * s**2 / v * (x[i] - alpha * mu))
        torch.testing.assert_close(eps[i], sigma / v * (x[i] - alpha * mu))


def test_guided_target_is_cfg_of_the_network_outputs() -> None:
    """GuidedMixture.denoise = (x0_u + w (x0_c - x0_u), eps_u + w (eps_c - eps_u)), which is what CFG of the network's
    own epsilon output gives (and its data estimate x0 = (x - sigma eps) / alpha)."""
    lm = labelled_mixture_nd(dim=8, components=12, classes=3)
    schedule = fewstep.VP()
    model = lm.model(schedule, "epsilon")
    x, y, w, t = _x(9, 8), torch.arange(9) % 3, 7.5, torch.tensor(0.4, dtype=torch.float64)
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    eps_u, eps_c = model(x, t, -1), model(x, t, y)
    guided_eps = eps_u + w * (eps_c - eps_u)
    x0, eps = lm.guided(y, w).denoise(x, alpha, sigma)
    torch.testing.assert_close(eps, guided_eps)
    torch.testing.assert_close(x0, (x - sigma * guided_eps) / alpha)
    # scale 1: the conditional model; scale 0: the unconditional one
    torch.testing.assert_close(lm.guided(y, 1.0).denoise(x, alpha, sigma)[1], eps_c)
    torch.testing.assert_close(lm.guided(y, 0.0).denoise(x, alpha, sigma)[1], eps_u)


def test_guided_reference_at_scale_one_is_the_conditional_reference() -> None:
    """At w = 1 the guided PF-ODE is the class mixture's own: its reference equals that of condition(y), solved
    separately (a different denoiser path)."""
    lm = labelled_mixture_2d()
    x = 3.0 * _x(8, 2, seed=1)
    y = torch.tensor([2] * 8)
    ours = reference_solution(lm.guided(y, 1.0), x, 0.3, 0.95)
    theirs = reference_solution(lm.condition(2), x, 0.3, 0.95)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-8)


def test_guided_reference_is_converged_and_is_the_limit_of_fewstep_cfg() -> None:
    """The check used for every guided reference: a looser tolerance moves it by far less than any solver error, and
    fewstep's CFG sampler converges to it at its order (DPM-Solver++(3M), third order, to t_min)."""
    lm = labelled_mixture_2d("wide", sectors=2)
    schedule = fewstep.VP()
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.arange(16) % 2
    guided = lm.guided(y, 7.5)
    ref = reference_solution_from_time(guided, noise, schedule, schedule.t_max, schedule.t_min)
    loose = reference_solution_from_time(guided, noise, schedule, schedule.t_max, schedule.t_min, rtol=1e-8, atol=1e-8)
    assert float((ref - loose).abs().max()) < 1e-6
    errors = []
    for steps in (50, 100, 200):
        x = fewstep.sample(
            lm.model(schedule), noise, schedule, "dpmpp_3m", steps=steps, final="t_min", lower_order_final=False,
            model_kwargs={"y": y}, uncond_kwargs={"y": torch.full_like(y, -1)}, guidance_scale=7.5,
        )  # fmt: skip
        errors.append(float((x - ref).abs().max()))
    assert errors[-1] < 1e-4
    assert errors[0] / errors[1] > 6 and errors[1] / errors[2] > 6, errors  # ~8 for third order


def test_presets() -> None:
    nd = labelled_mixture_nd(dim=64)
    assert (nd.dim, nd.num_classes, nd.mixture.num_components) == (64, 10, 200)
    assert nd.labels.tolist() == [k % 10 for k in range(200)]
    assert nd.image_shape is None


def test_digits_labels_are_the_digits() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    lm = labelled_digits()
    assert (lm.num_classes, lm.dim, lm.image_shape) == (10, 64, (8, 8))
    assert lm.labels.tolist() == digits.target.tolist()
    three = lm.condition(3)
    torch.testing.assert_close(three.means, torch.as_tensor(digits.data[digits.target == 3] / 8.0 - 1.0))
    assert math.isclose(float(lm.class_weights()[3]), float(np.mean(digits.target == 3)))


def test_sample_draws_each_label_from_its_class() -> None:
    lm = labelled_mixture_2d("grid", sectors=4)  # a 0.1-std grid: each sample is near its component's mean
    y = torch.tensor([0, 1, 2, 3] * 8)
    x = lm.sample(y, torch.Generator().manual_seed(0))
    nearest = torch.cdist(x, lm.mixture.means).argmin(1)
    assert torch.equal(lm.labels[nearest], y)


def test_invalid_inputs_name_the_argument() -> None:
    lm = labelled_mixture_2d()
    model = lm.model(fewstep.VP())
    x = _x(4, 2)
    with pytest.raises(ValueError, match=r"y: labels must lie in -1 \.\. 3"):
        model(x, 0.5, torch.tensor([0, 1, 4, 0]))
    with pytest.raises(ValueError, match="y: need one label per sample"):
        model(x, 0.5, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="y: need integer labels"):
        model(x, 0.5, torch.zeros(4))
    with pytest.raises(ValueError, match="y: choose a class in 0 .. 3"):
        lm.condition(4)
    with pytest.raises(ValueError, match="labels: need one per component"):
        LabelledMixture(mixture_2d(), [0, 1])
    with pytest.raises(ValueError, match=r"labels: classes 0 \.\. 2 must each label a component; missing \[1\]"):
        LabelledMixture(GaussianMixture([[0.0], [1.0]], 0.5), [0, 2])
    with pytest.raises(ValueError, match="sectors"):
        labelled_mixture_2d("wide", sectors=8)
    with pytest.raises(ValueError, match="scale"):
        lm.guided(torch.tensor([0]), math.inf)
