"""Superposition of diffusion models (SuperDiff OR / AND, fixed weighted sums) and the Itô density estimator, checked
against exact answers: 2-D Gaussian mixtures whose mixtures and log-densities are known in closed form."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import GaussianMixture
from fewstep.guidance import Superposition, SuperpositionStep
from fewstep.guidance.ito_density import ItoDensity
from fewstep.guidance.superposition import and_weights, project_weights
from fewstep.model import CallCount, Evaluation, Network, Point

F64 = torch.float64
VP = fewstep.VP()
#: Four modes at the compass points, std 0.4: far enough apart that each sample's nearest mode is its component.
MODES = torch.tensor([[-3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, -3.0]], dtype=F64)
STD = 0.4
OR_A, OR_B = ([0, 1], [0.7, 0.3]), ([2, 3], [0.4, 0.6])  # OR: disjoint modes, unequal weights
AND_A, AND_B, SHARED = [0, 1, 3], [1, 2, 3], [1, 3]  # AND: modes 1 and 3 shared, on the bisector of 0 and 2


def mixture(modes: Sequence[int], weights: Sequence[float] | None = None) -> GaussianMixture:
    return GaussianMixture(MODES[list(modes)], STD, None if weights is None else list(weights))


def model(modes: Sequence[int], weights: Sequence[float] | None = None) -> Callable[..., Tensor]:
    return mixture(modes, weights).model(VP, "epsilon")


def noise(n: int, seed: int = 0) -> Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def run(first: Callable[..., Tensor], rule: Superposition | None, n: int, solver: str = "euler_ancestral",
        steps: int = 100, **kwargs: Any) -> Tensor:  # fmt: skip
    """Samples of a run whose network is ``first``, guided by ``rule``."""
    generator = torch.Generator().manual_seed(1)
    return fewstep.sample(first, noise(n), VP, solver, steps=steps, guidance=rule, progress=False,
                          generator=generator, **kwargs)  # fmt: skip


def nearest(x: Tensor) -> Tensor:
    return torch.cdist(x, MODES).argmin(1)


def frequencies(x: Tensor) -> Tensor:
    return torch.bincount(nearest(x), minlength=len(MODES)).to(F64) / x.shape[0]


def or_target(priors: Sequence[float]) -> Tensor:
    """The OR target's weight of each mode: prior times the mode's weight within its model."""
    pa, pb = priors[0] / sum(priors), priors[1] / sum(priors)
    return torch.tensor([pa * 0.7, pa * 0.3, pb * 0.4, pb * 0.6], dtype=F64)


def log_p(mix: GaussianMixture, y: Tensor, level: float) -> Tensor:
    """The exact log-density of the scaled state ``y = x/alpha`` at level ``sigma/alpha``: the mixture with each
    component's variance widened by ``level^2``."""
    v = mix.stds**2 + level**2
    sq = (y[:, None, :] - mix.means[None]).square().sum(-1)
    return torch.logsumexp(torch.log(mix.weights) - math.log(2 * math.pi) - torch.log(v) - sq / (2 * v), 1)


class Recorder:
    """An outer layer that keeps every requested ``(x, point)``."""

    def __init__(self) -> None:
        self.seen: list[tuple[Tensor, Point]] = []

    def wrap(self, inner: Evaluation, needs_eps: bool, calls: fewstep.CallCount) -> Evaluation:
        def evaluate(x: Tensor, p: Point) -> tuple[Tensor, Tensor | None]:
            self.seen.append((x.clone(), p))
            return inner(x, p)

        return evaluate


