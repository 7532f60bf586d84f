"""``fewstep compare --posterior inpaint|linear|reward``: posterior samplers side by side against the exact posterior.

A problem (:func:`posterior_problem`) is a Gaussian-mixture prior (the default 2-D mixture, or the 64-D one), a
fixed measurement or reward and its exact answer (:mod:`fewstep.bench.targets.posterior`), all made from a seed:

- ``inpaint``: a mask of half the coordinates (a random half), noise std 0.1 (2-D) / 0.2 (64-D);
- ``inpaint_noiseless``: the same mask, noiseless (``y`` is observed exactly); its last column is the largest
  observed-coordinate error ``max |A x - y|`` (0 for a method that reproduces the observation);
- ``linear``: a Gaussian matrix ``A`` (``m = D/2`` rows, entries ``N(0, 1/D)``), noise std 0.2 (2-D) / 0.5 (64-D);
- ``linear_noiseless``: the same matrix, noiseless (its last column is ``max |A x - y|``, as above);
- ``reward``: ``r(x) = -q/2 |x - c|^2`` (``Q = q I``, ``b = q c``), q = 1 (2-D) / 0.1 (64-D), scale 1.

The observation is ``y = A x*`` at the midpoint ``x*`` of the two component means closest in the measured space
(``c = x*`` for the reward), so that the posterior keeps at least two components of appreciable weight.

Methods (:data:`METHODS`, each run only where it applies; the ``fewstep.posterior`` ones are found by import):
``prior`` (unconditioned sampling: the baseline), ``dps`` (:class:`~fewstep.guidance.LossGuidance` with the
negative log-likelihood, or the negative reward, as loss: DPS, Chung et al. 2023), ``pigdm``, ``projection`` (needs
a noiseless measurement: not run here), ``tds`` (SMC with the twisted diffusion sampler's potential),
``inpaint_smc`` (masks) and ``linear_smc`` (a matrix, in its singular basis) and
``fk_steering`` (SMC with the reward's difference potential), ``fk_gradient`` (the same with its proposal shifted by
the reward's gradient, ``FKSteering(..., gradient=True)``, no backward pass) and ``driftlite`` (DriftLite's variance-controlling
drift, :func:`fewstep.posterior.smc.driftlite`; reward problems only: on the sharp likelihoods of the measurement
problems its explicit guidance step is unstable, docs/posterior.md). The one-chain methods run the stochastic solver
``ddpm`` at ``nfe`` steps on the ``logsnr`` spacing (the SMC engine's chain; guidance through the network adds one backward pass per step); the particle methods run
``K`` particles per sample at ``nfe`` steps each, and return one particle per sample, drawn by weight.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..guidance import LossGuidance
from ..model import CallCount
from ..posterior.measurement import Linear, Mask, Measurement
from ..sampling import sample
from ..schedules import VP
from .metrics import Spread, component_weight_error, exact_spread, mmd, sliced_wasserstein2, spread
from .targets import (
    FullCovarianceMixture,
    GaussianMixture,
    MixtureModel,
    QuadraticReward,
    as_full_covariance,
    mixture_2d,
    mixture_nd,
)
from .targets.posterior import mixture_posterior

__all__ = [
    "PROBLEMS",
    "PROBLEM_TARGETS",
    "METHODS",
    "PosteriorProblem",
    "MethodRun",
    "PosteriorRow",
    "posterior_problem",
    "available_methods",
    "run_method",
    "compare_posterior",
    "format_posterior_table",
]

PROBLEMS = ("inpaint", "inpaint_noiseless", "linear", "linear_noiseless", "reward")
PROBLEM_TARGETS = ("2d", "64d")
SOLVER = "ddpm"
SPACING = "logsnr"  # the SMC engine's default: the one-chain and the particle methods share their 20-step chain
F64 = torch.float64
NOISE = {("inpaint", 2): 0.1, ("inpaint", 64): 0.2, ("linear", 2): 0.2, ("linear", 64): 0.5}
NOISE |= {(f"{kind}_noiseless", d): 0.0 for kind in ("inpaint", "linear") for d in (2, 64)}
REWARD_Q = {2: 1.0, 64: 0.1}
#: ``fk_gradient``'s ``FKSteering(..., gradient=True, gradient_scale=...)`` (``benchmarks/posterior.py`` sets it)
FK_GRADIENT_SCALE = 1.0


@dataclass(frozen=True)
class PosteriorProblem:
    """A prior, a measurement (or a reward) and the exact posterior (or tilt) ``exact``."""

    kind: str
    target: str
    prior: GaussianMixture
    exact: FullCovarianceMixture
    measurement: Measurement | None = None
    reward: QuadraticReward | None = None

    @property
    def dim(self) -> int:
        return self.prior.dim

    def log_potential(self, x0: Tensor) -> Tensor:
        """The log-likelihood of the measurement, or ``scale * r(x)``, per sample ``(N,)``."""
        if self.measurement is not None:
            return self.measurement.log_likelihood(x0)
        assert self.reward is not None
        return self.reward.scale * self.reward(x0)

    def score(self, x: Tensor) -> Tensor:
        """The table's last column per sample: the reward, the log-likelihood, or for a noiseless measurement the
        largest observed error ``max |A x - y|``."""
        if self.reward is not None:
            return self.reward(x)
        assert self.measurement is not None
        if self.measurement.noiseless:
            return self.measurement.residual(x).flatten(1).abs().amax(1)
        return self.measurement.log_likelihood(x)

    @property
    def score_name(self) -> str:
        """The name of :meth:`score` in the table."""
        if self.reward is not None:
            return "reward"
        assert self.measurement is not None
        return "max |Ax-y|" if self.measurement.noiseless else "log-lik"


def _closest_pair_midpoint(prior: GaussianMixture, a: Tensor) -> Tensor:
    z = prior.means @ a.T
    d = torch.cdist(z, z)
    d.fill_diagonal_(math.inf)
    i = int(torch.argmin(d.min(1).values))
    j = int(torch.argmin(d[i]))
    return 0.5 * (prior.means[i] + prior.means[j])


def posterior_problem(kind: str, target: str = "2d", seed: int = 0) -> PosteriorProblem:
    """The problem ``kind`` (one of :data:`PROBLEMS`) on ``target`` (``"2d"``: the default 2-D mixture, ``"64d"``:
    :func:`~fewstep.bench.targets.mixture_nd`), its random mask or matrix drawn from ``seed`` (module docstring)."""
    if kind not in PROBLEMS:
        raise ValueError(f"posterior: choose one of {', '.join(PROBLEMS)}, got {kind!r}")
    if target not in PROBLEM_TARGETS:
        raise ValueError(f"target: choose one of {', '.join(PROBLEM_TARGETS)} for a posterior problem, got {target!r}")
    prior = mixture_2d() if target == "2d" else mixture_nd(64)
    d = prior.dim
    gen = torch.Generator().manual_seed(seed)
    if kind == "reward":
        c = _closest_pair_midpoint(prior, torch.eye(d, dtype=F64))
        q = REWARD_Q[d]
        reward = QuadraticReward(q * torch.eye(d, dtype=F64), q * c, 1.0)
        return PosteriorProblem(kind, target, prior, reward.tilt(prior), reward=reward)
    noise = NOISE[(kind, d)]
    measurement: Measurement
    if kind.startswith("inpaint"):
        mask = torch.zeros(d, dtype=F64)
        mask[torch.randperm(d, generator=gen)[: max(1, d // 2)]] = 1.0
        x_star = _closest_pair_midpoint(prior, torch.eye(d, dtype=F64)[mask.bool()])
        measurement = Mask(y=(mask * x_star)[None], noise_std=noise, mask=mask)
    else:
        a = torch.randn(max(1, d // 2), d, generator=gen, dtype=F64) / math.sqrt(d)
        x_star = _closest_pair_midpoint(prior, a)
        measurement = Linear(y=(x_star @ a.T)[None], noise_std=noise, A=a)
    return PosteriorProblem(kind, target, prior, mixture_posterior(prior, measurement), measurement=measurement)


@dataclass(frozen=True)
class MethodRun:
    """One method's samples ``(N, D)`` and its network calls / backward passes per sample chain (per particle)."""

    samples: Tensor
    network: int
    backward: int


