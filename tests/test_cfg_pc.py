"""CFG as a predictor-corrector (Bradley & Nakkiran 2024): ``CFGPredictorCorrector`` with ``pc_langevin``'s
fixed-size Langevin corrector (``step_size=``), on pairs of 1-D Gaussians where every answer is in closed form.

With ``p(x0 | c) = N(m_c, s_c^2)`` and ``p(x0) = N(m_u, s_u^2)`` the noisy marginals at ``(alpha, sigma)`` are
``N(alpha m, v)``, ``v = alpha^2 s^2 + sigma^2``, and the gamma-powered ``p_t(x|c)^gamma p_t(x)^(1-gamma)`` is
Gaussian with precision ``P = gamma / v_c + (1 - gamma) / v_u`` and mean ``(gamma alpha m_c / v_c + (1 - gamma)
alpha m_u / v_u) / P``. A Langevin move ``x + e score + sqrt(2 e) z`` on a Gaussian of variance ``v`` is the linear
chain ``x' = mu + (1 - e/v)(x - mu) + sqrt(2 e) z``, whose stationary law is ``N(mu, v / (1 - e / (2 v)))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import GaussianMixture
from fewstep.guidance import CFGPredictorCorrector, ClassifierFreeGuidance
from fewstep.model.point import CorrectorPoint, Point
from fewstep.model.stack import Evaluation

VP = fewstep.VP()
M_C, S_C, M_U, S_U = 1.0, 0.5, 0.0, 1.0  # p(x0 | c) = N(1, 0.5^2), p(x0) = N(0, 1)
COND = GaussianMixture.single(1, M_C, S_C).model(VP, "epsilon")
UNCOND = GaussianMixture.single(1, M_U, S_U).model(VP, "epsilon")


def model(x: Tensor, time: Tensor, y: Tensor) -> Tensor:
    """A CFG network: the exact conditional eps where ``y == 1``, the unconditional one where ``y == 0``."""
    t = time[0]  # one time per call: the targets' schedule is evaluated once
    return torch.where((y == 1).view(-1, 1), COND(x, t), UNCOND(x, t))


def labels(n: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``model_kwargs`` (conditional) and ``uncond_kwargs`` for a batch of ``n``."""
    return {"y": torch.ones(n, dtype=torch.long)}, {"y": torch.zeros(n, dtype=torch.long)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(n: int, seed: int = 0) -> Tensor:
    return torch.randn(n, 1, generator=gen(seed), dtype=torch.float64)


def schedule_at(t: float) -> tuple[float, float, float]:
    tt = torch.tensor(t, dtype=torch.float64)
    return float(VP.alpha(tt)), float(VP.sigma(tt)), float(VP.lambda_(tt))


class Probe:
    """An evaluation layer that counts corrector requests and keeps the state of the first predictor request at
    schedule time ``t`` (the corrected state the predictor continues from)."""

    def __init__(self, t: float) -> None:
        self.t, self.state, self.corrector = t, None, 0
        self.marked: list[Point] = []

    def wrap(self, inner: Evaluation, needs_eps: bool, calls: fewstep.CallCount) -> Evaluation:
        def evaluate(x: Tensor, p: Point) -> Any:
            if isinstance(p, CorrectorPoint):
                self.corrector += 1
                self.marked.append(p)
            elif p.t == self.t and self.state is None:
                self.state = x.clone()
            return inner(x, p)

        return evaluate


@pytest.mark.parametrize(("gamma", "c"), [(3.0, 0.5), (2.0, 1.0)])
def test_langevin_corrector_converges_to_the_powered_noisy_marginal(gamma: float, c: float) -> None:
    """Many corrector moves at one level: the state is distributed as the discretised chain's stationary law on the
    gamma-powered product of the noisy marginals, with the documented step ``e = c sigma^2 (1 - e^{-2h}) / 2``."""
    n, moves, times = 5000, 100, [0.9, 0.5, 0.1]
    cond, uncond = labels(n)
    probe = Probe(times[1])
    fewstep.sample(
        model,
        randn(n),
        VP,
        "pc_langevin",
        spacing=times,
        final="t_min",
        predictor="ddim",
        n_corrector=moves,
        step_size=c,
        model_kwargs=cond,
        generator=gen(1),
        wrappers=[probe],
        guidance=CFGPredictorCorrector(predictor_scale=1.5, corrector_scale=gamma, uncond_kwargs=uncond),
    )
    assert probe.state is not None and probe.corrector == moves

    alpha, sigma, lam = schedule_at(times[1])
    h = lam - schedule_at(times[0])[2]
    e = c * sigma**2 * (1.0 - math.exp(-2.0 * h)) / 2.0
    v_c, v_u = alpha**2 * S_C**2 + sigma**2, alpha**2 * S_U**2 + sigma**2
    precision = gamma / v_c + (1.0 - gamma) / v_u
    v, mu = 1.0 / precision, (gamma * alpha * M_C / v_c + (1.0 - gamma) * alpha * M_U / v_u) / precision
    stationary = v / (1.0 - e / (2.0 * v))
    assert (1.0 - e / v) ** moves < 1e-6  # the start is forgotten

    x = probe.state.flatten()
    mean_bound, var_bound = 4.5 * math.sqrt(stationary / n), 4.5 * stationary * math.sqrt(2.0 / (n - 1))
    assert abs(float(x.mean()) - mu) < mean_bound
    assert abs(float(x.var()) - stationary) < var_bound
    # the bounds separate it from the noisy marginal of the powered data distribution p(x0|c)^g p(x0)^(1-g)
    p0 = gamma / S_C**2 + (1.0 - gamma) / S_U**2
    noised_mean = alpha * (gamma * M_C / S_C**2 + (1.0 - gamma) * M_U / S_U**2) / p0
    noised_var = alpha**2 / p0 + sigma**2
    assert abs(noised_mean - mu) > 3 * mean_bound or abs(noised_var - stationary) > 3 * var_bound


@pytest.mark.parametrize("predictor", ["ddim", "ddpm"])
def test_without_corrector_moves_it_is_plain_cfg_at_the_predictor_scale(predictor: str) -> None:
    n = 16
    cond, uncond = labels(n)
    kw: dict[str, Any] = {"nfe": 8, "model_kwargs": cond}
    pc = fewstep.sample(
        model,
        randn(n),
        VP,
        "pc_langevin",
        predictor=predictor,
        n_corrector=0,
        generator=gen(2),
        guidance=CFGPredictorCorrector(2.5, 7.0, uncond),
        **kw,
    )
    plain = fewstep.sample(
        model, randn(n), VP, predictor, generator=gen(2), guidance=ClassifierFreeGuidance(2.5, uncond), **kw
    )
    assert torch.equal(pc, plain)


def test_equal_scales_are_plain_cfg_and_the_corrector_scale_acts_on_corrector_requests_only() -> None:
    n = 16
    cond, uncond = labels(n)
    kw: dict[str, Any] = {"nfe": 10, "predictor": "ddim", "n_corrector": 2, "step_size": 0.5, "model_kwargs": cond}

    def run(rule: Any) -> Tensor:
        return fewstep.sample(model, randn(n), VP, "pc_langevin", generator=gen(3), guidance=rule, **kw)

    plain = run(ClassifierFreeGuidance(3.0, uncond))
    assert torch.equal(run(CFGPredictorCorrector(3.0, 3.0, uncond)), plain)
    assert not torch.allclose(run(CFGPredictorCorrector(3.0, 1.0, uncond)), plain)


def test_corrector_requests_are_counted_as_batched_two_branch_calls() -> None:
    n, steps, moves = 8, 5, 3
    cond, uncond = labels(n)
    calls, probe = fewstep.CallCount(), Probe(-1.0)
    nfe = steps + moves * (steps - 1)
    fewstep.sample(
        model,
        randn(n),
        VP,
        "pc_langevin",
        nfe=nfe,
        predictor="ddim",
        n_corrector=moves,
        step_size=1.0,
        model_kwargs=cond,
        guidance=CFGPredictorCorrector(1.0, 3.0, uncond),
        calls=calls,
        wrappers=[probe],
    )
    assert (calls.network, calls.branches, calls.requests, calls.nfe) == (nfe, 2 * nfe, nfe, nfe)
    assert probe.corrector == moves * (steps - 1)
    first = probe.marked[0]
    assert type(first) is CorrectorPoint and 0.0 < first.sigma < 1.0
    assert all(p is first for p in probe.marked[:moves])  # one marked point per node, planned before the run


def test_matches_cfg_ddpm_as_the_steps_shrink() -> None:
    """Bradley & Nakkiran's Theorem: CFG-DDPM at w is a conditional DDIM predictor plus one Langevin move on the
    (2w - 1)-powered distribution per step, in the limit of small steps. Every map here is affine in the start and the
    draws, so the result's exact mean and variance come from one run: row 0 starts at 0 with no noise (the mean),
    row 1 at 1 (the start's coefficient), row 2 + k gets a unit k-th draw (that draw's coefficient)."""
    w = 3.0

    def moments(steps: int, solver: str, rule: Callable[[dict[str, Tensor]], Any], **options: Any) -> Tensor:
        rows = 2 * steps + 2
        draws = iter(range(2, rows))

        def unit_draw(s: float, t: float) -> Tensor:
            z = torch.zeros(rows, 1, dtype=torch.float64)
            z[next(draws)] = 1.0
            return z

        x = torch.zeros(rows, 1, dtype=torch.float64)
        x[1] = 1.0
        cond, uncond = labels(rows)
        out = fewstep.sample(
            model,
            x,
            VP,
            solver,
            steps=steps,
            model_kwargs=cond,
            guidance=rule(uncond),
            noise_sampler=unit_draw,
            **options,
        ).flatten()
        return torch.stack([out[0], (out[1:] - out[0]).square().sum()])  # mean, variance for a N(0, 1) start

    pc_options: dict[str, Any] = {"predictor": "ddim", "n_corrector": 1, "step_size": 1.0}
    errors, wrong = [], 0.0
    for steps in (50, 200):
        ddpm = moments(steps, "ddpm", lambda u: ClassifierFreeGuidance(w, u))
        pc = moments(steps, "pc_langevin", lambda u: CFGPredictorCorrector.matching_ddpm(w, u), **pc_options)
        errors.append((pc - ddpm).abs())
    wrong_pc = moments(200, "pc_langevin", lambda u: CFGPredictorCorrector(1.0, w, u), **pc_options)
    wrong = float((wrong_pc - ddpm).abs().max())
    assert bool((errors[1] < 0.4 * errors[0]).all())  # first order: a quarter of the error at 4x the steps
    assert float(errors[1].max()) < 0.01 and wrong > 10 * float(errors[1].max())


def test_matching_ddpm_scales() -> None:
    rule = CFGPredictorCorrector.matching_ddpm(4.0, {"y": torch.zeros(1)})
    assert (rule.predictor_scale, rule.corrector_scale) == (1.0, 7.0)


def test_fixed_step_corrector_keeps_per_sample_seeds() -> None:
    """The fixed step does not depend on the batch (unlike the default snr rule's batch-mean norms)."""
    cond, uncond = labels(6)
    rule = CFGPredictorCorrector(1.0, 3.0, uncond)
    opts: dict[str, Any] = {"nfe": 9, "predictor": "ddpm", "step_size": 1.0}
    batch = fewstep.sample(
        model, randn(6), VP, "pc_langevin", seed=list(range(6)), model_kwargs=cond, guidance=rule, **opts
    )
    one = fewstep.sample(
        model,
        randn(6)[4:5],
        VP,
        "pc_langevin",
        seed=[4],
        model_kwargs={"y": cond["y"][:1]},
        guidance=CFGPredictorCorrector(1.0, 3.0, {"y": uncond["y"][:1]}),
        **opts,
    )
    torch.testing.assert_close(batch[4:5], one, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"predictor_scale": "3"}, TypeError, "predictor_scale: must be a real number"),
        ({"corrector_scale": True}, TypeError, "corrector_scale: must be a real number"),
        ({"predictor_scale": math.nan}, ValueError, "predictor_scale: must be finite"),
        ({"corrector_scale": math.inf}, ValueError, "corrector_scale: must be finite"),
        ({"uncond_kwargs": None}, ValueError, "uncond_kwargs: CFG as a predictor-corrector needs the unconditional"),
        ({"uncond_kwargs": [0]}, TypeError, "uncond_kwargs: must be a mapping"),
    ],
)
def test_bad_rule_options(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    options = {"predictor_scale": 1.0, "corrector_scale": 3.0, "uncond_kwargs": {"y": torch.zeros(2)}, **kwargs}
    with pytest.raises(error, match=match):
        CFGPredictorCorrector(**options)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"step_size": 0.0}, ValueError, "step_size: must be > 0"),
        ({"step_size": -1.0}, ValueError, "step_size: must be >= 0"),
        ({"step_size": math.nan}, ValueError, "step_size"),
        ({"step_size": "1"}, TypeError, "step_size: must be a real number"),
        ({"step_size": 1.0, "snr": 0.2}, ValueError, "step_size: replaces the snr rule"),
        ({"step_size": 1.0, "norm": "sample"}, ValueError, "step_size: replaces the snr rule"),
        ({"n_corrector": -1}, ValueError, "n_corrector: must be an integer >= 0"),
        ({"n_corrector": 1.5}, ValueError, "n_corrector: must be an integer >= 0"),
    ],
)
def test_bad_corrector_options_fail_before_any_model_call(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    called: list[int] = []
    cond, uncond = labels(4)
    with pytest.raises(error, match=match):
        fewstep.sample(
            lambda x, t, y: called.append(1) or model(x, t, y),
            randn(4),
            VP,
            "pc_langevin",
            nfe=5,
            predictor="ddim",
            model_kwargs=cond,
            guidance=CFGPredictorCorrector(1.0, 3.0, uncond),
            **options,
        )
    assert not called


@pytest.mark.parametrize(
    ("model_kwargs", "uncond", "match"),
    [
        ({}, {}, "model_kwargs: CFG as a predictor-corrector needs a conditional model"),
        ({"y": torch.ones(4, dtype=torch.long)}, {"label": torch.zeros(4)}, r"uncond_kwargs: keys \['label'\]"),
    ],
)
def test_non_cfg_model_is_refused_before_any_model_call(
    model_kwargs: dict[str, Tensor], uncond: dict[str, Tensor], match: str
) -> None:
    called: list[int] = []

    def unconditional(x: Tensor, t: Tensor, **kw: Any) -> Tensor:
        called.append(1)
        return UNCOND(x, t[0])

    with pytest.raises(ValueError, match=match):
        fewstep.sample(
            unconditional,
            randn(4),
            VP,
            "pc_langevin",
            nfe=5,
            predictor="ddim",
            step_size=1.0,
            model_kwargs=model_kwargs,
            guidance=CFGPredictorCorrector(1.0, 3.0, uncond),
        )
    assert not called