# --- OR: the mixture -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solver", "priors"),
    [("euler_ancestral", None), ("euler_ancestral", [0.25, 0.75]), ("ddpm", [0.6, 0.4]), ("dpmpp_2m_sde", None)],
)
def test_or_samples_the_mixture_of_two_models(solver: str, priors: list[float] | None) -> None:
    """A has modes 1, 2 (0.7, 0.3), B modes 3, 4 (0.4, 0.6): OR samples ``pi_A A + pi_B B``, every mode's weight
    within 3 standard errors at 2,000 samples."""
    rule = Superposition([None, model(*OR_B)], "or", priors=priors)
    freq = frequencies(run(model(*OR_A), rule, 2000, solver))
    want = or_target(priors or [1.0, 1.0])
    z = (freq - want) / (want * (1 - want) / 2000).sqrt()
    assert z.abs().max() < 3, (freq.tolist(), want.tolist(), z.tolist())


def test_or_of_three_models() -> None:
    """Three one-component models with priors 1 : 2 : 3 give their modes those weights."""
    rule = Superposition([None, model([1]), model([2])], "or", priors=[1.0, 2.0, 3.0])
    freq = frequencies(run(model([0]), rule, 1500))[:3]
    want = torch.tensor([1 / 6, 2 / 6, 3 / 6], dtype=F64)
    assert ((freq - want) / (want * (1 - want) / 1500).sqrt()).abs().max() < 3, freq.tolist()


def test_or_matches_the_exact_mixture_sampled_by_the_same_solver() -> None:
    """At 20,000 samples and 50 steps the solver's own bias shows; OR's frequencies match those of the exact target
    mixture (one model) sampled by the same solver from the same noise, so the estimator adds none of its own."""
    priors, n = [0.25, 0.75], 20000
    freq = frequencies(run(model(*OR_A), Superposition([None, model(*OR_B)], "or", priors=priors), n, steps=50))
    want = or_target(priors)
    exact = frequencies(run(GaussianMixture(MODES, STD, want.tolist()).model(VP, "epsilon"), None, n, steps=50))
    z = (freq - exact) / (2 * want * (1 - want) / n).sqrt()
    assert z.abs().max() < 3, (freq.tolist(), exact.tolist(), want.tolist())


# --- AND: equal densities --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler_ancestral", "dpmpp_2m_sde"])
def test_and_puts_the_samples_on_the_shared_components(solver: str) -> None:
    """A has modes 1, 2, 4, B modes 2, 3, 4: at least 95% of 2,000 AND samples lie within 4 std of mode 2 or 4
    (the average of the two scores, AND's weights without the density feedback, leaves more elsewhere)."""
    x = run(model(AND_A), Superposition([None, model(AND_B)], "and"), 2000, solver)
    on_shared = torch.cdist(x, MODES[SHARED]).min(1).values < 4 * STD
    assert float(on_shared.to(F64).mean()) >= 0.95
    averaged = run(model(AND_A), Superposition([None, model(AND_B)], "sum"), 2000, solver)
    assert float((torch.cdist(averaged, MODES[SHARED]).min(1).values < 4 * STD).to(F64).mean()) < 0.95


def test_and_keeps_the_densities_equal() -> None:
    """AND's record: the estimated log-density gap of 90% of the samples stays small along the run, while under OR
    (a third of whose samples land on a mode of one model only) it grows."""
    rec_and: list[SuperpositionStep] = []
    rec_or: list[SuperpositionStep] = []
    run(model(AND_A), Superposition([None, model(AND_B)], "and", record=rec_and), 300)
    run(model(AND_A), Superposition([None, model(AND_B)], "or", record=rec_or), 300)

    def gap(r: SuperpositionStep) -> float:
        assert r.log_q is not None
        return float((r.log_q[:, 0] - r.log_q[:, 1]).abs().quantile(0.9))

    assert max(gap(r) for r in rec_and) < 2.0 and gap(rec_or[-1]) > 10.0
    assert all(float(r.kappa.min()) >= 0.0 and float(r.kappa.max()) <= 1.0 for r in rec_and)


