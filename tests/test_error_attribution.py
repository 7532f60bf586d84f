"""Errors name their real cause: the start noise, a noise sampler, an option or the model (its output type, its
dtype, its own exception with the step, time and solver attached); the caller's tensors are never written to; and a
misspelled name gets a suggestion. Each of these was reported as a model NaN, a bare AttributeError, a silent cast
or a silent change before the run owned its model-call stack."""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace

import pytest
import torch
from helpers import Counting

import fewstep
from fewstep.bench.targets import mixture_2d

VP = fewstep.VP()
TARGET = mixture_2d()


def noise(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_non_finite_start_noise_is_the_noise_not_the_model() -> None:
    counting = Counting(TARGET.model(VP, "epsilon"))
    for bad in (float("nan"), float("inf")):
        x = noise()
        x[3, 1] = bad
        with pytest.raises(ValueError, match="noise: contains NaN or inf"):
            fewstep.sample(counting, x, VP, "dpmpp_2m", nfe=5)
    assert counting.calls == 0


def test_a_noise_sampler_returning_nan_is_named() -> None:
    def sampler(s: float, t: float) -> torch.Tensor:
        return torch.full((8, 2), float("nan"), dtype=torch.float64)

    with pytest.raises(ValueError, match=r"noise_sampler: returned NaN or inf for the levels"):
        fewstep.sample(TARGET.model(VP, "epsilon"), noise(), VP, "euler_ancestral", nfe=5, noise_sampler=sampler)


def test_a_nan_guidance_scale_is_the_option() -> None:
    counting = Counting(lambda x, t, c: TARGET.model(VP, "epsilon")(x, t))
    with pytest.raises(ValueError, match="guidance_scale: must be finite"):
        fewstep.sample(counting, noise(), VP, "ddim", nfe=4, model_kwargs={"c": 1}, uncond_kwargs={"c": 1},
                       guidance_scale=float("nan"))  # fmt: skip
    assert counting.calls == 0


@pytest.mark.parametrize(
    "wrap",
    [
        lambda out: SimpleNamespace(sample=out),  # diffusers' UNet2DOutput and friends
        lambda out: (out,),  # return_dict=False
        lambda out: [out, None],
        lambda out: {"sample": out, "extra": out * 0},
        lambda out: {"prediction": out},
    ],
    ids=["sample_attr", "tuple", "list", "dict_sample", "dict_single"],
)
def test_model_outputs_with_an_obvious_tensor_are_accepted(wrap) -> None:
    exact = TARGET.model(VP, "epsilon")
    want = fewstep.sample(exact, noise(), VP, "dpmpp_2m", nfe=6)
    got = fewstep.sample(lambda x, t: wrap(exact(x, t)), noise(), VP, "dpmpp_2m", nfe=6)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_model_outputs_without_a_tensor_or_not_float_are_refused() -> None:
    with pytest.raises(TypeError, match="model: returned a str; need a tensor"):
        fewstep.sample(lambda x, t: "oops", noise(), VP, "ddim", nfe=3)
    with pytest.raises(TypeError, match="model: returned a dict"):
        fewstep.sample(lambda x, t: {"a": x, "b": x}, noise(), VP, "ddim", nfe=3)
    for dtype in (torch.int64, torch.bool):
        with pytest.raises(TypeError, match=rf"model: returned {dtype} values \(t = .*\); need a floating-point"):
            fewstep.sample(lambda x, t, d=dtype: torch.ones_like(x, dtype=d), noise(), VP, "ddim", nfe=3)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")
def test_a_model_exception_keeps_its_type_and_gains_the_step_time_and_solver() -> None:
    exact = TARGET.model(VP, "epsilon")

    def model(x, t):
        if counting.calls == 3:
            raise KeyError("missing conditioning")
        return exact(x, t)

    counting = Counting(model)
    with pytest.raises(KeyError, match="missing conditioning") as info:
        fewstep.sample(counting, noise(), VP, "dpmpp_3m", nfe=8)
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1 and "evaluation 3" in notes[0] and "t = " in notes[0] and "'dpmpp_3m'" in notes[0]


def test_a_model_that_changes_its_input_in_place_leaves_the_callers_noise_alone() -> None:
    exact = TARGET.model(VP, "epsilon")

    def model(x, t):
        out = exact(x, t)
        x.mul_(0.5)  # a misbehaving model
        return out

    x = noise()
    before = x.clone()
    fewstep.sample(model, x, VP, "dpmpp_2m", nfe=5)
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    ("option", "value", "suggested"),
    [
        ("solver", "DPMPP_2M", "dpmpp_2m"),
        ("solver", "dpmpp2m", "dpmpp_2m"),
        ("solver", "unipc", "unipc_bh2"),
        ("solver", "euler_a", "euler_ancestral"),
        ("solver", "dpm++_2m", "dpmpp_2m"),
        ("spacing", "karas", "karras"),
        ("spacing", "log-snr", "logsnr"),
        ("prediction", "eps", "epsilon"),
        ("prediction", "flow_prediction", "velocity"),
        ("prediction", "x0", "sample"),
    ],
)
def test_misspelled_names_get_a_suggestion(option: str, value: str, suggested: str) -> None:
    with pytest.raises(
        ValueError, match=rf"{option}: unknown .*{re.escape(repr(value))} \(did you mean {suggested!r}\?\)"
    ):
        fewstep.sample(TARGET.model(VP, "epsilon"), noise(), VP, **{"solver": "ddim", "nfe": 3, option: value})
