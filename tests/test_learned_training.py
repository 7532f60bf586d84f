"""The ``learned`` target's default training (``learned_target()``, about 40 s of one CPU core) into a temporary
cache: the trained network is a good denoiser of its mixture, its samples are close to the data, and the second
call loads the weights from the cache without training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.metrics import mode_coverage, sliced_wasserstein2
from fewstep.bench.targets import learned as learned_module
from fewstep.bench.targets import learned_target

F64 = torch.float64


def denoising_loss(model: object, target: object, n: int = 20000) -> tuple[float, float]:
    """``E |eps_hat(alpha_t x0 + sigma_t eps, t) - eps|^2`` (t uniform, fresh exact x0) of the network and of the
    exact denoiser of the mixture (the smallest loss any network can have), on the same draws."""
    schedule, data = target.schedule, target.data  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    x0 = data.sample(n, generator=g)
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(n, generator=g, dtype=F64)
    eps = torch.randn(n, data.dim, generator=g, dtype=F64)
    xt = schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * eps
    exact = data.model(schedule, "epsilon")
    net_loss: Tensor = (model(xt, t) - eps).square().mean()  # type: ignore[operator]
    return float(net_loss), float((exact(xt, t) - eps).square().mean())


def test_default_training_gives_a_good_model_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = learned_target(directory=tmp_path)
    assert not target.from_cache and target.path is not None and target.path.is_file()
    assert target.final_loss < 0.28  # the training loss over its last 10% of iterations

    net, optimum = denoising_loss(target.model, target)
    assert net < 1.03 * optimum, (net, optimum)  # within 3% of the exact denoiser's loss (measured 0.8%)

    schedule, data = target.schedule, target.data
    noise = torch.randn(4096, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = data.sample(4096, generator=torch.Generator().manual_seed(2))
    floor = sliced_wasserstein2(data.sample(4096, generator=torch.Generator().manual_seed(3)), exact)
    x = fewstep.sample(target.model, noise, schedule, "dpmpp_3m", nfe=20)
    x_exact_model = fewstep.sample(data.model(schedule, "epsilon"), noise, schedule, "dpmpp_3m", nfe=20)
    sw2 = sliced_wasserstein2(x, exact)
    assert sw2 < 2.0 * floor, (sw2, floor)  # measured 0.060 against a floor of 0.041
    assert mode_coverage(x, data).coverage == 1.0
    assert float((x - x_exact_model).square().mean().sqrt()) < 0.15  # the same noise through both: 0.066

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second call trained again")

    monkeypatch.setattr(learned_module, "train_denoiser", no_training)
    again = learned_target(directory=tmp_path)
    assert again.from_cache and again.path == target.path
    assert (again.final_loss, again.train_seconds) == (target.final_loss, target.train_seconds)
    for (k, a), (_, b) in zip(again.model.state_dict().items(), target.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    torch.testing.assert_close(fewstep.sample(again.model, noise, schedule, "dpmpp_3m", nfe=20), x, rtol=0, atol=0)
