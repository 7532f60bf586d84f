"""Guidance rules on the model call: CFG with a scale schedule and a noise interval, APG, perturbed branches (PAG)
and weighted composition, each checked against its formula computed here from the exact per-label denoisers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import GaussianMixture
from fewstep.guidance import (
    AdaptiveProjectedGuidance,
    ClassifierFreeGuidance,
    Composition,
    PerturbedGuidance,
    ScaleSchedule,
    ScheduledCFG,
    Term,
)
from fewstep.model import CallCount, Network, Point
from fewstep.model.time_shift import TimeShift

F64 = torch.float64
VP = fewstep.VP()
B = 6
MEANS = [[2.0, 0.0], [-2.0, 0.5], [0.0, -2.0]]
STD = 0.5
#: The data: a mixture whose component k is the class of label k; label -1 is the unconditional model.
MIXTURE = GaussianMixture(MEANS, STD)
PARTS = [GaussianMixture([m], [STD]) for m in MEANS]


def exact_eps(label: int, x: Tensor, alpha: float, sigma: float) -> Tensor:
    """The exact noise prediction of class ``label`` (-1: of the whole mixture) at level (alpha, sigma)."""
    return (MIXTURE if label < 0 else PARTS[label]).denoise(x, alpha, sigma)[1]


class Labelled:
    """``model(x, t, y, pert)``: the exact noise prediction of each sample's label ``y`` (B,) (-1 = unconditional),
    plus ``0.2 pert tanh(x)`` (a per-sample perturbation, ``pert`` (B, 1)); records each call's batch size."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.times: list[float] = []
        self.models = [part.model(VP, "epsilon") for part in [MIXTURE, *PARTS]]

    def __call__(self, x: Tensor, t: Tensor, y: Tensor, pert: Tensor | None = None) -> Tensor:
        self.batches.append(x.shape[0])
        self.times.append(float(t[0]))
        out = torch.empty_like(x)
        for label in y.unique().tolist():
            rows = y == label
            out[rows] = self.models[label + 1](x[rows], t[rows])
        return out if pert is None else out + 0.2 * pert * torch.tanh(x)


def labels(*ys: int) -> Tensor:
    return torch.tensor([ys[i % len(ys)] for i in range(B)])


Y_C, Y_U = labels(0, 1, 2), labels(-1)
PERT0, PERT1 = torch.zeros(B, 1, dtype=F64), torch.ones(B, 1, dtype=F64)
KWARGS = {"y": Y_C, "pert": PERT0}
UNCOND = {"y": Y_U, "pert": PERT0}


