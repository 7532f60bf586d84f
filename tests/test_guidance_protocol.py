"""The guidance rule protocols of :mod:`fewstep.guidance.base` and the batched branches of
:mod:`fewstep.guidance.branches`, used from outside the package the way a new rule would use them."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.guidance import Branches, Guidance, PredictionGuidance
from fewstep.model import Evaluation, Network, Point, Prediction
from fewstep.model.time_shift import TimeShift

F64 = torch.float64
VP = fewstep.VP()
EXACT = mixture_2d().model(VP, "epsilon")


def noise(n: int = 6, seed: int = 0) -> Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


class Shifted:
    """``out = eps_exact(x, t) + 0.1 c``: affine in the per-sample condition ``c`` (B, 1); records batch sizes and
    the non-tensor ``tag`` of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, object]] = []

    def __call__(self, x: Tensor, t: Tensor, c: Tensor, tag: str = "") -> Tensor:
        self.calls.append((x.shape[0], tag))
        return EXACT(x, t) + 0.1 * c


class MeanOfClean:
    """A prediction-level rule written outside the package: ``x0 = (x0_a + x0_b) / 2`` of two conditionings, with
    ``eps`` from ``x0`` at the point (so the pair stays consistent)."""

    def __init__(self, other: dict[str, object]):
        self.other = other

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        branches = Branches(network, [None, self.other], name="other")

        def evaluate(x: Tensor, p: Point) -> Prediction:
            (a, _), (b, _) = branches.predictions(x, p, False)
            x0 = (a + b) / 2
            return x0, ((x - p.alpha * x0) / p.sigma if needs_eps else None)

        return evaluate


def test_protocols_are_runtime_checkable() -> None:
    assert isinstance(MeanOfClean({}), PredictionGuidance) and not isinstance(MeanOfClean({}), Guidance)
    assert isinstance(fewstep.guidance.ClassifierFreeGuidance(2.0, {"c": 0}), Guidance)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun", "unipc_bh2", "euler_ancestral"])
def test_a_prediction_rule_runs_with_every_solver_family(solver: str) -> None:
    """The model is affine in ``c``, so the mean of the two clean predictions is the prediction at the mean
    condition: the guided run equals the plain run at ``(c_a + c_b) / 2``, with one batched call of two branches."""
    x, c_a, c_b = noise(), torch.ones(6, 1, dtype=F64), -3 * torch.ones(6, 1, dtype=F64)
    model, calls = Shifted(), fewstep.CallCount()
    gen = torch.Generator().manual_seed(3)
    out = fewstep.sample(model, x, VP, solver, nfe=9, model_kwargs={"c": c_a}, guidance=MeanOfClean({"c": c_b}),
                         calls=calls, generator=gen)  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    want = fewstep.sample(Shifted(), x, VP, solver, nfe=9, model_kwargs={"c": (c_a + c_b) / 2}, generator=gen)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    assert calls.network == 9 and calls.branches == 18 and {b for b, _ in model.calls} == {12}


def test_branches_that_cannot_batch_are_called_one_by_one() -> None:
    """A non-tensor argument that differs between branches cannot be concatenated: one call per branch."""
    x, c = noise(), torch.ones(6, 1, dtype=F64)
    model, calls = Shifted(), fewstep.CallCount()
    fewstep.sample(model, x, VP, "ddim", nfe=3, model_kwargs={"c": c, "tag": "a"},
                   guidance=MeanOfClean({"tag": "b"}), calls=calls)  # fmt: skip
    assert calls.network == 6 and calls.branches == 6
    assert model.calls == [(6, "a"), (6, "b")] * 3


def test_branch_errors_name_the_option() -> None:
    x, c = noise(), torch.ones(6, 1, dtype=F64)
    with pytest.raises(ValueError, match=r"other: keys \['d'\] are not in model_kwargs"):
        fewstep.sample(Shifted(), x, VP, "ddim", nfe=3, model_kwargs={"c": c}, guidance=MeanOfClean({"d": c}))
    with pytest.raises(ValueError, match=r"other\['c'\]: must be a tensor of shape \(6, 1\)"):
        fewstep.sample(Shifted(), x, VP, "ddim", nfe=3, model_kwargs={"c": c}, guidance=MeanOfClean({"c": c[:3]}))


def test_a_prediction_rule_refuses_the_time_shift_before_any_call() -> None:
    model = Shifted()
    with pytest.raises(ValueError, match=r"guidance: MeanOfClean acts on the predictions .* \(time_shift=None\)"):
        fewstep.sample(model, noise(), VP, "ddim", nfe=3, model_kwargs={"c": torch.ones(6, 1, dtype=F64)},
                       guidance=MeanOfClean({"c": torch.zeros(6, 1, dtype=F64)}), time_shift=TimeShift())  # fmt: skip
    assert model.calls == []


@pytest.mark.parametrize("kind", ["cfg_pp", "superposition"])
def test_tune_refuses_rules_it_cannot_fit_before_any_call(kind: str) -> None:
    """``fewstep.tune`` fits probability-flow ODE samplers: CFG++ (a different update) and superposition (reverse-SDE
    paths only) are refused with the option named."""
    c = torch.ones(6, 1, dtype=F64)
    rule = (
        fewstep.guidance.CFGPlusPlus(0.5, {"c": torch.zeros(6, 1, dtype=F64)})
        if kind == "cfg_pp"
        else fewstep.guidance.Superposition([{"c": c}, {"c": -c}], mode="or")
    )
    model = Shifted()
    with pytest.raises(ValueError, match="guidance: fewstep.tune"):
        fewstep.tune(model, VP, nfe=5, calibration=noise(), holdout=noise(seed=1), model_kwargs={"c": c},
                     guidance=rule, budget=50)  # fmt: skip
    assert model.calls == []


def test_options_a_denoiser_carries_are_refused_beside_it() -> None:
    """A Denoiser carries its guidance, conditioning and prediction: the same options given to ``sample`` beside it
    would be ignored, so they are an error naming them (before any model call)."""
    model = Shifted()
    den = fewstep.Denoiser(model, VP, "epsilon", model_kwargs={"c": torch.ones(6, 1, dtype=F64)})
    with pytest.raises(ValueError, match="guidance: the model is a Denoiser"):
        fewstep.sample(den, noise(), VP, "ddim", nfe=3, guidance=MeanOfClean({"c": torch.zeros(6, 1, dtype=F64)}))
    with pytest.raises(ValueError, match="guidance_scale, uncond_kwargs: the model is a Denoiser"):
        fewstep.sample(den, noise(), VP, "ddim", nfe=3, guidance_scale=3.0, uncond_kwargs={"c": 0})
    assert model.calls == []
