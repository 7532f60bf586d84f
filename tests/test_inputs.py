"""Bad input gives a clear error that names the argument, raised before the model is ever called."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d

TARGET = mixture_2d("wide")
VP = fewstep.VP()


class Counting:
    """Wraps a model, counts calls and records the time each call received."""

    def __init__(self, model):
        self.model, self.calls, self.times = model, 0, []

    def __call__(self, x, time, **kwargs):
        self.calls += 1
        self.times.append(float(time.reshape(-1)[0]))
        return self.model(x, time, **kwargs)


@pytest.fixture
def model() -> Counting:
    return Counting(TARGET.model(VP, "epsilon"))


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def expect(error: type[Exception], match: str, model: Counting, noise: torch.Tensor, *args, **kwargs):
    with pytest.raises(error, match=match) as info:
        fewstep.sample(model, noise, *args, progress=False, **kwargs)
    assert model.calls == 0, "the model was called before the input was checked"
    return info


def test_unknown_prediction(model, noise) -> None:
    info = expect(ValueError, "prediction", model, noise, VP, "euler", nfe=5, prediction="eps")
    assert "'eps'" in str(info.value) and "epsilon" in str(info.value)  # names the bad value and the choices


@pytest.mark.parametrize(
    "times",
    [
        [0.9, 0.5, 0.5, 0.1],  # duplicated
        [0.1, 0.5, 0.9],  # increasing
        [0.9, 0.2, 0.4],  # not monotone
        torch.tensor([0.9, 0.9]),
        np.array([0.8, float("nan"), 0.1]),  # not finite
        [[0.9, 0.1]],  # not 1-D
        [],  # empty
    ],
    ids=["duplicate", "increasing", "not-monotone", "tensor-duplicate", "nan", "2d", "empty"],
)
def test_bad_timestep_sequences(model, noise, times) -> None:
    expect(ValueError, "timesteps", model, noise, VP, "euler", spacing=times)


@pytest.mark.parametrize(
    "times", [[1.5, 0.5, 0.1], [0.9, 0.5, 1e-4], [0.9, 0.5, -0.1]], ids=["above-t_max", "below-t_min", "negative"]
)
def test_times_outside_the_schedule_range(model, noise, times) -> None:
    info = expect(ValueError, "timesteps", model, noise, VP, "euler", spacing=times)
    assert str(VP.t_min) in str(info.value) and str(VP.t_max) in str(info.value)  # says what the range is


def test_edm_times_outside_the_sigma_range(noise) -> None:
    edm = fewstep.EDM()
    model = Counting(TARGET.model(edm, "sample"))
    expect(ValueError, "timesteps", model, noise * 80, edm, "heun", spacing=[100.0, 1.0, 0.01], prediction="sample")


@pytest.mark.parametrize("nfe", [0, -1, -10, 2.0, 1.5, True, "5"])
def test_nfe_not_a_positive_integer(model, noise, nfe) -> None:
    expect(ValueError, "nfe", model, noise, VP, "ddim", nfe=nfe)


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_steps_not_a_positive_integer(model, noise, steps) -> None:
    expect(ValueError, "steps", model, noise, VP, "ddim", steps=steps)


def test_nfe_and_steps_both_or_neither(model, noise) -> None:
    expect(ValueError, "nfe", model, noise, VP, "ddim", nfe=5, steps=5)
    expect(ValueError, "nfe", model, noise, VP, "ddim")


@pytest.mark.parametrize(
    ("solver", "nfe", "final"), [("heun", 6, "zero"), ("heun", 5, "t_min"), ("dpmpp_2s", 4, "zero")]
)
def test_solver_cannot_spend_the_nfe_exactly(model, noise, solver, nfe, final) -> None:
    info = expect(ValueError, "nfe", model, noise, VP, solver, nfe=nfe, final=final)
    assert re.search(r"possible values start \[[0-9, ]+\]", str(info.value))  # suggests budgets that work
    ok = fewstep.sample(model, noise, VP, solver, nfe=nfe + 1, final=final)
    assert model.calls == nfe + 1 and torch.isfinite(ok).all()


def test_nfe_not_matching_the_given_times(model, noise) -> None:
    times = torch.linspace(0.9, 0.1, 5, dtype=torch.float64)
    expect(ValueError, "nfe", model, noise, VP, "heun", nfe=5, spacing=times)  # heun: 4 x 2 + 1 = 9
    expect(ValueError, "steps", model, noise, VP, "euler", steps=3, spacing=times)


def test_t_min_end_needs_two_times(model, noise) -> None:
    expect(ValueError, "spacing", model, noise, VP, "euler", spacing=[0.5], final="t_min")


@pytest.mark.parametrize("solver", ["dpm_solver_4", "DDIM", "", "euler_a"])
def test_unknown_solver(model, noise, solver) -> None:
    info = expect(ValueError, "solver", model, noise, VP, solver, nfe=5)
    assert repr(solver) in str(info.value) and "dpmpp_2m" in str(info.value)  # lists what is available


def test_solver_of_the_wrong_type(model, noise) -> None:
    expect(TypeError, "solver", model, noise, VP, 3, nfe=5)


def test_unknown_solver_option(model, noise) -> None:
    info = expect(TypeError, "lower_order_finale", model, noise, VP, "dpmpp_2m", nfe=5, lower_order_finale=False)
    assert "lower_order_final" in str(info.value).replace("lower_order_finale", "")  # lists the allowed ones
    expect(TypeError, "eta", model, noise, VP, "euler", nfe=5, eta=0.5)


def test_bad_solver_option_value(model, noise) -> None:
    expect(TypeError, "lower_order_final", model, noise, VP, "dpmpp_3m", nfe=5, lower_order_final="no")
    expect(ValueError, "d2_weight", model, noise, VP, "dpmpp_3m", nfe=5, d2_weight="exact")


def test_options_with_a_solver_instance(model, noise) -> None:
    expect(TypeError, "options", model, noise, VP, fewstep.solvers.Euler(), nfe=5, eta=0.1)


@pytest.mark.parametrize("spacing", ["log-snr", "karas", "quadratic", ""])
def test_unknown_spacing(model, noise, spacing) -> None:
    info = expect(ValueError, "spacing", model, noise, VP, "euler", nfe=5, spacing=spacing)
    assert "logsnr" in str(info.value)  # lists the names


def test_discrete_spacing_on_a_continuous_schedule(model, noise) -> None:
    expect(ValueError, "spacing", model, noise, VP, "euler", nfe=5, spacing="trailing")


def test_bad_final(model, noise) -> None:
    expect(ValueError, "final", model, noise, VP, "euler", nfe=5, final="clean")


def test_bad_noise_and_schedule(model) -> None:
    expect(TypeError, "noise", model, np.zeros((2, 2)), VP, "euler", nfe=3)
    expect(TypeError, "noise", model, torch.zeros(2, 2, dtype=torch.int64), VP, "euler", nfe=3)
    expect(ValueError, "noise", model, torch.zeros(()), VP, "euler", nfe=3)
    expect(TypeError, "schedule", model, torch.zeros(2, 2), None, "euler", nfe=3)
    expect(TypeError, "schedule", model, torch.zeros(2, 2), "vp", "euler", nfe=3)


def test_bad_denoiser_arguments(model, noise) -> None:
    expect(ValueError, "time_input", model, noise, VP, "euler", nfe=3, time_input="seconds")
    expect(ValueError, "time_input", model, noise, VP, "euler", nfe=3, time_input="index")  # not a DiscreteVP
    expect(ValueError, "uncond_kwargs", model, noise, VP, "euler", nfe=3, guidance_scale=3.0)
    expect(ValueError, "guidance_rescale", model, noise, VP, "euler", nfe=3, guidance_rescale=1.5)
    with pytest.raises(TypeError, match="model"):
        fewstep.sample(object(), noise, VP, "euler", nfe=3)


def test_model_returning_nan_names_the_evaluation_and_time(noise) -> None:
    exact = TARGET.model(VP, "epsilon")
    bad_call = 4

    def model(x, t):
        out = exact(x, t)
        return out * float("nan") if counting.calls == bad_call else out

    counting = Counting(model)
    with pytest.raises(fewstep.NonFiniteModelOutput) as info:
        fewstep.sample(counting, noise, VP, "dpmpp_2m", nfe=8, check_finite="each")
    assert isinstance(info.value, FloatingPointError)
    assert counting.calls == bad_call  # stopped at once (CPU)
    message = str(info.value)
    assert f"evaluation {bad_call}" in message
    assert f"t = {counting.times[bad_call - 1]:.6g}" in message  # VP models take t itself


def test_model_returning_inf_in_a_singlestep_intermediate_point(noise) -> None:
    exact = TARGET.model(VP, "epsilon")
    counting = Counting(lambda x, t: exact(x, t) if counting.calls != 2 else torch.full_like(x, float("inf")))
    with pytest.raises(fewstep.NonFiniteModelOutput, match="evaluation 2"):
        fewstep.sample(counting, noise, VP, "dpm_solver_3", nfe=9, check_finite="each")


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "dpm_solver_3", "euler_ancestral"])
def test_a_nan_output_fails_the_run_by_default_after_the_run(noise, solver: str) -> None:
    """check_finite="end" (the default) checks the result once: a NaN at one evaluation still fails the run (never a
    NaN sample), after the planned evaluations, and the message says how to locate it."""
    exact = TARGET.model(VP, "epsilon")
    counting = Counting(lambda x, t: exact(x, t) * (float("nan") if counting.calls == 3 else 1.0))
    with pytest.raises(fewstep.NonFiniteModelOutput, match="check_finite='each'"):
        fewstep.sample(counting, noise, VP, solver, nfe=9, generator=torch.Generator().manual_seed(0))
    assert counting.calls == 9


def test_check_finite_is_validated_before_any_model_call(noise) -> None:
    counting = Counting(TARGET.model(VP, "epsilon"))
    with pytest.raises(ValueError, match="check_finite: choose 'each' or 'end'"):
        fewstep.sample(counting, noise, VP, "ddim", nfe=3, check_finite="sometimes")  # type: ignore[arg-type]
    assert counting.calls == 0


def test_an_output_that_is_the_input_is_copied() -> None:
    """A model that returns its input (or a view of it): the network layer copies it, so the outputs the solvers keep
    across calls never share memory with a state (the identity conversion passes outputs through uncopied)."""
    from fewstep.model.network import Network

    x = torch.randn(4, 2, dtype=torch.float64)
    calls = fewstep.CallCount()
    for model in (lambda x_, t: x_, lambda x_, t: x_.view(x_.shape)):
        out = Network(model, {}, None, calls)(x, torch.zeros(4), 0.5)
        assert out.data_ptr() != x.data_ptr() and torch.equal(out, x)
    fresh = Network(lambda x_, t: x_ * 2, {}, None, calls)(x, torch.zeros(4), 0.5)
    assert calls == fewstep.CallCount(network=3, branches=3) and torch.equal(fresh, 2 * x)
