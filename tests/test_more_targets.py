"""The larger exact targets (unbalanced 2-D, 64-D, 3 x 32 x 32) and the learned target."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import randn

import fewstep
from fewstep.bench.metrics import assign_components
from fewstep.bench.targets import (
    GaussianMixture,
    LearnedTarget,
    TrainConfig,
    learned_reference,
    learned_target,
    mixture_2d,
    mixture_image,
    mixture_nd,
    reference_solution,
)
from fewstep.bench.targets import learned as learned_module
from fewstep.bench.targets import mixture as mixture_module
from fewstep.schedules import VP

F64 = torch.float64


@pytest.fixture(scope="module")
def image() -> GaussianMixture:
    return mixture_image()


# --- presets -------------------------------------------------------------------------------------------


def test_unbalanced_2d() -> None:
    target = mixture_2d("unbalanced")
    assert target.num_components == 8 and target.dim == 2
    assert float(target.weights.max() / target.weights.min()) == pytest.approx(128.0)
    assert float(target.weights.sum()) == pytest.approx(1.0)
    assert torch.all(target.means.norm(dim=1).sub(2.0).abs() < 1e-12)
    with pytest.raises(ValueError, match="unbalanced"):
        mixture_2d("nope")


def _min_gap(target: GaussianMixture) -> float:
    """Smallest distance between two means, in units of the larger of the two components' radii s sqrt(D)."""
    d = torch.cdist(target.means, target.means)
    radius = target.stds * math.sqrt(target.dim)
    gap = d / torch.maximum(radius[:, None], radius[None, :])
    return float(gap.fill_diagonal_(math.inf).min())


def test_mixture_nd(image: GaussianMixture) -> None:
    target = mixture_nd()
    assert (target.dim, target.num_components, target.image_shape) == (64, 200, None)
    assert torch.equal(mixture_nd().means, target.means) and torch.equal(mixture_nd().weights, target.weights)
    assert not torch.equal(mixture_nd(seed=1).means, target.means)
    assert mixture_nd(dim=5, components=3).means.shape == (3, 5)
    assert float(target.covariance().diagonal().mean()) == pytest.approx(1.0, abs=0.1)  # VP-ready scale
    assert _min_gap(target) > 2.5  # modes are distinct
    assert 3.0 < float(target.weights.max() / target.weights.min()) < 100.0  # unequal weights
    with pytest.raises(ValueError, match="dim"):
        mixture_nd(dim=0)


def test_mixture_image(image: GaussianMixture) -> None:
    assert (image.dim, image.num_components, image.image_shape) == (3072, 256, (3, 32, 32))
    assert torch.equal(mixture_image(components=4).means, mixture_image(components=4).means)
    pixels = image.means.reshape(-1, 3, 32, 32)
    assert float(pixels.abs().max()) < 1.0 and float(pixels.std()) > 0.3
    # smooth: neighbouring pixels differ by much less than the pixel spread; channels correlate
    step = (pixels[..., 1:] - pixels[..., :-1]).abs().mean()
    assert float(step) < 0.2 * float(pixels.std())  # 0.09 vs 0.63
    assert float(torch.corrcoef(pixels.transpose(0, 1).reshape(3, -1))[0, 1]) > 0.3
    assert _min_gap(image) > 2.5
    with pytest.raises(ValueError, match="shape"):
        mixture_image(shape=(32, 32))  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["nd", "image"])
def test_exact_samples_are_told_to_their_modes(which: str, image: GaussianMixture) -> None:
    target = mixture_nd() if which == "nd" else image
    gen = torch.Generator().manual_seed(0)
    k = torch.multinomial(target.weights, 500, replacement=True, generator=gen)
    xs = target.means[k] + target.stds[k, None] * torch.randn(500, target.dim, generator=gen, dtype=F64)
    assert torch.equal(assign_components(xs, target), k)


