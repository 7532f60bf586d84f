"""CODE-style editing (fewstep.inversion.code_edit) against SDEdit on the exact 8-mode ring."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.inversion import code_edit, invert, sdedit
from fewstep.inversion.code_edit import edit_times

VP = fewstep.VP()
TARGET = mixture_2d("ring")  # radius 2, std 0.15
MODEL = TARGET.model(VP, "epsilon")


def corrupted(n: int = 128) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    clean = TARGET.sample(n, gen).to(torch.float64)
    return clean + 0.5 * torch.randn(clean.shape, generator=gen, dtype=torch.float64)


def distance(edit: torch.Tensor, x: torch.Tensor) -> float:
    return float((edit - x).norm(dim=1).mean())


def recovery(edit: torch.Tensor, x: torch.Tensor) -> float:
    """Nearest mean equals the input's nearest mean, within 3 component stds of it."""
    means = TARGET.means.to(torch.float64)
    d = torch.cdist(edit, means)
    ok = (d.argmin(dim=1) == torch.cdist(x, means).argmin(dim=1)) & (d.min(dim=1).values <= 0.45)
    return float(ok.double().mean())


def test_distance_to_the_input_grows_with_the_confidence() -> None:
    x = corrupted()
    distances = [distance(code_edit(MODEL, x, VP, 0.2, 10, confidence=c), x) for c in (0.0, 0.25, 0.5, 1.0)]
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), distances


def test_zero_confidence_is_the_ode_round_trip() -> None:
    x = corrupted(16)
    times = edit_times(VP, 0.3, 10)
    round_trip = fewstep.sample(
        MODEL, invert(MODEL, x, VP, "dpmpp_2m", spacing=times.flip(0)), VP, "dpmpp_2m", spacing=times, final="t_min"
    )
    torch.testing.assert_close(code_edit(MODEL, x, VP, 0.3, 10, confidence=0.0), round_trip, rtol=0, atol=0)


def test_code_recovers_more_modes_than_sdedit_at_about_the_same_distance() -> None:
    # SDEdit at t = 0.15 moves the inputs about as far as unclipped CODE at t = 0.2 (benchmarks/code_edit.py)
    x = corrupted(256)
    code = code_edit(MODEL, x, VP, 0.2, 20, confidence=math.inf)
    sde = sdedit(MODEL, x, VP, 0.15, 20, generator=torch.Generator().manual_seed(1))
    assert recovery(code, x) > recovery(sde, x) + 0.04, (recovery(code, x), recovery(sde, x))
    assert distance(code, x) < distance(sde, x)
    assert recovery(x, x) < 0.5  # the corruption moved most inputs out of their mode


def test_sdedit_at_a_tiny_time_returns_nearly_the_input_and_calls_are_counted() -> None:
    x = corrupted(16)
    calls = fewstep.CallCount()
    edit = sdedit(MODEL, x, VP, 0.01, 5, "ddim", calls=calls)
    assert distance(edit, x) < 2.5 * float(VP.sigma(torch.tensor(0.01)))
    assert calls.network == 5
    calls = fewstep.CallCount()
    code_edit(MODEL, x, VP, 0.2, 5, "ddim", langevin_steps=7, calls=calls)
    assert calls.network == 2 * 5 + 7


class Refusing:
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model must not be called")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"t": 2.0}, ValueError, "t: must lie in"),
        ({"t": "half"}, TypeError, "t: must be a number"),
        ({"nfe": 0}, ValueError, "nfe: must be a positive integer"),
        ({"confidence": -1.0}, ValueError, "confidence=1.0"),
        ({"step_size": 0.0}, ValueError, "step_size"),
        ({"langevin_steps": -2}, ValueError, "langevin_steps"),
    ],
)
def test_errors_before_any_model_call(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        code_edit(Refusing(), torch.zeros(2, 2), VP, **kwargs)  # type: ignore[arg-type]
