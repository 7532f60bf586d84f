"""Why TDS misses the exact posterior where it does: the twist, the proposal, or the resampling? (docs/posterior.md)

On the TDS problems of ``benchmarks/posterior_smc.py`` (``2d``: the default 2-D mixture, ``x_1 = 1.4`` observed with
noise 0.3; ``64d``: the 200-mode 64-D mixture, 16 random projections, noise 0.3) and on ``fewstep compare
--posterior inpaint``'s 64-D problem (``inpaint64``: half the coordinates observed with noise 0.2, ``y`` halfway
between two modes), K = 64 particles per prompt at NFE 20, each configuration of the twist, the proposal and the
resampling schedule is run on the same start noise, and reported with

- ``weight TV``: per prompt, the total variation between the exact component weights and the weighted estimate
  ``sum_k w_k p(component | x_k)``, averaged over prompts and replicates (the exact row of posterior_smc.py:
  0.067 in 2-D, 0 in 64-D);
- ``pooled TV``: the same for the estimate averaged over all prompts first (what one particle per prompt drawn by
  weight estimates, as in ``fewstep compare``);
- the effective sample size ``ESS / K`` at its lowest node and at the end (mean over prompts), and the number of
  resampling events per prompt.

Configurations: the twist variance ``r_t^2`` of ``TDS`` (``gaussian``: ``S^2 q / (S^2 + q)``, ``S = 1``; ``plug-in``:
0; ``tweedie``: Tweedie's covariance) and, as a reference that no method has, the **exact twist** ``log p_t(y |
x_t)`` of the mixture (a sum over its components, each a Gaussian likelihood after the component's own Tweedie
update); the proposal (``first-order``: TDS's shift ``c^2 grad v``; ``product``: the linearised twist times the
prior's step, the default); the resampling threshold (``constant`` 0.5, or ``noise``, the default). The ``chain``
rows give the weights that the K -> infinity limit converges to for the 2-D problem: the 20-step (and 100-step)
proposal chain's own samples (4 x 10^5), weighted by the likelihood.

Usage: ``python benchmarks/posterior_twist.py [--replicates 3] [--out benchmarks/results/posterior_twist.md]``
(about 12 minutes on 2 cores; the exact twist is the slow part).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import fewstep
from fewstep.bench.posterior_compare import posterior_problem
from fewstep.bench.targets import GaussianMixture, mixture_2d, mixture_nd
from fewstep.bench.targets.posterior import FullCovarianceMixture, as_full_covariance, mixture_posterior
from fewstep.posterior import Linear
from fewstep.posterior.smc import TDS, smc
from fewstep.posterior.smc.potentials import PotentialStep
from fewstep.posterior.smc.twist import TwistStep

F64 = torch.float64
SCHED = fewstep.VP()
LINES: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


@dataclass(frozen=True)
class ExactTwist:
    """``log p_t(y | x_t)`` for an isotropic Gaussian-mixture prior and a linear measurement, exactly:
    ``logsumexp_k [log p(k | x_t) + log N(y; A m_k(x_t), s^2 I + v_k A A^T)]``, ``m_k``, ``v_k`` the component's
    Tweedie posterior of ``x0 | x_t``. A measuring device (it needs the prior's components), not a method."""

    prior: GaussianMixture
    measurement: Linear
    gaussian: TDS
    twist: bool = True

    def bind(self, prompts: int, particles: int, like: Tensor) -> ExactTwist:
        return ExactTwist(self.prior, self.measurement, self.gaussian.bind(prompts, particles, like))

    def value(self, x0: Tensor, alpha: float, sigma: float) -> Tensor:
        """At a node without a gradient (the clean end, where it is the likelihood, and the node before the
        deterministic last step): the Gaussian twist; the weights stay exact."""
        return self.gaussian.value(x0, alpha, sigma)

    def step(self, value: Tensor, acc: Tensor, stat: Tensor, final: bool) -> PotentialStep:
        return self.gaussian.step(value, acc, stat, final)

    def value_and_gradient(
        self, leaf: Tensor, x0: Tensor, alpha: float, sigma: float, following: tuple[float, float] | None = None
    ) -> TwistStep:
        mu = self.prior.means.to(leaf)
        s2 = self.prior.stds.to(leaf) ** 2
        a = self.measurement.A.to(leaf)
        y = self.gaussian.measurement.y.to(leaf)
        noise2 = self.measurement.noise_std**2
        tv = alpha**2 * s2 + sigma**2  # Var(x_t | k) per coordinate
        diff = leaf[:, None, :] - alpha * mu[None]
        log_k = self.prior.weights.to(leaf).log() - 0.5 * leaf.shape[1] * tv.log() - diff.square().sum(-1) / (2 * tv)
        log_k = log_k - log_k.logsumexp(1, keepdim=True)
        m = mu[None] + (alpha * s2 / tv)[None, :, None] * diff
        v = s2 * sigma**2 / tv
        eye = torch.eye(a.shape[0], dtype=leaf.dtype)
        chol = torch.linalg.cholesky(noise2 * eye + v[:, None, None] * (a @ a.T)[None])  # (C, m, m)
        r = (y[:, None, :] - m @ a.T).permute(1, 2, 0)  # (C, m, N)
        z = torch.linalg.solve_triangular(chol, r, upper=False)
        logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        ll = (-0.5 * z.square().sum(1) - 0.5 * logdet[:, None]).T  # (N, C)
        val = (log_k + ll).logsumexp(1)
        (g,) = torch.autograd.grad(val.sum(), leaf)
        return TwistStep(val.detach(), g, None)


@dataclass(frozen=True)
class Problem:
    name: str
    prior: GaussianMixture
    measurement: Linear
    exact: FullCovarianceMixture
    prompts: int


def problems(args: argparse.Namespace) -> list[Problem]:
    out = []
    mix = mixture_2d()
    meas = Linear(y=torch.tensor([[1.4]], dtype=F64), noise_std=0.3, A=torch.tensor([[1.0, 0.0]], dtype=F64))
    out.append(Problem("2d", mix, meas, mixture_posterior(mix, meas), args.prompts))
    big = mixture_nd()
    g = torch.Generator().manual_seed(7)
    a = torch.randn(16, big.dim, generator=g, dtype=F64) / math.sqrt(big.dim)
    x = big.sample(1, generator=g)
    meas = Linear(y=x @ a.T + 0.3 * torch.randn(1, 16, generator=g, dtype=F64), noise_std=0.3, A=a)
    out.append(Problem("64d", big, meas, mixture_posterior(big, meas), args.prompts_64d))
    inpaint = posterior_problem("inpaint", "64d")
    assert inpaint.measurement is not None
    mask = inpaint.measurement.mask.bool()  # type: ignore[attr-defined]
    rows = torch.eye(64, dtype=F64)[mask]
    lin = Linear(y=inpaint.measurement.y[:, mask], noise_std=inpaint.measurement.noise_std, A=rows)
    out.append(Problem("inpaint64", inpaint.prior, lin, inpaint.exact, args.prompts_64d))
    return out


Config = tuple[str, Callable[[Problem], object], dict[str, object]]
CONFIGS: list[Config] = [
    ("plug-in, first-order, constant", lambda p: TDS(p.measurement, twist_scale=0.0, optimal_proposal=False), {}),
    ("gaussian, first-order, constant", lambda p: TDS(p.measurement, optimal_proposal=False), {}),
    ("gaussian, product, constant", lambda p: TDS(p.measurement), {}),
    ("gaussian, product, noise (default)", lambda p: TDS(p.measurement), {"resample_schedule": "noise"}),
    ("plug-in, product, noise", lambda p: TDS(p.measurement, twist_scale=0.0), {"resample_schedule": "noise"}),
    ("tweedie, product, noise", lambda p: TDS(p.measurement, variance="tweedie"), {"resample_schedule": "noise"}),
    ("exact twist, first-order, constant", lambda p: ExactTwist(p.prior, p.measurement, TDS(p.measurement)), {}),
    (
        "exact twist, first-order, noise",
        lambda p: ExactTwist(p.prior, p.measurement, TDS(p.measurement)),
        {"resample_schedule": "noise"},
    ),
]


def run(problem: Problem, config: Config, nfe: int, reps: int) -> str:
    label, make, extra = config
    kwargs = {"resample_schedule": "constant", **extra}
    model = as_full_covariance(problem.prior).model(SCHED, "epsilon")
    exact = torch.softmax(problem.exact.log_weights, 0)
    tvs, pooled, low, final, events = [], [], [], [], []
    start = time.perf_counter()
    for rep in range(reps):
        g = torch.Generator().manual_seed(1000 * rep + 64)
        noise = torch.randn(problem.prompts, 64, problem.prior.dim, generator=g, dtype=F64)
        r = smc(model, noise, SCHED, make(problem), nfe=nfe, generator=g, **kwargs)  # type: ignore[arg-type]
        b, k = r.log_weights.shape
        resp = problem.exact.responsibilities(r.samples.detach().reshape(b * k, -1)).reshape(b, k, -1)
        est = (r.weights[..., None] * resp).sum(1)
        tvs.append(float((est - exact).abs().sum(1).mean() / 2))
        pooled.append(float((est.mean(0) - exact).abs().sum() / 2))
        ess = r.ess.mean(1) / k
        low.append(float(ess.min()))
        final.append(float(ess[-1]))
        events.append(float(r.resampled.double().sum(0).mean()))
    seconds = time.perf_counter() - start
    cells = [sum(v) / reps for v in (tvs, pooled, low, final, events)]
    return (
        f"| {problem.name} | {label} | {nfe} | {cells[0]:.4f} | {cells[1]:.4f} | {cells[2]:.2f} | {cells[3]:.2f} | "
        f"{cells[4]:.1f} | {seconds:.0f} |"
    )


def chain_limit(problem: Problem, nfe: int, n: int = 100_000, reps: int = 4) -> str:
    """The K -> infinity limit of the particles' component weights: the proposal chain's samples weighted by the
    likelihood (self-normalised importance sampling), against the exact weights (TV)."""
    model = problem.prior.model(SCHED, "epsilon")
    exact = torch.softmax(problem.exact.log_weights, 0)
    total, mass = torch.zeros_like(exact), 0.0
    for rep in range(reps):
        g = torch.Generator().manual_seed(rep)
        x = fewstep.sample(
            model,
            torch.randn(n, problem.prior.dim, generator=g, dtype=F64),
            SCHED,
            "dpmpp_2m_sde",
            nfe=nfe,
            generator=g,
            progress=False,
        )
        lw = problem.measurement.log_likelihood(x)
        w = (lw - lw.max()).exp()
        total += (w[:, None] * problem.exact.responsibilities(x)).sum(0)
        mass += float(w.sum())
    return f"| {problem.name} | chain limit (K -> inf), {n * reps} samples | {nfe} | | {float((total / mass - exact).abs().sum() / 2):.4f} | | | | |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per replicate (2-D)")
    parser.add_argument("--prompts-64d", type=int, default=16, help="prompts per replicate (64-D problems)")
    parser.add_argument("--chain-samples", type=int, default=100_000, help="per replicate (4) of the chain limit")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    emit(
        f"K = 64 particles per prompt, {args.replicates} replicates; 2-D {args.prompts} prompts, 64-D {args.prompts_64d}\n"
    )
    emit(
        "| problem | twist, proposal, resampling | NFE | weight TV | pooled TV | lowest ESS / K | final ESS / K | resamplings | seconds |"
    )
    emit("|---|---|---|---|---|---|---|---|---|")
    probs = problems(args)
    for problem in probs:
        for config in CONFIGS:
            emit(run(problem, config, 20, args.replicates))
    two = probs[0]
    for config in (CONFIGS[3], CONFIGS[7]):
        emit(run(two, config, 100, args.replicates))
    for nfe in (20, 100):
        emit(chain_limit(two, nfe, args.chain_samples))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