def test_denoise_paths_agree_on_the_new_targets(image: GaussianMixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The many-component path (expanded |x - a mu|^2, one product with mu) matches the direct one."""
    for target in (mixture_nd(), image):
        x = (target.means[:3] + 0.5 * randn(3, target.dim)).reshape(3, -1)
        levels = [(0.0, 1.0), (0.3, 0.95), (0.8, 0.6), (0.999, 0.045), (1.0, 0.0)]
        fast = [target.denoise(x, a, s) for a, s in levels]
        monkeypatch.setattr(mixture_module, "DIRECT_MAX", 10**9)
        monkeypatch.setattr(mixture_module, "CHUNK_ELEMENTS", 200_000)
        for (a, s), (x0, eps) in zip(levels, fast, strict=True):
            x0d, epsd = target.denoise(x, a, s)
            torch.testing.assert_close(x0, x0d, rtol=0, atol=1e-11)
            torch.testing.assert_close(eps, epsd, rtol=0, atol=1e-11)
        monkeypatch.undo()


@pytest.mark.parametrize("which", ["unbalanced", "nd", "image"])
def test_reference_tolerance_halving(which: str, image: GaussianMixture) -> None:
    """The reference solution's own accuracy: halving the tolerance changes it by less than 1e-6."""
    if which == "unbalanced":
        target, n = mixture_2d("unbalanced"), 64
    else:
        target, n = (mixture_nd(), 16) if which == "nd" else (image, 3)
    x = randn(n, target.dim, seed=1)
    ref = reference_solution(target, x, 0.0, 1.0)
    finer = reference_solution(target, x, 0.0, 1.0, rtol=5e-12, atol=5e-12)
    assert float((ref - finer).abs().max()) < 1e-6
    # pure noise lands on a mode: |x - mu_k| / s_k is about chi-distributed with D degrees of freedom
    k = assign_components(finer, target)
    dist = (finer - target.means[k]).norm(dim=1) / (target.stds[k] * math.sqrt(target.dim))
    assert float(dist.max()) < 1.0 + 4.0 / math.sqrt(target.dim)


def test_image_reference_takes_images(image: GaussianMixture) -> None:
    x = randn(2, 3, 32, 32, seed=2)
    out = reference_solution(image, x, 0.0, 1.0, rtol=1e-8, atol=1e-8)
    assert out.shape == (2, 3, 32, 32) and out.dtype == F64
    flat = reference_solution(image, x.reshape(2, -1), 0.0, 1.0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out.reshape(2, -1), flat, rtol=0, atol=1e-12)


# --- learned target ------------------------------------------------------------------------------------

TINY = TrainConfig(width=16, depth=2, time_features=8, iterations=30, batch=64, seed=3)


def _state(target: LearnedTarget) -> dict[str, torch.Tensor]:
    return target.model.state_dict()


def test_learned_training_is_deterministic() -> None:
    a, b = learned_target(TINY, cache=False), learned_target(TINY, cache=False)
    assert not a.from_cache and a.path is None and a.train_seconds > 0
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c = learned_target(TrainConfig(width=16, depth=2, time_features=8, iterations=30, batch=64, seed=4), cache=False)
    assert not torch.equal(_state(c)["net.0.weight"], sa["net.0.weight"])
    # training leaves the global RNG and the thread setting alone
    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    learned_target(TINY, cache=False)
    assert torch.equal(torch.random.get_rng_state(), state) and torch.get_num_threads() == threads


def test_learned_caching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert learned_module.cache_dir() == tmp_path / "fewstep"
    first = learned_target(TINY)
    assert not first.from_cache and first.path is not None and first.path.parent == tmp_path / "fewstep"
    assert first.path.is_file()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(learned_module, "train_denoiser", no_training)
    state = torch.random.get_rng_state()
    second = learned_target(TINY)
    assert second.from_cache and second.path == first.path
    assert torch.equal(torch.random.get_rng_state(), state)
    assert second.train_seconds == first.train_seconds and second.final_loss == first.final_loss
    s1, s2 = _state(first), _state(second)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    # another config is another file; a corrupt file is retrained over
    first.path.write_bytes(b"not a checkpoint")
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    third = learned_target(TINY)
    assert not third.from_cache and all(torch.equal(_state(third)[k], s1[k]) for k in s1)
    assert TrainConfig(seed=1).key() != TrainConfig().key()


def test_learned_model_runs_through_sample_and_its_reference_converges() -> None:
    target = learned_target(TINY, cache=False)
    assert isinstance(target.schedule, VP) and target.prediction == "epsilon" and target.dim == 2
    assert target.model.net[0].weight.dtype == F64
    noise = randn(16, 2)
    x = fewstep.sample(target.model, noise, target.schedule, "dpmpp_2m", nfe=10)
    assert x.shape == (16, 2) and x.dtype == F64 and torch.isfinite(x).all()
    x32 = fewstep.sample(target.model, noise.float(), target.schedule, "dpmpp_2m", nfe=10)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32, x.float(), rtol=1e-4, atol=1e-4)
    ref = learned_reference(target, noise)
    finer = learned_reference(target, noise, steps=2000)
    assert float((ref - finer).abs().max() / finer.abs().max()) < 1e-7  # an untrained net: |x| up to ~200
    assert float((ref - x).abs().max()) > 1e-4  # a 10-step run is far from it
    # a plain callable with its schedule
    same = learned_reference(target.model, noise, target.schedule)
    assert torch.equal(same, ref)
    with pytest.raises(TypeError, match="schedule"):
        learned_reference(target.model, noise)


def test_train_config_validation() -> None:
    for kwargs, name in [({"width": 0}, "width"), ({"time_features": 3}, "time_features"), ({"lr": -1.0}, "lr")]:
        with pytest.raises(ValueError, match=name):
            TrainConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown 2-D mixture"):
        TrainConfig(data="nope")