def noise(seed: int = 0) -> Tensor:
    return 2.0 * torch.randn(B, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def run(rule: object | None, solver: str = "dpmpp_2m", nfe: int = 8, model: Labelled | None = None, **kw: Any):
    """A sampling run of the labelled model under ``rule``: (result, calls, model)."""
    model = model or Labelled()
    calls = CallCount()
    gen = torch.Generator().manual_seed(7)
    out = fewstep.sample(
        model, noise(), VP, solver, nfe=nfe, model_kwargs=KWARGS, guidance=rule, calls=calls, generator=gen, **kw
    )
    return out, calls, model


def point(t: float) -> Point:
    return fewstep.Denoiser(Labelled(), VP).point(t, B, torch.device("cpu"), F64)


def k_sigma(t: float) -> float:
    tt = torch.tensor(t, dtype=F64)
    return float(VP.sigma(tt) / VP.alpha(tt))


# --- CFG with an interval and a scale schedule -------------------------------------------------------------------


def test_outside_the_interval_only_the_conditional_branch_runs_bit_for_bit() -> None:
    """An interval no evaluation falls in: the run is the unguided conditional run, exactly, one branch per call."""
    plain, plain_calls, _ = run(None)
    out, calls, model = run(ScheduledCFG(5.0, UNCOND, interval=(1e3, 1e4)))
    assert torch.equal(out, plain)
    assert calls.network == calls.branches == plain_calls.network == 8 and set(model.batches) == {B}


def test_inside_the_interval_it_is_plain_cfg_bit_for_bit() -> None:
    want, want_calls, _ = run(ClassifierFreeGuidance(5.0, UNCOND, rescale=0.3))
    out, calls, model = run(ScheduledCFG(5.0, UNCOND, rescale=0.3, interval=(0.0, math.inf)))
    assert torch.equal(out, want)
    assert calls.network == want_calls.network == 8 and calls.branches == 16 and set(model.batches) == {2 * B}


@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun", "euler_ancestral"])
def test_guided_exactly_where_sigma_is_in_the_interval(solver: str) -> None:
    """Each call is batched (two branches) exactly where the evaluation's sigma lies in [lo, hi]."""
    lo, hi = 0.3, 3.0
    out, calls, model = run(ScheduledCFG(4.0, UNCOND, interval=(lo, hi)), solver, nfe=9)
    inside = [lo <= k_sigma(t) <= hi for t in model.times]
    assert 0 < sum(inside) < len(inside), "the test needs evaluations on both sides"
    assert model.batches == [2 * B if i else B for i in inside]
    assert calls.branches == calls.network + sum(inside) and torch.isfinite(out).all()


def test_a_schedule_that_gives_one_runs_the_conditional_branch_alone() -> None:
    plain, _, _ = run(None)
    out, calls, _ = run(ScheduledCFG(lambda sigma: 1.0, UNCOND))
    assert torch.equal(out, plain) and calls.branches == calls.network


def test_a_scheduled_scale_is_cfg_at_the_scale_of_each_evaluation() -> None:
    """One evaluation at a point: the output is ``eps_u + w(sigma) (eps_c - eps_u)`` with the exact denoisers."""
    t, x = 0.4, noise(1)
    p = point(t)
    schedule = ScaleSchedule("linear", start=1.0, end=7.0, sigma_lo=0.1, sigma_hi=10.0)
    net = Network(Labelled(), KWARGS, None, CallCount())
    x0, eps = ScheduledCFG(schedule, UNCOND).wrap_prediction(net, True)(x, p)
    w = 7.0 + (1.0 - 7.0) * (k_sigma(t) - 0.1) / (10.0 - 0.1)
    e_c = torch.cat([exact_eps(int(y), x[i : i + 1], p.alpha, p.sigma) for i, y in enumerate(Y_C)])
    e_u = exact_eps(-1, x, p.alpha, p.sigma)
    want = e_u + w * (e_c - e_u)
    torch.testing.assert_close(eps, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x0, (x - p.sigma * want) / p.alpha, rtol=1e-12, atol=1e-12)
    assert net.calls.network == 1 and net.calls.branches == 2


@pytest.mark.parametrize("space", ["sigma", "log_sigma"])
def test_named_schedules_by_hand(space: str) -> None:
    lo, hi = 0.1, 10.0
    lin = ScaleSchedule("linear", 1.0, 5.0, lo, hi, space)
    cos = ScaleSchedule("cosine", 1.0, 5.0, lo, hi, space)
    mid = math.sqrt(lo * hi) if space == "log_sigma" else (lo + hi) / 2
    for s in (lin, cos):
        assert s(hi) == s(100.0) == 1.0 and s(lo) == s(0.0) == 5.0
        assert s(mid) == pytest.approx(3.0, rel=1e-14)
    quarter = math.exp(math.log(hi) - 0.25 * math.log(hi / lo)) if space == "log_sigma" else hi - 0.25 * (hi - lo)
    assert lin(quarter) == pytest.approx(2.0, rel=1e-14)
    assert cos(quarter) == pytest.approx(1.0 + 4.0 * (1 - math.cos(math.pi / 4)) / 2, rel=1e-14)


def test_a_schedule_run_skips_the_unconditional_branch_where_the_scale_is_one() -> None:
    schedule = ScaleSchedule("cosine", 1.0, 6.0, sigma_lo=0.2, sigma_hi=2.0)
    _, calls, model = run(ScheduledCFG(schedule, UNCOND), "heun", nfe=9)
    guided = [schedule(k_sigma(t)) != 1.0 for t in model.times]
    assert 0 < sum(guided) < len(guided)
    assert model.batches == [2 * B if g else B for g in guided] and calls.branches == calls.network + sum(guided)


# --- APG ---------------------------------------------------------------------------------------------------------


def apg_by_hand(steps: list[tuple[Tensor, Tensor]], w: float, eta: float, beta: float, r: float | None) -> list[Tensor]:
    """Sadat et al.'s Algorithm 1 written out per sample with Python loops over the rows."""
    out, prev = [], None
    for d_c, d_u in steps:
        rows = []
        avg_rows = []
        for i in range(d_c.shape[0]):
            c, diff = d_c[i].flatten(), (d_c[i] - d_u[i]).flatten()
            if beta != 0 and prev is not None:
                diff = diff + beta * prev[i]
            avg_rows.append(diff)
            if r is not None:
                diff = diff * min(1.0, r / float(torch.sqrt((diff * diff).sum())))
            par = float((diff * c).sum()) / float((c * c).sum()) * c
            rows.append((d_c[i].flatten() + (w - 1) * ((diff - par) + eta * par)).reshape(d_c[i].shape))
        prev = avg_rows if beta != 0 else None
        out.append(torch.stack(rows))
    return out


def apg_steps(ts: list[float], x: Tensor, rule: AdaptiveProjectedGuidance) -> tuple[list[Tensor], list[Tensor], Any]:
    """Evaluate ``rule`` at the points ``ts`` in order (one run's state); the returned x0, eps and the inputs."""
    net = Network(Labelled(), KWARGS, None, CallCount())
    evaluate = rule.wrap_prediction(net, True)
    x0s, epss, inputs = [], [], []
    for t in ts:
        p = point(t)
        x0, eps = evaluate(x, p)
        d_c = torch.cat([PARTS[int(y)].denoise(x[i : i + 1], p.alpha, p.sigma)[0] for i, y in enumerate(Y_C)])
        d_u = MIXTURE.denoise(x, p.alpha, p.sigma)[0]
        x0s.append(x0)
        epss.append(eps)
        inputs.append((p, d_c, d_u))
    assert net.calls.network == len(ts) and net.calls.branches == 2 * len(ts)
    return x0s, epss, inputs


@pytest.mark.parametrize(("eta", "beta", "r"), [(0.0, 0.0, None), (0.3, -0.5, 1.5), (1.0, 0.6, 0.4)])
def test_apg_against_the_formula_by_hand(eta: float, beta: float, r: float | None) -> None:
    x, ts, w = noise(2), [0.7, 0.5, 0.3], 6.0
    x0s, epss, inputs = apg_steps(ts, x, AdaptiveProjectedGuidance(w, UNCOND, eta, beta, r))
    want = apg_by_hand([(d_c, d_u) for _, d_c, d_u in inputs], w, eta, beta, r)
    for x0, eps, want_x0, (p, _, _) in zip(x0s, epss, want, inputs, strict=True):
        torch.testing.assert_close(x0, want_x0, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(eps, (x - p.alpha * want_x0) / p.sigma, rtol=1e-10, atol=1e-10)


def test_apg_agrees_with_diffusers_guider() -> None:
    apg = pytest.importorskip("diffusers.guiders.adaptive_projected_guidance")
    x, ts, w, eta, beta, r = noise(3), [0.8, 0.6, 0.4, 0.2], 5.0, 0.25, -0.6, 1.0
    x0s, _, inputs = apg_steps(ts, x, AdaptiveProjectedGuidance(w, UNCOND, eta, beta, r))
    buffer = apg.MomentumBuffer(beta)
    for x0, (_, d_c, d_u) in zip(x0s, inputs, strict=True):
        want = apg.normalized_guidance(d_c, d_u, w - 1, buffer, eta, r, use_original_formulation=True)
        torch.testing.assert_close(x0, want, rtol=1e-11, atol=1e-11)


def test_apg_without_projection_momentum_or_threshold_is_cfg() -> None:
    """eta = 1, beta = 0, no threshold: D_c + (w - 1)(D_c - D_u), which is CFG (affine in the output)."""
    want, _, _ = run(ClassifierFreeGuidance(3.0, UNCOND), "ddim")
    out, calls, _ = run(AdaptiveProjectedGuidance(3.0, UNCOND, eta=1.0), "ddim")
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    assert calls.network == 8 and calls.branches == 16


def test_apg_momentum_restarts_with_each_run() -> None:
    rule = AdaptiveProjectedGuidance(4.0, UNCOND, momentum=-0.5, norm_threshold=2.0)
    first, _, _ = run(rule)
    second, _, _ = run(rule)
    assert torch.equal(first, second)


# --- perturbed branches (PAG) ------------------------------------------------------------------------------------


def perturbed_model(x: Tensor, t: Tensor, y: Tensor, pert: Tensor | None = None) -> Tensor:
    """A separate 'perturbed network': the labelled model with another perturbation than ``pert``'s."""
    return Labelled()(x, t, y) - 0.3 * torch.sin(x)


def outputs_at(x: Tensor, p: Point) -> dict[str, Tensor]:
    """The exact branch outputs at ``(x, p)``: conditional, unconditional, perturbed (pert = 1), separate model."""
    e_c = torch.cat([exact_eps(int(y), x[i : i + 1], p.alpha, p.sigma) for i, y in enumerate(Y_C)])
    return {
        "c": e_c,
        "u": exact_eps(-1, x, p.alpha, p.sigma),
        "pert": e_c + 0.2 * torch.tanh(x),
        "model": e_c - 0.3 * torch.sin(x),
    }


@pytest.mark.parametrize(
    ("rule", "formula", "network", "branches"),
    [
        (PerturbedGuidance([Term(2.5, kwargs={"pert": PERT1})]), lambda o: o["c"] + 2.5 * (o["c"] - o["pert"]), 1, 2),
        (
            PerturbedGuidance([Term(2.5, kwargs={"pert": PERT1})], scale=4.0, uncond_kwargs=UNCOND),
            lambda o: o["u"] + 4.0 * (o["c"] - o["u"]) + 2.5 * (o["c"] - o["pert"]),
            1,
            3,
        ),
        (
            PerturbedGuidance.weighted([{"pert": PERT1}, perturbed_model], [1.5, -0.5], 3.0, UNCOND),
            lambda o: o["u"] + 3.0 * (o["c"] - o["u"]) + 1.5 * (o["c"] - o["pert"]) - 0.5 * (o["c"] - o["model"]),
            2,
            4,
        ),
        (PerturbedGuidance([Term(2.0, model=perturbed_model)]), lambda o: o["c"] + 2.0 * (o["c"] - o["model"]), 2, 2),
    ],
    ids=["pag", "cfg+pag", "cfg+two", "model"],
)
def test_perturbed_branches_by_hand(
    rule: PerturbedGuidance, formula: Callable[[dict[str, Tensor]], Tensor], network: int, branches: int
) -> None:
    x, p = noise(4), point(0.35)
    model = Labelled()
    net = Network(model, KWARGS, None, CallCount())
    out = rule.wrap(net)(x, p.model_time, p.t)
    torch.testing.assert_close(out, formula(outputs_at(x, p)), rtol=1e-12, atol=1e-12)
    assert (net.calls.network, net.calls.branches) == (network, branches)
    assert model.batches == [B * (branches - network + 1)]  # the run's network's branches: one batched call


# --- composition -------------------------------------------------------------------------------------------------


def test_composition_of_labels_and_a_model_by_hand() -> None:
    """eps = eps_u + sum_i w_i (eps_i - eps_u) with the exact class denoisers; two labels batched with the
    unconditional branch into one call, a separate model (class 2's exact denoiser) in a second one."""
    x, p = noise(5), point(0.45)
    weights = [1.5, 0.75, -0.5]
    class_2 = PARTS[2].model(VP, "epsilon")  # model(x, time): no conditioning
    terms = [Term(1.5, {"y": labels(0)}), Term(0.75, {"y": labels(1)}), Term(-0.5, kwargs={}, model=class_2)]
    rule = Composition(terms, UNCOND)
    model, calls = Labelled(), CallCount()
    x0, eps = fewstep.Denoiser(model, VP, model_kwargs=KWARGS, guidance=rule).stack(calls).outer(x, p)
    e_u = exact_eps(-1, x, p.alpha, p.sigma)
    want = e_u + sum(w * (exact_eps(k, x, p.alpha, p.sigma) - e_u) for k, w in enumerate(weights))
    torch.testing.assert_close(eps, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x0, (x - p.sigma * want) / p.alpha, rtol=1e-12, atol=1e-12)
    assert (calls.network, calls.branches) == (2, 4) and model.batches == [3 * B]


def test_composition_of_one_prompt_is_cfg_bit_for_bit() -> None:
    want, _, _ = run(ClassifierFreeGuidance(4.0, UNCOND))
    out, calls, _ = run(Composition([Term(4.0)], UNCOND))
    assert torch.equal(out, want) and (calls.network, calls.branches) == (8, 16)


def test_output_level_rules_run_under_the_time_shift() -> None:
    for rule in (Composition([Term(2.0)], UNCOND), PerturbedGuidance([Term(1.0, kwargs={"pert": PERT1})])):
        out, calls, _ = run(rule, "ddim", time_shift=TimeShift())
        assert torch.isfinite(out).all() and calls.network == 8


# --- every solver ------------------------------------------------------------------------------------------------

RULES: dict[str, tuple[object, int, int]] = {  # rule, network calls and branch evaluations per request
    "interval": (ScheduledCFG(3.0, UNCOND, interval=(0.0, math.inf)), 1, 2),
    "apg": (AdaptiveProjectedGuidance(4.0, UNCOND, momentum=-0.5, norm_threshold=3.0), 1, 2),
    "cfg+pag": (PerturbedGuidance([Term(2.0, kwargs={"pert": PERT1})], 3.0, UNCOND), 1, 3),
    "pag_model": (PerturbedGuidance([Term(1.0, model=perturbed_model)]), 2, 2),
    "compose": (Composition.weighted([{"y": labels(0)}, None, perturbed_model], [0.5, 2.0, 0.5], UNCOND), 2, 4),
}


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "heun", "unipc_bh2", "euler_ancestral", "dpmpp_2m_sde"])
@pytest.mark.parametrize("name", list(RULES))
def test_every_rule_runs_with_every_solver(name: str, solver: str) -> None:
    rule, per_call, per_branch = RULES[name]
    out, calls, _ = run(rule, solver, nfe=7)
    assert torch.isfinite(out).all()
    assert calls.requests == 7 and calls.network == 7 * per_call and calls.branches == 7 * per_branch