Runner = Callable[[PosteriorProblem, int, int, int, int], MethodRun]  # problem, n, particles, nfe, seed


def _noise(n: int, shape: tuple[int, ...], seed: int) -> Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _model(problem: PosteriorProblem, differentiable: bool) -> MixtureModel:
    """The prior's exact denoiser as a network; ``differentiable``: the full-covariance form, whose output keeps
    the autograd graph of its input (for guidance through the network and twisting)."""
    prior = as_full_covariance(problem.prior) if differentiable else problem.prior
    return prior.model(VP(), "epsilon")


def _chain(problem: PosteriorProblem, n: int, nfe: int, seed: int, **options: object) -> MethodRun:
    schedule = VP()
    calls = CallCount()
    x = sample(
        _model(problem, "guidance" in options),
        _noise(n, (problem.dim,), seed),
        schedule,
        SOLVER,
        nfe=nfe,
        spacing=SPACING,
        calls=calls,
        generator=torch.Generator().manual_seed(seed + 1),
        **options,  # type: ignore[arg-type]
    )
    return MethodRun(x.detach(), calls.network, calls.backward)


def _run_prior(problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int) -> MethodRun:
    return _chain(problem, n, nfe, seed)


def _run_dps(problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int) -> MethodRun:
    rule = LossGuidance(lambda x0: -problem.log_potential(x0), scale=1.0)
    return _chain(problem, n, nfe, seed, guidance=rule)