def test_and_weights_of_two_models_by_hand() -> None:
    """``kappa_1 = 1/2 - feedback (log q_1 - log q_2) / (c |eps_1 - eps_2|^2)`` (wide bounds: no projection)."""
    e1, e2 = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=F64), torch.tensor([[0.0, 1.0], [1.5, 0.0]], dtype=F64)
    log_q = torch.tensor([[0.3, 0.1], [-0.2, 0.4]], dtype=F64)
    kappa = and_weights([e1, e2], log_q, 0.2, 0.5, bounds=(-100.0, 100.0))
    k1 = 0.5 - 0.5 * (log_q[:, 0] - log_q[:, 1]) / (0.2 * (e1 - e2).square().sum(1))
    torch.testing.assert_close(kappa, torch.stack([k1, 1 - k1], 1), rtol=1e-6, atol=1e-9)


def test_projection_onto_bounded_weights() -> None:
    k = torch.tensor([[2.0, -1.0], [0.3, 0.7], [0.8, 0.6], [float("nan"), 1.0]], dtype=F64)
    out = project_weights(k, 0.0, 1.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5]], dtype=F64))
    three = project_weights(torch.tensor([[0.8, 0.6, -0.4]], dtype=F64), 0.0, 1.0)  # shift 0.2: (0.6, 0.4, 0)
    torch.testing.assert_close(three, torch.tensor([[0.6, 0.4, 0.0]], dtype=F64))


# --- the Itô density estimator ---------------------------------------------------------------------------------------


def test_estimator_tracks_the_exact_log_density_gap() -> None:
    """Along an OR run the tracked ``log q_A - log q_B`` follows the exact one (closed form for mixtures): at the
    evaluation nearest sigma/alpha = 1, where the models part, its error is under 3% of the gap's spread."""
    rec: list[SuperpositionStep] = []
    seen = Recorder()
    mix = [mixture(*OR_A), mixture(*OR_B)]
    run(model(*OR_A), Superposition([None, model(*OR_B)], "or", record=rec), 300, wrappers=[seen])
    assert len(rec) == len(seen.seen) == 100
    x0, p0 = seen.seen[0]
    k = min(range(len(rec)), key=lambda i: abs(math.log(seen.seen[i][1].sigma / seen.seen[i][1].alpha)))
    xk, pk = seen.seen[k]
    exact = [log_p(m, xk / pk.alpha, pk.sigma / pk.alpha) - log_p(m, x0 / p0.alpha, p0.sigma / p0.alpha) for m in mix]
    gap = exact[0] - exact[1]
    est = rec[k].log_q[:, 0] - rec[k].log_q[:, 1]  # type: ignore[index]  # 0 at the start
    assert float((est - gap).square().mean().sqrt()) < 0.03 * float(gap.std())
    assert float(gap.std()) > 1.0  # the models do differ there


@pytest.mark.parametrize("schedule", [fewstep.VP(), fewstep.Cosine(), fewstep.EDM(), fewstep.Flow()])
def test_increment_is_the_general_schedule_formula(schedule: fewstep.NoiseSchedule) -> None:
    """Over a short step the estimator's gap between two models equals the paper's estimator written with the
    forward SDE's ``f = alpha'/alpha`` and ``g^2 = d(sigma^2)/dt - 2 f sigma^2``:
    ``<s_1 - s_2, dx> + (f <x, s_1 - s_2> - g^2/2 (|s_1|^2 - |s_2|^2)) dtau``, ``s_i = -eps_i/sigma``."""
    t = 0.5 * (float(schedule.t_min) + float(schedule.t_max))
    dt = 1e-6 * (float(schedule.t_max) - float(schedule.t_min))
    den = fewstep.Denoiser(lambda x, time: x, schedule, "epsilon")
    p, q = (den.point(s, 3, torch.device("cpu"), F64) for s in (t, t - dt))
    x, e1, e2, z = (torch.randn(3, 5, generator=torch.Generator().manual_seed(s), dtype=F64) for s in range(4))
    x = x * math.hypot(p.alpha, p.sigma)
    x_next = x + math.sqrt(dt) * p.sigma * z
    density = ItoDensity()
    density.observe(x, p, [e1, e2])
    est = density.observe(x_next, q, [e1, e2])
    f = p.dalpha / p.alpha
    g2 = 2 * p.sigma * p.dsigma - 2 * f * p.sigma**2
    s1, s2 = -e1 / p.sigma, -e2 / p.sigma
    want = ((s1 - s2) * (x_next - x)).sum(1) + (
        f * (x * (s1 - s2)).sum(1) - g2 / 2 * (s1.square().sum(1) - s2.square().sum(1))
    ) * dt
    torch.testing.assert_close(est[:, 0] - est[:, 1], want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))


