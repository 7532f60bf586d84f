"""The digits UNet target: a tiny convolutional UNet trained in-process on the scikit-learn 8 x 8 digits.

The default tests train a tiny config (a fraction of a second); the default config's training (about 2 minutes
of one CPU core) is a slow test that checks the trained network draws digit-like samples.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep.bench import compare as cmp
from fewstep.bench.metrics import DigitsFeatures, frechet_distance
from fewstep.bench.targets import DigitsUNetConfig, DigitsUNetTarget, digits_target, digits_unet_target
from fewstep.bench.targets import digits_unet as unet_module
from fewstep.bench.targets.digits_unet import DigitsUNet, digits_images

F64 = torch.float64

# the tiny network is barely trained: its PF-ODE sends |x| to a few hundred, which the divergence guard reports
pytestmark = pytest.mark.filterwarnings("ignore::fewstep.DivergenceWarning")

TINY = DigitsUNetConfig(channels=8, groups=2, time_features=4, embedding=16, iterations=20, batch=16, seed=1)


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 64, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _same_weights(a: DigitsUNetTarget, b: DigitsUNetTarget) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny() -> DigitsUNetTarget:
    return digits_unet_target(TINY, cache=False)


def test_data_are_the_digits_in_minus_one_to_one() -> None:
    images = digits_images()
    assert images.shape == (1797, 64) and images.dtype == F64
    assert float(images.min()) == -1.0 and float(images.max()) == 1.0  # pixels 0 and 16
    # the same scaling as the exact digits target (its mixture means)
    torch.testing.assert_close(images, digits_target().means, rtol=0, atol=0)


def test_tiny_config_trains_and_gives_finite_outputs_of_the_right_shape(tiny: DigitsUNetTarget) -> None:
    assert not tiny.from_cache and tiny.path is None and tiny.train_seconds > 0 and math.isfinite(tiny.final_loss)
    assert isinstance(tiny.schedule, fewstep.VP) and tiny.prediction == "epsilon" and tiny.dim == 64
    assert tiny.model.conv_in.weight.dtype == F64
    x = _noise(5)
    out = tiny.model(x, 0.3)
    assert out.shape == (5, 64) and out.dtype == F64 and bool(torch.isfinite(out).all())
    # (B, 64), (B, 8, 8) and (B, 1, 8, 8) are the same images; t as a number or one value per sample
    as_images = tiny.model(x.reshape(5, 1, 8, 8), torch.full((5,), 0.3, dtype=F64))
    assert as_images.shape == (5, 1, 8, 8)
    torch.testing.assert_close(as_images.reshape(5, 64), out, rtol=0, atol=0)
    assert tiny.model(x.reshape(5, 8, 8), 0.3).shape == (5, 8, 8)
    assert tiny.model(x.float(), 0.3).dtype == torch.float32
    samples = fewstep.sample(tiny.model, x, tiny.schedule, "dpmpp_2m", nfe=5)
    assert samples.shape == (5, 64) and bool(torch.isfinite(samples).all())


def test_the_network_rejects_other_shapes(tiny: DigitsUNetTarget) -> None:
    with pytest.raises(ValueError, match="x: need 64 values"):
        tiny.model(torch.zeros(2, 63, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="t: need a number or 2 values"):
        tiny.model(torch.zeros(2, 64, dtype=F64), torch.full((3,), 0.5))


def test_the_default_network_is_a_small_unet() -> None:
    with torch.random.fork_rng(devices=[]):
        net = DigitsUNet()
    params = sum(p.numel() for p in net.parameters())
    assert 10_000 < params < 100_000, params  # "a few tens of thousands"
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert norms and len(convs) == 1  # GroupNorm, and one step down to 4 x 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("channels", 0, "channels: must be a positive integer"),
        ("iterations", 1.5, "iterations: must be a positive integer"),
        ("groups", 3, r"groups: must divide channels \(16\)"),
        ("time_features", 5, "time_features: must be a positive even integer"),
        ("lr", -1.0, "lr: must be a positive number"),
        ("seed", -1, "seed: must be a non-negative integer"),
    ],
)
def test_config_errors_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DigitsUNetConfig(**{field: value})  # type: ignore[arg-type]


def test_target_rejects_another_config_type() -> None:
    with pytest.raises(TypeError, match="config: need a DigitsUNetConfig"):
        digits_unet_target(fewstep.bench.targets.TrainConfig(), cache=False)  # type: ignore[arg-type]


def test_training_is_deterministic_and_leaves_global_state_alone(tiny: DigitsUNetTarget) -> None:
    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    again = digits_unet_target(TINY, cache=False)
    assert torch.equal(torch.random.get_rng_state(), state) and torch.get_num_threads() == threads
    assert _same_weights(tiny, again) and again.final_loss == tiny.final_loss
    other = digits_unet_target(
        DigitsUNetConfig(channels=8, groups=2, time_features=4, embedding=16, iterations=20, batch=16, seed=2),
        cache=False,
    )
    assert not torch.equal(other.model.conv_in.weight, tiny.model.conv_in.weight)


def test_cache_round_trip_loads_identical_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = digits_unet_target(TINY)
    assert not first.from_cache and first.path is not None and first.path.parent == tmp_path / "fewstep"
    assert first.path.is_file()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(unet_module, "train_digits_unet", no_training)
    state = torch.random.get_rng_state()
    second = digits_unet_target(TINY)
    assert second.from_cache and second.path == first.path and torch.equal(torch.random.get_rng_state(), state)
    assert (second.train_seconds, second.final_loss) == (first.train_seconds, first.final_loss)
    assert _same_weights(first, second)
    x = _noise(3)
    torch.testing.assert_close(second.model(x, 0.5), first.model(x, 0.5), rtol=0, atol=0)
    # another directory holds no weights; a corrupt file is trained over
    monkeypatch.undo()
    assert not digits_unet_target(TINY, directory=tmp_path / "elsewhere").from_cache
    first.path.write_bytes(b"not a checkpoint")
    third = digits_unet_target(TINY, directory=tmp_path / "fewstep")
    assert not third.from_cache and _same_weights(third, first)
    assert DigitsUNetConfig(seed=1).key() != DigitsUNetConfig().key()
    assert DigitsUNetConfig().key() == DigitsUNetConfig().key()


def test_reference_converges_at_third_order_for_the_tiny_network(tiny: DigitsUNetTarget) -> None:
    noise = _noise(4, seed=3)
    finest = tiny.reference(noise, steps=200)
    err = [float((tiny.reference(noise, steps=s) - finest).abs().max()) for s in (25, 50)]
    # DPM-Solver-3 is third order: halving the step divides the error by about 8 (measured 7.5)
    assert err[0] > 5.0 * err[1] > 0.0, err
    few = fewstep.sample(tiny.model, noise, tiny.schedule, "dpmpp_2m", nfe=5)
    assert float((few - finest).abs().max()) > 10.0 * err[0]  # a 5-step run is far from the reference


def test_compare_runs_on_a_digits_unet_target(tiny: DigitsUNetTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "digits_unet" in cmp.TARGETS
    cheap = dataclasses.replace(tiny, reference_steps=20)  # a short reference keeps the test quick
    monkeypatch.setattr(cmp, "digits_unet_target", lambda: cheap)
    target = cmp.make_target("digits_unet")
    assert target is cheap and cmp.data_distribution(target).image_shape == (8, 8)
    result = cmp.compare(target, fewstep.EDM(), ["ddim", "euler_ancestral"], [4], samples=12, seed=0)
    assert result.noise.shape == result.reference.shape == (12, 64)
    # the reference is the network's own (its schedule, not the EDM passed in), from the same noise
    torch.testing.assert_close(result.reference, tiny.reference(result.noise, steps=20), rtol=0, atol=0)
    ddim = next(r for r in result.rows if r.solver == "ddim")
    x = fewstep.sample(tiny.model, result.noise, tiny.schedule, "ddim", nfe=4)
    assert ddim.rmse == pytest.approx(float((x - result.reference).square().mean().sqrt()), rel=1e-12)
    assert all(math.isfinite(r.fd_digits) and math.isfinite(r.sw2) for r in result.rows)


def test_the_command_line_offers_every_compare_target() -> None:
    from fewstep.bench.cli import compare as compare_command

    option = next(p for p in compare_command.params if p.name == "target")
    assert set(option.type.choices) == set(cmp.TARGETS)  # type: ignore[attr-defined]


def _fd(features: DigitsFeatures, x: torch.Tensor, reference: torch.Tensor) -> float:
    return frechet_distance(features(x), reference)


def _nearest(x: torch.Tensor, images: torch.Tensor) -> float:
    """Mean distance from each sample to its nearest image of the data set."""
    return float(torch.cdist(x.reshape(x.shape[0], -1), images).min(dim=1).values.mean())


@pytest.mark.slow
def test_default_training_gives_digit_like_samples_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = digits_unet_target(directory=tmp_path)
    assert not target.from_cache and target.path is not None and target.path.is_file()
    schedule, sigma_max = target.schedule, float(target.schedule.sigma(target.schedule.t_max))

    # samples of the trained network at NFE 10 are far closer to the digits than those of the untrained network
    # or than Gaussian noise, by FD-digits and by the distance to the nearest training image
    n = 512
    z = _noise(n, seed=5)
    features, images = DigitsFeatures(), digits_images()
    exact = features(target.data.sample(n, generator=torch.Generator().manual_seed(6)))
    trained = fewstep.sample(target.model, z * sigma_max, schedule, "dpmpp_2m", nfe=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = DigitsUNet(schedule=schedule).to(F64).requires_grad_(False)
    baseline = fewstep.sample(untrained, z * sigma_max, schedule, "dpmpp_2m", nfe=10)
    fd_trained, fd_untrained, fd_noise = (_fd(features, x, exact) for x in (trained, baseline, z))
    assert fd_trained < 0.2 * min(fd_untrained, fd_noise), (fd_trained, fd_untrained, fd_noise)
    # and within a small factor of the FD-digits between two exact sample sets (measured 7.4-7.8 against 2.5-4.4)
    floor = _fd(features, target.data.sample(n, generator=torch.Generator().manual_seed(8)), exact)
    assert fd_trained < 5.0 * floor, (fd_trained, floor)
    near_trained, near_untrained = _nearest(trained, images), _nearest(baseline, images)
    assert near_trained < 0.5 * min(near_untrained, _nearest(z, images)), (near_trained, near_untrained)

    # the reference converges: the default steps and twice as many agree closely (measured 5e-6, |x| <= 1.3)
    noise = _noise(16, seed=7) * sigma_max
    ref, finer = target.reference(noise), target.reference(noise, steps=2 * target.reference_steps)
    assert float((ref - finer).abs().max()) < 5e-5, float((ref - finer).abs().max())
    few = fewstep.sample(target.model, noise, schedule, "dpmpp_2m", nfe=50)
    assert float((few - finer).abs().max()) > 100.0 * float((ref - finer).abs().max())  # far below NFE 50's error

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second call trained again")

    monkeypatch.setattr(unet_module, "train_digits_unet", no_training)
    again = digits_unet_target(directory=tmp_path)
    assert again.from_cache and _same_weights(again, target)