def _posterior_attr(module: str, name: str) -> object | None:
    try:
        return getattr(importlib.import_module(f"fewstep.posterior{module}"), name, None)
    except ImportError:
        return None


def _run_pigdm(problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int) -> MethodRun:
    rule = _posterior_attr("", "PiGDM") or _posterior_attr(".pigdm", "PiGDM")
    assert callable(rule)
    return _chain(problem, n, nfe, seed, guidance=rule(problem.measurement))


def _one_per_prompt(out: Any, calls: CallCount, gen: torch.Generator) -> MethodRun:
    """One particle per prompt of a particle method's weighted result, drawn by weight."""
    pick = torch.multinomial(out.weights.to(F64), 1, generator=gen)[:, 0]
    x = out.samples[torch.arange(out.samples.shape[0]), pick].detach()
    return MethodRun(x, calls.network, calls.backward)


def _smc(problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int, potential: object) -> MethodRun:
    smc = _posterior_attr(".smc", "smc")
    assert callable(smc)
    schedule = VP()
    calls = CallCount()
    gen = torch.Generator().manual_seed(seed + 1)
    out = smc(
        _model(problem, True),
        _noise(n, (particles, problem.dim), seed),
        schedule,
        potential,
        nfe=nfe,
        generator=gen,
        calls=calls,
    )
    return _one_per_prompt(out, calls, gen)


def _run_inpaint_smc(
    problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int, name: str = "inpaint_smc"
) -> MethodRun:
    run = _posterior_attr(".smc", name)
    assert callable(run)
    calls = CallCount()
    gen = torch.Generator().manual_seed(seed + 1)
    noise = _noise(n, (particles, problem.dim), seed)
    out = run(_model(problem, False), noise, VP(), problem.measurement, nfe=nfe, generator=gen, calls=calls)
    return _one_per_prompt(out, calls, gen)


def _run_linear_smc(problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int) -> MethodRun:
    return _run_inpaint_smc(problem, n, particles, nfe, seed, "linear_smc")


