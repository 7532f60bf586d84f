"""Mirror / Bregman proximal Langevin, multiscale annealed Langevin and dropout SG-MCMC against known answers
(docs/langevin.md, "Mirror Langevin, sampling by averaging, dropout SG-MCMC").

1. Dirichlet(alpha) on the simplex, 4,000 chains from the centre, time 3 (3 / h steps): the largest error of the
   means in standard errors, the largest relative error of the variances, and the chains that diverged, for the
   "dual" and "mla" schemes at several steps.
2. A 1-D two-component mixture (weights 0.25 / 0.75 at -2.5 / +2.5, sd 0.5), 4,000 chains from N(0, 5^2):
   the weight found in the right component and the mean error, for "multiscale_annealed" (slow and fast output, two
   epsilons) and for ULA with the same gradient budget and the fast step.
3. A 2-D Gaussian (precision [[1, 0.8], [0.8, 1]]): the variance of "dropout_sgmcmc" at several keep rates and of
   "structured_sgmcmc", against the averaged prediction (D + rho (Lambda - D))^-1 (with ULA's O(h) correction),
   500 chains, 3,000 warm-up steps, history 3,000, 300 kept draws per chain.

Run: python benchmarks/langevin_more_methods.py [--seed 0]; prints markdown tables, also written to
benchmarks/results/langevin_more_methods.md.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import torch

import fewstep
from fewstep.langevin import Target, sample

F64 = torch.float64
LINES: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dirichlet_table(seed: int) -> None:
    alpha = torch.tensor([2.0, 3.0, 5.0], dtype=F64)
    target = Target.from_log_prob(lambda x: ((alpha - 1.0) * x.log()).sum(-1))
    a0 = alpha.sum()
    mean, var = alpha / a0, alpha * (a0 - alpha) / (a0**2 * (a0 + 1.0))
    n = 4000
    emit("| scheme | step h | steps | max mean error (SE) | max variance error | diverged chains | s |")
    emit("|---|---:|---:|---:|---:|---:|---:|")
    for scheme in ("dual", "mla"):
        for h in (0.02, 0.01, 0.005):
            x0 = torch.full((n, 3), 1.0 / 3.0, dtype=F64)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fewstep.DivergenceWarning)
                run = sample(target, "mirror_langevin", x0, draws=1, warmup=int(3 / h), step_size=h,
                             mirror="simplex", scheme=scheme, generator=gen(seed))  # fmt: skip
            seconds = time.perf_counter() - start
            x = run.draws[:, 0]
            ok = torch.isfinite(x).all(-1)
            x = x[ok]
            z = ((x.mean(0) - mean) / (x.std(0) / math.sqrt(x.shape[0]))).abs().max()
            verr = (x.var(0) / var - 1.0).abs().max()
            emit(f"| {scheme} | {h} | {int(3 / h)} | {float(z):.2f} | {float(verr):.3f} | {int((~ok).sum())} | "
                 f"{seconds:.1f} |")  # fmt: skip


def mixture_table(seed: int) -> None:
    weights, means, sd = torch.tensor([0.25, 0.75], dtype=F64), torch.tensor([-2.5, 2.5], dtype=F64), 0.5

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        comp = -0.5 * ((x - means) / sd) ** 2 + weights.log()  # [chains, 2] from x [chains, 1]
        return torch.logsumexp(comp, -1)

    target = Target.from_log_prob(log_prob)
    n = 4000
    x0 = 5.0 * torch.randn(n, 1, generator=gen(seed), dtype=F64)
    exact_mean = float((weights * means).sum())
    emit("| sampler | settings | gradient evals | weight of the right component (exact 0.75) | mean error | s |")
    emit("|---|---|---:|---:|---:|---:|")
    levels, per_level, tail = 8, 150, 300
    budget = levels * per_level + tail + 1
    for epsilon in (0.1, 0.02):
        for output in ("slow", "fast"):
            start = time.perf_counter()
            run = sample(target, "multiscale_annealed", x0, draws=1, warmup=tail, sigma_max=5.0, sigma_min=0.2,
                         levels=levels, steps_per_level=per_level, step_size=min(0.05, epsilon), epsilon=epsilon,
                         fast_step=0.02, output=output, generator=gen(seed + 1))  # fmt: skip
            seconds = time.perf_counter() - start
            x = run.draws[:, 0, 0]
            emit(f"| multiscale_annealed | epsilon {epsilon}, output {output}, levels 5 -> 0.2 | "
                 f"{run.gradient_evaluations} | {float((x > 0).double().mean()):.3f} | "
                 f"{float(x.mean()) - exact_mean:+.3f} | {seconds:.1f} |")  # fmt: skip
    start = time.perf_counter()
    run = sample(target, "ula", x0, draws=1, warmup=budget - 1, step_size=0.02, generator=gen(seed + 1))
    x = run.draws[:, 0, 0]
    emit(f"| ula | h = 0.02 | {run.gradient_evaluations} | {float((x > 0).double().mean()):.3f} | "
         f"{float(x.mean()) - exact_mean:+.3f} | {time.perf_counter() - start:.1f} |")  # fmt: skip


def dropout_table(seed: int) -> None:
    lam = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64)
    target = Target.from_log_prob(lambda x: -0.5 * ((x @ lam) * x).sum(-1))
    h, n = 0.1, 500
    d = torch.diag(lam.diagonal())
    emit("| sampler | keep rho | gradient evals / step | variance | predicted | covariance | predicted | s |")
    emit("|---|---:|---:|---:|---:|---:|---:|---:|")
    runs = [("dropout_sgmcmc", rho) for rho in (1.0, 0.75, 0.5, 0.25)] + [("structured_sgmcmc", 0.0)]
    for name, rho in runs:
        options = {"keep": rho} if name == "dropout_sgmcmc" else {}
        start = time.perf_counter()
        run = sample(target, name, torch.zeros(n, 2, dtype=F64), draws=300, warmup=3000, step_size=h,
                     groups=[[0], [1]], history=3000, generator=gen(seed + 2), **options)  # fmt: skip
        seconds = time.perf_counter() - start
        a = d + rho * (lam - d)
        want = torch.linalg.inv(a - h * a @ a / 2.0)
        got = torch.cov(run.draws.reshape(-1, 2).T)
        per_step = run.gradient_evaluations / 3300
        emit(f"| {name} | {rho} | {per_step:.0f} | {float(got.diagonal().mean()):.3f} | "
             f"{float(want[0, 0]):.3f} | {float(got[0, 1]):.3f} | {float(want[0, 1]):.3f} | {seconds:.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    emit("### Dirichlet(2, 3, 5) on the simplex: mirror_langevin")
    emit()
    dirichlet_table(args.seed)
    emit()
    emit("### A 1-D two-component mixture: multiscale_annealed and ULA")
    emit()
    mixture_table(args.seed)
    emit()
    emit("### A 2-D Gaussian (correlation 0.8 in the precision): dropout_sgmcmc")
    emit()
    dropout_table(args.seed)
    out = Path(__file__).parent / "results" / "langevin_more_methods.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
