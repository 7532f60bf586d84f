"""Reference posterior moments of the Bayesian logistic regression target (breast cancer, d = 31).

Long, well-mixed chains independent of the samplers under test: Hamiltonian Monte Carlo (Neal 2011) with a fixed
number of jittered leapfrog steps, in coordinates whitened by the Laplace approximation (``x = mode + L u``,
``L L^T`` the inverse Hessian of -log p at the mode, found by Newton's method), where the posterior is close to
N(0, I). The script reports acceptance, ESS and split R-hat, and writes the mean, variance and the mean's Monte
Carlo standard error to ``src/fewstep/bench/data/langevin_logistic_reference.json`` (shipped with the package).

    python benchmarks/langevin_reference.py [--chains 8] [--draws 50000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewstep.bench.targets.densities import BREAST_CANCER_REFERENCE, LogisticRegression
from fewstep.langevin import diagnostics

OUT = BREAST_CANCER_REFERENCE  # shipped with the package (fewstep/bench/data)
STEP, LEAPFROG = 0.5, 8  # leapfrog step and steps per iteration in the whitened coordinates


def laplace(target: LogisticRegression) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior mode and the Hessian of -log p there (Newton's method)."""
    x, y, s2 = target.features, target.labels, target.prior_scale**2
    beta = torch.zeros(target.dim, dtype=torch.float64)
    for _ in range(50):
        p = torch.sigmoid(x @ beta)
        grad = x.T @ (y - p) - beta / s2
        hess = (x.T * (p * (1 - p))) @ x + torch.eye(target.dim, dtype=torch.float64) / s2
        step = torch.linalg.solve(hess, grad)
        beta = beta + step
        if float(step.abs().max()) < 1e-12:
            break
    return beta, hess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--draws", type=int, default=20_000)
    parser.add_argument("--burn-in", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small batches: one thread is fastest, and not slowed by other processes
    start = time.perf_counter()
    target = LogisticRegression.breast_cancer()
    mode, hess = laplace(target)
    chol = torch.linalg.cholesky(torch.linalg.inv(hess))  # proposal scale L, Sigma = L L^T
    gen = torch.Generator().manual_seed(args.seed)
    c, n, d = args.chains, args.draws, target.dim

    def log_p_and_grad(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(mode + L u) and its gradient in the whitened coordinates u."""
        u = u.detach().requires_grad_(True)
        lp = target.log_prob(mode + u @ chol.T)
        (g,) = torch.autograd.grad(lp.sum(), u)
        return lp.detach(), g

    u = torch.randn(c, d, generator=gen, dtype=torch.float64)
    lp, g = log_p_and_grad(u)
    draws = torch.empty(c, n, d, dtype=torch.float64)
    accepted = torch.zeros(c, dtype=torch.float64)
    for i in range(args.burn_in + n):
        eps = STEP * (0.8 + 0.4 * float(torch.rand((), generator=gen)))  # jittered step (Neal 2011, 5.4.2.2)
        p0 = torch.randn(c, d, generator=gen, dtype=torch.float64)
        un, pn, gn = u, p0 + 0.5 * eps * g, g
        for k in range(LEAPFROG):
            un = un + eps * pn
            lpn, gn = log_p_and_grad(un)
            pn = pn + (eps if k < LEAPFROG - 1 else 0.5 * eps) * gn
        log_ratio = lpn - lp - 0.5 * (pn.square().sum(-1) - p0.square().sum(-1))
        take = torch.log(torch.rand(c, generator=gen, dtype=torch.float64)) < log_ratio
        u = torch.where(take[:, None], un, u)
        lp, g = torch.where(take, lpn, lp), torch.where(take[:, None], gn, g)
        if i >= args.burn_in:
            accepted += take
            draws[:, i - args.burn_in] = mode + u @ chol.T
    summary = diagnostics.summary(draws)
    acceptance = float(accepted.sum()) / (c * n)
    result = {
        "target": target.name,
        "dim": d,
        "prior_scale": target.prior_scale,
        "method": f"HMC ({LEAPFROG} leapfrog steps of {STEP:g}, jittered) whitened by the Laplace approximation",
        "command": "python benchmarks/langevin_reference.py",
        "chains": c,
        "draws": n,
        "burn_in": args.burn_in,
        "seed": args.seed,
        "acceptance": acceptance,
        "min_ess_bulk": summary.min_ess_bulk,
        "min_ess_tail": summary.min_ess_tail,
        "max_split_rhat": summary.max_rhat,
        "mean": summary.mean.tolist(),
        "variance": (summary.sd**2).tolist(),
        "mean_error": summary.mcse_mean.tolist(),
        "laplace_mode": mode.tolist(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    rel = (summary.mcse_mean / summary.sd).max()
    print(
        f"{target.name}: acceptance {acceptance:.3f}, min ESS bulk {summary.min_ess_bulk:.0f}, tail "
        f"{summary.min_ess_tail:.0f}, max R-hat {summary.max_rhat:.4f}, max MCSE/sd {float(rel):.4f}, "
        f"|mean - mode| max {float((summary.mean - mode).abs().max()):.3f} ({time.perf_counter() - start:.0f} s)"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