# --- errors ------------------------------------------------------------------------------------------------------

ERRORS: list[tuple[Callable[[], object], type[Exception], str]] = [
    (lambda: ScheduledCFG(math.nan, UNCOND), ValueError, "scale: must be finite"),
    (lambda: ScheduledCFG("7", UNCOND), TypeError, "scale: must be a real number"),  # type: ignore[arg-type]
    (lambda: ScheduledCFG(2.0, None), ValueError, "uncond_kwargs: classifier-free guidance needs"),  # type: ignore[arg-type]
    (lambda: ScheduledCFG(2.0, [1]), TypeError, "uncond_kwargs: must be a mapping"),  # type: ignore[arg-type]
    (lambda: ScheduledCFG(2.0, UNCOND, interval=(3.0, 1.0)), ValueError, r"interval: need 0 <= sigma_lo < sigma_hi"),
    (lambda: ScheduledCFG(2.0, UNCOND, interval=(-1.0, 1.0)), ValueError, r"interval: need 0 <= sigma_lo"),
    (lambda: ScheduledCFG(2.0, UNCOND, interval=(1.0,)), TypeError, r"interval: must be a pair"),  # type: ignore[arg-type]
    (lambda: ScheduledCFG(2.0, UNCOND, rescale=2.0), ValueError, r"guidance_rescale: must be in \[0, 1\]"),
    (lambda: ClassifierFreeGuidance(math.inf, UNCOND), ValueError, "guidance_scale: must be finite"),
    (lambda: ScaleSchedule("cosin", 1.0, 5.0, 0.1, 1.0), ValueError, r"shape: unknown 'cosin' \(did you mean 'cosine'"),
    (lambda: ScaleSchedule("linear", 1.0, 5.0, 0.0, 1.0, "log_sigma"), ValueError, "sigma_lo > 0 in log_sigma"),
    (lambda: ScaleSchedule("linear", 1.0, 5.0, 0.1, 1.0, "log"), ValueError, "space: unknown 'log'"),
    (lambda: AdaptiveProjectedGuidance(math.inf, UNCOND), ValueError, "scale: must be finite"),
    (lambda: AdaptiveProjectedGuidance(True, UNCOND), TypeError, "scale: must be a real number"),
    (lambda: AdaptiveProjectedGuidance(2.0, UNCOND, norm_threshold=0.0), ValueError, "norm_threshold: must be > 0"),
    (lambda: AdaptiveProjectedGuidance(2.0, None), ValueError, "uncond_kwargs: adaptive projected guidance needs"),  # type: ignore[arg-type]
    (lambda: PerturbedGuidance([]), ValueError, "branches: give at least one Term"),
    (lambda: PerturbedGuidance(Term(1.0)), TypeError, "branches: must be a list"),  # type: ignore[arg-type]
    (lambda: PerturbedGuidance([Term(1.0)]), ValueError, r"branches\[0\]: a perturbed branch needs kwargs="),
    (lambda: PerturbedGuidance([Term(1.0, {"pert": PERT1})], 2.0), ValueError, r"uncond_kwargs: classifier-free"),
    (lambda: PerturbedGuidance.weighted([{"pert": PERT1}], [1.0, 2.0]), ValueError, r"weights: need one weight per"),
    (lambda: Term(math.nan, {}), ValueError, "Term.weight: must be finite"),
    (lambda: Term("1", {}), TypeError, "Term.weight: must be a real number"),  # type: ignore[arg-type]
    (lambda: Term(1.0, model=3), TypeError, "Term.model: must be callable"),  # type: ignore[arg-type]
    (lambda: Composition([Term(1.0)], None), ValueError, "uncond_kwargs: a composition"),  # type: ignore[arg-type]
    (lambda: Composition.weighted([{"y": Y_C}, None], [1.0], UNCOND), ValueError, r"weights: need one weight per"),
    (lambda: Composition.weighted([3], [1.0], UNCOND), TypeError, r"conditions\[0\]: must be a mapping"),
    (lambda: Composition.weighted({"y": Y_C}, [1.0], UNCOND), TypeError, r"conditions: must be a list"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("build", "error", "match"), ERRORS, ids=[m for _, _, m in ERRORS])
def test_invalid_options_name_the_option(build: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        (ScheduledCFG(2.0, {"y": Y_U[:3]}), r"uncond_kwargs: each tensor must match"),
        (AdaptiveProjectedGuidance(2.0, {"z": Y_U}), r"uncond_kwargs: keys \['z'\] are not in model_kwargs"),
        (
            PerturbedGuidance([Term(1.0, {"pert": PERT1[:2]})]),
            r"branches\['pert'\]: must be a tensor of shape \(6, 1\)",
        ),
        (Composition([Term(1.0, {"y": Y_C[:2]})], UNCOND), r"terms\['y'\]: must be a tensor of shape \(6,\)"),
    ],
)
def test_mismatched_conditioning_is_refused_before_any_call(rule: object, match: str) -> None:
    model = Labelled()
    with pytest.raises(ValueError, match=match):
        run(rule, model=model)
    assert model.batches == []