def _run_projection(problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int) -> MethodRun:
    rule = _posterior_attr("", "Projection")
    assert callable(rule)
    return _chain(problem, n, nfe, seed, wrappers=[rule(problem.measurement)])


def _run_tds(problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int) -> MethodRun:
    tds = _posterior_attr(".smc", "TDS")
    assert callable(tds)
    return _smc(problem, n, particles, nfe, seed, tds(problem.measurement))


def _run_driftlite(problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int) -> MethodRun:
    driftlite = _posterior_attr(".smc", "driftlite")
    assert callable(driftlite)
    reward: Callable[[Tensor], Tensor]
    if problem.reward is not None:
        reward, lam = problem.reward, problem.reward.scale
    else:
        assert problem.measurement is not None
        reward, lam = problem.measurement.log_likelihood, 1.0
    calls = CallCount()
    gen = torch.Generator().manual_seed(seed + 1)
    out = driftlite(
        _model(problem, True),
        _noise(n, (particles, problem.dim), seed),
        VP(),
        reward,
        nfe=nfe,
        generator=gen,
        lam=lam,
        calls=calls,
    )
    return _one_per_prompt(out, calls, gen)


def _run_fk(
    problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int, gradient: bool = False
) -> MethodRun:
    fk = _posterior_attr(".smc", "FKSteering")
    assert callable(fk) and problem.reward is not None
    options = {"gradient": True, "gradient_scale": FK_GRADIENT_SCALE} if gradient else {}
    return _smc(problem, n, particles, nfe, seed, fk(problem.reward, lam=problem.reward.scale, **options))


def _run_fk_gradient(problem: PosteriorProblem, n: int, particles: int, nfe: int, seed: int) -> MethodRun:
    return _run_fk(problem, n, particles, nfe, seed, gradient=True)


@dataclass(frozen=True)
class Method:
    """A method: its runner, the problems it applies to, whether it uses particles, and what it needs to import."""

    run: Runner
    kinds: tuple[str, ...]
    particles: bool = False
    needs: tuple[tuple[str, str], ...] = field(default_factory=tuple)


METHODS: dict[str, Method] = {
    "prior": Method(_run_prior, PROBLEMS),
    "dps": Method(_run_dps, ("inpaint", "linear", "reward")),
    "pigdm": Method(_run_pigdm, ("inpaint", "inpaint_noiseless", "linear", "linear_noiseless"), needs=(("", "PiGDM"),)),
    "projection": Method(_run_projection, ("inpaint_noiseless", "linear_noiseless"), needs=(("", "Projection"),)),
    "tds": Method(_run_tds, ("inpaint", "linear"), particles=True, needs=((".smc", "smc"), (".smc", "TDS"))),
    "inpaint_smc": Method(
        _run_inpaint_smc, ("inpaint", "inpaint_noiseless"), particles=True, needs=((".smc", "inpaint_smc"),)
    ),
    "linear_smc": Method(
        _run_linear_smc, ("linear", "linear_noiseless"), particles=True, needs=((".smc", "linear_smc"),)
    ),
    "fk_steering": Method(_run_fk, ("reward",), particles=True, needs=((".smc", "smc"), (".smc", "FKSteering"))),
    "fk_gradient": Method(
        _run_fk_gradient, ("reward",), particles=True, needs=((".smc", "smc"), (".smc", "FKSteering"))
    ),
    "driftlite": Method(_run_driftlite, ("reward",), particles=True, needs=((".smc", "driftlite"),)),
}


def available_methods(kind: str) -> list[str]:
    """The methods that apply to problem ``kind`` and whose ``fewstep.posterior`` parts import."""
    return [
        name
        for name, m in METHODS.items()
        if kind in m.kinds and all(_posterior_attr(mod, attr) is not None for mod, attr in m.needs)
    ]


