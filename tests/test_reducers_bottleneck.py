"""Bottleneck sampling (fewstep.reducers.Bottleneck) and the multi-resolution exact target it is measured on."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

import fewstep
from fewstep.bench.targets import GaussianMixture
from fewstep.bench.targets.multires import MultiResolutionMixture, digits_multires
from fewstep.reducers import Bottleneck, Stage
from fewstep.reducers.resolution import pooled_noise, resize
from fewstep.reducers.teleport import restrict

F64 = torch.float64
VP = fewstep.VP()


def tiny(seed: int = 0, k: int = 3) -> MultiResolutionMixture:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, 16, generator=g, dtype=F64)
    return MultiResolutionMixture(GaussianMixture(means, 0.3, image_shape=(1, 4, 4)))


class BySize:
    """A model that counts its calls per image size."""

    def __init__(self, model):
        self.model, self.sizes = model, Counter()

    def __call__(self, x, time):
        self.sizes[tuple(x.shape[-2:])] += 1
        return self.model(x, time)


def test_pooled_mixture_is_the_law_of_the_block_means() -> None:
    target = tiny()
    low = target.at(2)
    means = target.mixture.means.reshape(-1, 4, 4)
    by_hand = torch.stack(
        [torch.stack([means[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean((1, 2)) for j in range(2)], 1)
         for i in range(2)], 1
    ).reshape(-1, 4)  # fmt: skip
    torch.testing.assert_close(low.means, by_hand)
    torch.testing.assert_close(low.stds, torch.full((3,), 0.15, dtype=F64))
    # Monte Carlo: the block means of full-resolution samples have the pooled mixture's first two moments
    x = target.mixture.sample(40000, torch.Generator().manual_seed(1)).reshape(-1, 1, 4, 4)
    pooled = torch.nn.functional.avg_pool2d(x, 2).reshape(-1, 4)
    torch.testing.assert_close(pooled.mean(0), low.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(pooled.T), low.covariance(), atol=0.03, rtol=0)


def test_model_dispatches_on_the_image_size() -> None:
    target = tiny()
    model = target.model(VP, "epsilon")
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    t = torch.tensor(0.4, dtype=F64)
    torch.testing.assert_close(model(x, t), target.at(2).model(VP, "epsilon")(x, t))
    with pytest.raises(ValueError, match="factor"):
        target.at(3)
    with pytest.raises(ValueError, match="x: need images"):
        model(torch.zeros(2, 1, 3, 3, dtype=F64), t)
    assert digits_multires(16).at(2).dim == 64


def test_pooled_noise_is_standard_normal_and_resize_means_blocks() -> None:
    z = torch.randn(20000, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    low = pooled_noise(z, 2).reshape(-1, 4)
    torch.testing.assert_close(torch.cov(low.T), torch.eye(4, dtype=F64), atol=0.04, rtol=0)
    x = torch.arange(16, dtype=F64).reshape(1, 1, 4, 4)
    torch.testing.assert_close(resize(x, (2, 2)), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]], dtype=F64))
    up = resize(resize(x, (2, 2)), (4, 4), "nearest")
    assert float(up[0, 0, 0, 1]) == 2.5 and float(up[0, 0, 3, 3]) == 12.5


def _noise(b: int = 6, seed: int = 4) -> torch.Tensor:
    return torch.randn(b, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_one_full_resolution_stage_is_a_plain_run() -> None:
    model = tiny().model(VP, "epsilon")
    noise = _noise()
    out = Bottleneck([Stage(1, 7)]).sample(model, noise, VP, "dpmpp_2m")
    torch.testing.assert_close(out, fewstep.sample(model, noise, VP, "dpmpp_2m", nfe=7), rtol=0, atol=0)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc_bh2"])
def test_two_stages_match_the_recipe_by_hand(solver: str) -> None:
    """Low resolution from k P_k z, its clean estimate resized and re-noised with the start noise at t_start."""
    target = tiny()
    model = target.model(VP, "epsilon")
    noise = _noise()
    bottleneck = Bottleneck([Stage(2, 5, t_end=0.3), Stage(1, 4, t_start=0.5)], noise="start", upsample="nearest")
    out = bottleneck.sample(model, noise, VP, solver)
    low = fewstep.Denoiser(model, restrict(VP, 0.3, VP.t_max), "epsilon")
    z_low = torch.nn.functional.avg_pool2d(noise, 2) * 2
    x0_low = fewstep.sample(low, z_low, solver=solver, nfe=5)
    up = x0_low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    t = torch.tensor(0.5, dtype=F64)
    start = float(VP.alpha(t)) * up + float(VP.sigma(t)) * noise
    high = fewstep.Denoiser(model, restrict(VP, VP.t_min, 0.5), "epsilon")
    torch.testing.assert_close(out, fewstep.sample(high, start, solver=solver, nfe=4), rtol=1e-12, atol=1e-12)


def test_counts_by_resolution_and_plan() -> None:
    model = BySize(tiny().model(VP, "epsilon"))
    stages = [Stage(1, 2, t_end=0.8), Stage(2, 6, t_end=0.3, t_start=0.85), Stage(1, 3, t_start=0.45)]
    bottleneck = Bottleneck(stages)
    calls = fewstep.CallCount()
    out = bottleneck.sample(model, _noise(), VP, "dpmpp_2m", generator=torch.Generator().manual_seed(0), calls=calls)
    assert out.shape == (6, 1, 4, 4) and bool(torch.isfinite(out).all())
    assert model.sizes == {(4, 4): 5, (2, 2): 6}
    assert bottleneck.network_calls() == bottleneck.counts.by_factor() == {1: 5, 2: 6}
    assert bottleneck.full_equivalent() == bottleneck.counts.full_equivalent == 2 + 6 / 4 + 3
    assert calls.network == calls.requests == bottleneck.counts.network == 11
    assert [(s.t_start, s.t_end) for s in bottleneck.counts.stages] == [(VP.t_max, 0.8), (0.85, 0.3), (0.45, VP.t_min)]


def test_fresh_noise_follows_the_generator_and_start_noise_is_deterministic() -> None:
    model = tiny().model(VP, "epsilon")
    stages = [Stage(2, 4, t_end=0.3), Stage(1, 3, t_start=0.5)]
    noise = _noise()

    def run(mode: str, seed: int) -> torch.Tensor:
        return Bottleneck(stages, noise=mode).sample(
            model, noise, VP, "dpmpp_2m", generator=torch.Generator().manual_seed(seed)
        )

    torch.testing.assert_close(run("fresh", 1), run("fresh", 1), rtol=0, atol=0)
    assert not torch.allclose(run("fresh", 1), run("fresh", 2))
    torch.testing.assert_close(run("start", 1), run("start", 2), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Bottleneck([Stage(2, 4)]), "full resolution"),
        (lambda: Bottleneck([Stage(1, 4, t_end=0.5)]), "leave its t_end None"),
        (lambda: Bottleneck([Stage(2, 4), Stage(1, 4)]), "needs t_end"),
        (lambda: Bottleneck([Stage(1, 4, t_start=0.9)]), "leave its t_start None"),
        (lambda: Bottleneck([Stage(1, 4)], noise="new"), "noise: choose 'fresh' or 'start'"),
        (lambda: Bottleneck([Stage(1, 4)], upsample="area"), "upsample: choose"),
        (lambda: Bottleneck([]), "stages: need a non-empty list"),
        (lambda: Stage(0, 4), "factor: must be an integer >= 1"),
        (lambda: Stage(1, 0), "nfe: must be an integer >= 1"),
        (lambda: Stage(1, 2, t_end=math.nan), "t_end: must be a finite"),
    ],
)
def test_invalid_plans_are_refused(build, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        build()


@pytest.mark.parametrize(
    ("stages", "noise", "options", "match"),
    [
        ([Stage(3, 2, t_end=0.5), Stage(1, 2)], _noise(), {}, "factor 3 must divide"),
        ([Stage(2, 2, t_end=0.5), Stage(1, 2, t_start=0.4)], _noise(), {}, "stage 1 must start at or above"),
        ([Stage(2, 2, t_end=0.5), Stage(1, 2, t_start=1.5)], _noise(), {}, "stage 1 must span"),
        ([Stage(2, 2, t_end=2.0), Stage(1, 2)], _noise(), {}, "stage 0 must span"),
        ([Stage(1, 2)], _noise().reshape(6, 16), {}, r"noise: need images \(B, C, H, W\)"),
        ([Stage(1, 2)], _noise(), {"nfe": 4}, "nfe: a bottleneck run spends each Stage's nfe"),
        ([Stage(1, 2)], _noise(), {"spacing": "linspace"}, "spacing: each bottleneck stage"),
        ([Stage(2, 2, t_end=0.5), Stage(1, 2)], _noise(), {"final": "end"}, "final: choose 'zero' or 't_min'"),
    ],
)
def test_invalid_runs_fail_before_any_model_call(stages, noise, options, match: str) -> None:
    model = BySize(tiny().model(VP, "epsilon"))
    with pytest.raises((ValueError, TypeError), match=match):
        Bottleneck(stages).sample(model, noise, VP, "dpmpp_2m", **options)
    assert not model.sizes


def test_a_start_below_the_previous_end_by_rounding_is_the_same_time() -> None:
    """A stage's ``t_start`` computed by other arithmetic than the previous stage's ``t_end`` may land one rounding
    step below it; that is the same time, not a request to re-noise backwards."""
    end = 0.248046875 / 2 + VP.t_min / 2
    start = math.nextafter(end, 0.0)  # e.g. end + c - c for some c
    stages = [Stage(1, 2, t_end=0.5), Stage(2, 1, t_start=0.6, t_end=end), Stage(1, 1, t_start=start)]
    spans = Bottleneck(stages).spans(VP)
    assert spans[2][0] == end
    with pytest.raises(ValueError, match="stage 2 must start at or above"):
        Bottleneck([*stages[:2], Stage(1, 1, t_start=end * (1 - 1e-6))]).spans(VP)