def test_a_schedule_returning_a_bad_scale_is_named() -> None:
    with pytest.raises(ValueError, match=r"scale: the schedule returned nan at sigma"):
        run(ScheduledCFG(lambda sigma: math.nan, UNCOND))


@pytest.mark.parametrize(
    "rule", [ScheduledCFG(2.0, UNCOND, interval=(0.1, 1.0)), AdaptiveProjectedGuidance(2.0, UNCOND)]
)
def test_prediction_rules_refuse_the_time_shift(rule: object) -> None:
    model = Labelled()
    with pytest.raises(ValueError, match=r"guidance: .* acts on the predictions at a point"):
        run(rule, model=model, time_shift=TimeShift())
    assert model.batches == []


def test_a_separate_models_non_finite_output_is_caught_and_counted() -> None:
    def broken(x: Tensor, t: Tensor, y: Tensor, pert: Tensor | None = None) -> Tensor:
        return torch.full_like(x, math.nan)

    calls = CallCount()
    with pytest.raises(fewstep.NonFiniteModelOutput, match="evaluation 2"):
        fewstep.sample(Labelled(), noise(), VP, "ddim", nfe=3, model_kwargs=KWARGS, calls=calls,
                       guidance=PerturbedGuidance([Term(1.0, model=broken)]), check_finite="each")  # fmt: skip
    assert calls.network == 2