def run_method(
    name: str, problem: PosteriorProblem, n: int, particles: int = 1, nfe: int = 20, seed: int = 0
) -> MethodRun:
    """``n`` samples of method ``name`` on ``problem`` (``particles`` per sample for a particle method)."""
    if name not in METHODS:
        raise ValueError(f"method: choose one of {', '.join(METHODS)}, got {name!r}")
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise ValueError(f"particles: must be an integer >= 1, got {particles!r}")
    return METHODS[name].run(problem, n, particles, nfe, seed)


@dataclass(frozen=True)
class PosteriorRow:
    """One method at one particle count: its metrics over replicates against the exact posterior.

    ``weight_l1``: :func:`~fewstep.bench.metrics.component_weight_error` (L1); ``sw2``: sliced W2 to ``n`` fresh
    exact samples; ``mmd``: squared MMD to them; ``reward``: mean ``log_potential`` of the samples (the reward
    problem: ``r``); NFE counted per chain (network calls + backward passes).
    """

    method: str
    particles: int
    nfe: int
    weight_l1: Spread
    sw2: Spread
    mmd: Spread
    reward: Spread


def _metrics(problem: PosteriorProblem, x: Tensor, seed: int) -> tuple[float, float, float, float]:
    ref = problem.exact.sample(x.shape[0], torch.Generator().manual_seed(10_000 + seed))
    pot = problem.score(x)
    return (
        component_weight_error(x, problem.exact).l1,
        sliced_wasserstein2(x, ref),
        mmd(x, ref),
        float(pot.mean()),
    )


def compare_posterior(
    problem: PosteriorProblem,
    methods: list[str] | None = None,
    particles: tuple[int, ...] = (1, 4),
    nfe: int = 20,
    n: int = 256,
    replicates: int = 1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[PosteriorRow], PosteriorRow]:
    """Every method (default: :func:`available_methods`) at ``nfe``, particle methods at each of ``particles``, over
    ``replicates`` seeds; and the ``exact`` row: exact samples of the same size against fresh exact samples."""
    names = available_methods(problem.kind) if methods is None else methods
    rows = []
    for name in names:
        ks = particles if METHODS[name].particles else (1,)
        for k in ks:
            values, cost = [], 0
            for r in range(replicates):
                run = run_method(name, problem, n, k, nfe, seed + 1000 * r)
                values.append(_metrics(problem, run.samples, seed + r))
                cost = run.network + run.backward
            rows.append(PosteriorRow(name, k, cost, *(spread(v) for v in zip(*values, strict=True))))
            if progress is not None:
                progress(f"{name} K={k}")
    exact = _exact_row(problem, n, replicates, seed)
    return rows, exact


def _exact_row(problem: PosteriorProblem, n: int, replicates: int, seed: int) -> PosteriorRow:
    target = problem.exact

    def pot(x: Tensor, _y: Tensor) -> float:
        return float(problem.score(x).mean())

    return PosteriorRow(
        "exact",
        1,
        0,
        exact_spread(lambda x, _y: component_weight_error(x, target).l1, target, n, replicates, seed),
        exact_spread(sliced_wasserstein2, target, n, replicates, seed),
        exact_spread(mmd, target, n, replicates, seed),
        exact_spread(pot, target, n, replicates, seed),
    )


def _cell(s: Spread) -> str:
    return f"{s.mean:.4f}" if s.stderr == 0.0 else f"{s.mean:.4f} ± {s.stderr:.4f}"


def format_posterior_table(rows: list[PosteriorRow], exact: PosteriorRow, reward_name: str = "log-lik") -> str:
    """A text table: method, K, NFE per chain, weight L1, sliced W2, MMD, mean reward (mean ± standard error)."""
    head = ("method", "K", "NFE", "weight L1", "sliced W2", "MMD^2", f"mean {reward_name}")
    body = [
        (r.method, str(r.particles), str(r.nfe), _cell(r.weight_l1), _cell(r.sw2), _cell(r.mmd), _cell(r.reward))
        for r in [*rows, exact]
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
