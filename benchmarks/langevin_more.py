"""The samplers of docs/langevin.md's "More samplers" against known answers, at equal gradient budgets.

1. Ill-conditioned Gaussians (d = 10, condition number 1e2 and 1e4, a random rotation): ``aldi`` (one ensemble per
   50 chains) against ``ula`` (step 0.5 / largest curvature) and ``mala`` (adapted), 400 chains, 1,000 gradient
   evaluations after 500 of warm-up: the largest error of the whitened covariance and the smallest bulk ESS per
   gradient evaluation (per chain, the draws' ESS summed over chains divided by the chains' gradient evaluations).
2. The default 2-D mixture (9 components) through its exact denoiser (VE schedule): ``annealed_langevin``,
   ``walk_jump`` (1 and 4 measurements) and ``ula`` on the model's score at the smallest level, 2,000 chains, each
   spending about 300 network calls: MMD to exact samples (and between two exact sets), component-weight error.
3. Bayesian linear regression (N = 200, d = 4, conjugate Gaussian posterior): ``sgld`` at batch sizes 10/50/200
   and ``structured_sgmcmc`` with one group per parameter (history: the whole run), 1,000 chains: the error of the mean (in posterior
   standard deviations), the ratio of each sampler's variances to the posterior's (and to the mean-field ones).
4. MYULA on the Laplace density exp(-|x|) (E x^2 = 2): E x^2 as the smoothing lambda and the step fall.

Run: python benchmarks/langevin_more.py [--seed 0]; prints markdown tables, also written to
benchmarks/results/langevin_more.md.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import fewstep
from fewstep.bench.metrics import component_weight_error, mmd
from fewstep.bench.targets import mixture_2d
from fewstep.langevin import L1, DiffusionTarget, MinibatchTarget, Target, sample
from fewstep.langevin.diagnostics import ess_bulk

F64 = torch.float64
LINES: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussians(seed: int) -> None:
    d, chains, warmup, draws = 10, 400, 500, 1000
    emit("\n### Ill-conditioned Gaussians, d = 10, 400 chains, 500 warm-up + 1,000 kept iterations\n")
    emit(
        "| condition | sampler | gradient evals | max whitened-covariance error | min bulk ESS / (chains x gradient evals) | s |"
    )
    emit("|---|---|---:|---:|---:|---:|")
    for condition in (1e2, 1e4):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=F64))
        eig = torch.logspace(0, math.log10(condition), d, dtype=F64)
        cov = q @ torch.diag(eig) @ q.T
        precision = torch.linalg.inv(cov)
        white = torch.linalg.cholesky(precision)
        target = Target.from_log_prob(lambda x, p=precision: -0.5 * ((x @ p) * x).sum(-1))
        x0 = torch.randn(chains, d, generator=gen(seed + 1), dtype=F64) * eig.sqrt().max()
        runs = {
            "aldi": {"ensemble_size": 50},
            "ula": {"step_size": 0.5 / float(eig.reciprocal().max())},
            "mala": {},
        }
        for name, options in runs.items():
            start = time.perf_counter()
            run = sample(target, name, x0, draws=draws, warmup=warmup, generator=gen(seed + 2), **options)
            seconds = time.perf_counter() - start
            w = run.draws @ white  # [chains, draws, d], whitened: identity covariance
            err = float((torch.cov(w.reshape(-1, d).T) - torch.eye(d, dtype=F64)).abs().max())
            per_grad = float(ess_bulk(w).min()) / (run.gradient_evaluations * chains)
            emit(
                f"| {condition:.0e} | {name} | {run.gradient_evaluations} | {err:.3f} | {per_grad:.4f} | {seconds:.1f} |"
            )


def mixture(seed: int) -> None:
    mix = mixture_2d("default")
    schedule = fewstep.VE(0.01, 20.0)
    denoiser = fewstep.Denoiser(mix.model(schedule, "epsilon"), schedule, "epsilon")
    n = 2000
    exact = mix.sample(n, gen(seed + 10))
    spread = mmd(mix.sample(n, gen(seed + 11)), exact)
    emit(f"\n### The default 2-D mixture (9 components), {n} chains; MMD^2 between two exact sets: {spread:.2e}\n")
    emit("| sampler | settings | network calls | MMD^2 to exact | component-weight error (L1) |")
    emit("|---|---|---:|---:|---:|")
    x0 = 3.0 * torch.randn(n, 2, generator=gen(seed), dtype=F64)
    runs = [
        ("annealed_langevin", "6 levels 3 -> 0.05, 50 steps each, c = 1", DiffusionTarget(denoiser),
         {"sigma_max": 3.0, "sigma_min": 0.05, "levels": 6, "steps_per_level": 50, "step_size": 1.0}, 0),
        ("walk_jump", "sigma = 0.3, 300 moves, c = 0.3", DiffusionTarget(denoiser, 0.3),
         {"step_size": 0.3}, 299),
        ("walk_jump", "sigma = 0.3, 4 measurements x 75 moves, c = 0.3", DiffusionTarget(denoiser, 0.3),
         {"step_size": 0.3, "measurements": 4, "steps_per_measurement": 75}, 74),
        ("ula", "model score at sigma = 0.05, h = 0.3 * 0.05^2 ... 300 steps", DiffusionTarget(denoiser, 0.05),
         {"step_size": 0.3 * 0.05**2}, 299),
    ]  # fmt: skip
    for name, settings, target, options, warmup in runs:
        run = sample(target, name, x0, draws=1, warmup=warmup, generator=gen(seed + 1), **options)
        x = run.draws[:, -1]
        weights = component_weight_error(x, mix)
        calls = target.calls.network
        emit(f"| {name} | {settings} | {calls} | {mmd(x, exact):.2e} | {weights.l1:.3f} |")


def regression(seed: int) -> None:
    n, d, noise, tau = 200, 4, 1.0, 3.0
    g = gen(seed + 20)
    mixing = torch.eye(d, dtype=F64) + 0.6 * torch.ones(d, d, dtype=F64)
    x = torch.randn(n, d, generator=g, dtype=F64) @ mixing
    y = x @ torch.linspace(-1.0, 1.0, d, dtype=F64) + noise * torch.randn(n, generator=g, dtype=F64)
    precision = x.T @ x / noise**2 + torch.eye(d, dtype=F64) / tau**2
    cov = torch.linalg.inv(precision)
    mean = cov @ x.T @ y / noise**2

    def log_likelihood(theta: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        xb, yb = batch
        return (-0.5 * (yb - torch.einsum("cnd,cd->cn", xb, theta)) ** 2 / noise**2).sum(-1)

    def log_prior(theta: torch.Tensor) -> torch.Tensor:
        return -0.5 * theta.square().sum(-1) / tau**2

    h = 0.02 / float(torch.linalg.eigvalsh(precision).max())
    warmup = int(5.0 / (h * float(torch.linalg.eigvalsh(precision).min())))
    emit(f"\n### Bayesian linear regression, N = {n}, d = {d}, 1,000 chains, h = {h:.2e}, {warmup} warm-up steps\n")
    emit("| sampler | batch | max mean error / posterior sd | variance / posterior variance | "
         "variance / mean-field variance | datum gradients |")  # fmt: skip
    emit("|---|---:|---:|---|---|---:|")
    x0 = mean + torch.randn(1000, d, generator=gen(seed), dtype=F64) @ torch.linalg.cholesky(cov).T
    mean_field = precision.diagonal().reciprocal()
    for name, batch, options in [
        ("sgld", 10, {}),
        ("sgld", 50, {}),
        ("sgld", n, {}),
        ("structured_sgmcmc", 50, {"groups": d, "history": warmup}),
    ]:
        target = MinibatchTarget(log_likelihood, (x, y), batch_size=batch, log_prior=log_prior)
        run = sample(target, name, x0, draws=1, warmup=warmup, step_size=h, generator=gen(seed + 1), **options)
        z = run.draws[:, 0]
        err = float(((z.mean(0) - mean) / cov.diagonal().sqrt()).abs().max())
        ratio = " ".join(f"{v:.2f}" for v in (z.var(0) / cov.diagonal()).tolist())
        ratio_mf = " ".join(f"{v:.2f}" for v in (z.var(0) / mean_field).tolist())
        emit(f"| {name} | {batch} | {err:.3f} | {ratio} | {ratio_mf} | {target.datum_gradients:.2e} |")


def laplace(seed: int) -> None:
    emit("\n### MYULA on exp(-|x|) (E x^2 = 2), 4,000 chains, 3,000 steps\n")
    emit("| step h | smoothing lambda | E x^2 | error |")
    emit("|---:|---:|---:|---:|")
    target = Target.from_score(lambda x: torch.zeros_like(x))
    x0 = torch.randn(4000, 1, generator=gen(seed), dtype=F64)
    for h, lam in [(0.1, 0.2), (0.05, 0.1), (0.02, 0.04), (0.01, 0.02)]:
        run = sample(target, "myula", x0, draws=1, warmup=2999, step_size=h, generator=gen(seed + 1), prox=L1(),
                     smoothing=lam)  # fmt: skip
        m2 = float(run.draws[:, 0, 0].square().mean())
        emit(f"| {h} | {lam} | {m2:.3f} | {m2 - 2.0:+.3f} |")
    emit("\n(standard error of E x^2 from 4,000 independent draws: about 0.07)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for part in (gaussians, mixture, regression, laplace):
        part(args.seed)
    out = Path(__file__).parent / "results" / "langevin_more.md"
    out.write_text("\n".join(LINES).lstrip() + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