def test_the_estimator_needs_evaluations_along_one_path() -> None:
    """An evaluation that does not advance the noise level (a second stage at the same time, a restart) is refused."""
    rule = Superposition([None, model(*OR_B)], "or")
    evaluate = rule.wrap_prediction(Network(model(*OR_A), {}, None, CallCount()), True)
    p = fewstep.Denoiser(model(*OR_A), VP, "epsilon").point(0.5, 4, torch.device("cpu"), F64)
    evaluate(noise(4), p)
    with pytest.raises(ValueError, match="one path"):
        evaluate(noise(4), p)


# --- the fixed weighted sum, the models' sources, the record ---------------------------------------------------------


def test_sum_with_weights_one_and_zero_is_the_first_model() -> None:
    """``sum`` runs with any solver; weights (1, 0) give model A's own samples, weights (1/2, 1/2) the samples of
    the model whose output is the average of the two (epsilon is affine in the output)."""
    a, b = model(*OR_A), model(*OR_B)
    x = noise(64)
    alone = fewstep.sample(a, x, VP, "dpmpp_2m", nfe=12)
    torch.testing.assert_close(
        fewstep.sample(a, x, VP, "dpmpp_2m", nfe=12, guidance=Superposition([None, b], "sum", weights=[1.0, 0.0])),
        alone, rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    mean = fewstep.sample(lambda y, t: 0.5 * (a(y, t) + b(y, t)), x, VP, "dpmpp_2m", nfe=12)
    torch.testing.assert_close(fewstep.sample(a, x, VP, "dpmpp_2m", nfe=12, guidance=Superposition([a, b], "sum")),
                               mean, rtol=1e-10, atol=1e-10)  # fmt: skip


def test_conditionings_run_as_one_batched_call() -> None:
    """Models given as conditionings of the run's network (``c`` selects A or B) run as one call of two branches per
    evaluation and give the samples of the same models given as separate networks (two calls per evaluation)."""
    a, b = model(*OR_A), model(*OR_B)

    def conditional(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        return c * a(x, t) + (1 - c) * b(x, t)

    one, zero = torch.ones(300, 1, dtype=F64), torch.zeros(300, 1, dtype=F64)
    batched, separate = CallCount(), CallCount()
    out = run(conditional, Superposition([None, {"c": zero}], "or"), 300, steps=40, model_kwargs={"c": one},
              calls=batched)  # fmt: skip
    want = run(a, Superposition([a, b], "or"), 300, steps=40, calls=separate)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    assert (batched.network, batched.branches) == (40, 80)
    assert (separate.network, separate.branches) == (80, 80)


def test_record_holds_the_weights() -> None:
    """OR's first weights are the priors and every row sums to 1; ``sum`` records its fixed weights and no
    densities."""
    rec: list[SuperpositionStep] = []
    run(model(*OR_A), Superposition([None, model(*OR_B)], "or", priors=[1.0, 3.0], record=rec), 50, steps=20)
    assert len(rec) == 20 and rec[0].t == pytest.approx(float(VP.t_max))
    torch.testing.assert_close(rec[0].kappa, torch.tensor([[0.25, 0.75]], dtype=F64).expand(50, 2))
    assert all(torch.allclose(r.kappa.sum(1), torch.ones(50, dtype=F64)) for r in rec)
    rec.clear()
    run(model(*OR_A), Superposition([None, model(*OR_B)], "sum", weights=[1.5, -0.5], record=rec), 5, steps=3)
    assert rec[0].log_q is None and rec[0].kappa.tolist() == [[1.5, -0.5]] * 5


# --- errors, before any model call -----------------------------------------------------------------------------------


def refuse(*args: object, **kwargs: object) -> Tensor:
    raise AssertionError("the model was called")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"models": [None]}, ValueError, "at least two"),
        ({"models": {"c": 1}}, TypeError, "list of models"),
        ({"models": [None, 3]}, TypeError, r"models\[1\]"),
        ({"mode": "OR"}, ValueError, "did you mean 'or'"),
        ({"mode": "xor"}, ValueError, "choose one of"),
        ({"priors": [1.0]}, ValueError, "one value per model"),
        ({"priors": [1.0, -1.0]}, ValueError, "> 0"),
        ({"priors": [1.0, float("nan")]}, ValueError, "finite"),
        ({"priors": [1.0, 1.0], "mode": "and"}, ValueError, "only for mode='or'"),
        ({"weights": [0.5, 0.5]}, ValueError, "only for mode='sum'"),
        ({"weights": [1.0, 1.0], "mode": "sum"}, ValueError, r"sum to 1.*0\.5, 0\.5"),
        ({"weights": "ab", "mode": "sum"}, TypeError, "list of 2 numbers"),
        ({"feedback": 2.5, "mode": "and"}, ValueError, r"\[0, 2\)"),
        ({"bounds": (0.6, 1.0), "mode": "and"}, ValueError, "lo <= 1"),
        ({"bounds": (0.0, 1.0)}, ValueError, "only for mode='and'"),
        ({"record": ()}, TypeError, "record"),
    ],
)
def test_invalid_options(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    options: dict[str, object] = {"models": [None, refuse], **kwargs}
    with pytest.raises(error, match=match):
        Superposition(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("solver", "options", "match"),
    [
        ("dpmpp_2m", {}, r"euler_ancestral.*'dpmpp_2m'"),
        ("dpmpp_sde", {}, "one evaluation per step"),
        ("euler_ancestral", {"eta": 0.5}, "eta"),
        ("euler_ancestral", {"s_noise": 0.9}, "s_noise"),
        ("euler_ancestral", {"sde_window": (0.8, 0.2)}, "sde_window"),
    ],
)
@pytest.mark.parametrize("mode", ["or", "and"])
def test_solvers_off_the_reverse_sde_are_refused(solver: str, options: dict[str, Any], match: str,
                                                  mode: Literal["or", "and"]) -> None:  # fmt: skip
    rule = Superposition([None, refuse], mode)
    with pytest.raises(ValueError, match=match):
        fewstep.sample(refuse, noise(4), VP, solver, nfe=8, guidance=rule, **options)


def test_adaptive_pairs_are_refused() -> None:
    """``sample_adaptive``'s embedded pairs evaluate at stages off the path (and retry rejected steps)."""
    with pytest.raises(ValueError, match="'ggf_sde'"):
        fewstep.sample_adaptive(refuse, noise(4), VP, "ggf_sde", guidance=Superposition([None, refuse], "or"))


def test_mismatched_shapes() -> None:
    """A conditioning tensor of another shape is refused before any call; a separate model that returns another
    shape is refused at its call."""
    with pytest.raises(ValueError, match=r"models\['c'\]"):
        fewstep.sample(refuse, noise(4), VP, "euler_ancestral", nfe=4, model_kwargs={"c": torch.ones(4, 1)},
                       guidance=Superposition([None, {"c": torch.ones(4, 2)}]))  # fmt: skip
    with pytest.raises(ValueError, match="shape"):
        fewstep.sample(model(*OR_A), noise(4), VP, "euler_ancestral", nfe=4,
                       guidance=Superposition([None, lambda x, t: x[:, :1]]))  # fmt: skip
