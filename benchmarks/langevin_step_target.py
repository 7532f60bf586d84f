"""How the kinetic samplers' step-size target scales with the dimension: the kept draws are unadjusted, but the
warm-up adapts the step to ``target_accept`` of one Metropolis-adjusted OBABO step, whose energy error sums over the
coordinates (so ``h`` shrinks like ``d^(-1/6)``) while the bias of each coordinate does not grow with ``d``. This
runs one sampler on one target of ``fewstep.bench.targets.densities`` at several ``target_accept`` and the same
gradient budget, and prints bulk and tail ESS per gradient evaluation, split R-hat and the largest relative error
of the variances.

    python benchmarks/langevin_step_target.py                 # randomized midpoint, 1,000-D diagonal Gaussian
    python benchmarks/langevin_step_target.py --target gaussian --dim 100 --budget 30000

Writes benchmarks/results/langevin_step_target.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import fewstep.langevin as L
from fewstep.bench.targets.densities import density_target
from fewstep.langevin.diagnostics import summary

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="gaussian_diag")
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--sampler", default="randomized_midpoint")
    parser.add_argument("--accepts", type=float, nargs="*", default=[0.9, 0.5, 0.2])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--budget", type=int, default=4200, help="gradient evaluations per chain, warm-up included")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mass-estimate", default="fisher", choices=["variance", "fisher"])
    parser.add_argument("--out", type=Path, default=RESULTS / "langevin_step_target.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    density = density_target(args.target, args.dim)
    moments = density.moments()
    x0 = density.initial(args.chains, torch.Generator().manual_seed(args.seed))
    per_step = 2 if args.sampler == "randomized_midpoint" else 1
    lines = [
        f"{args.sampler} on {density.name} (d = {density.dim}), {args.chains} chains, warm-up {args.warmup}, "
        f"{args.budget} gradient evaluations per chain, {args.mass_estimate} mass",
        "",
        "| target_accept | step | friction | ESS bulk / grad | ESS tail / grad | max R-hat | max var err | "
        "guard rejections | s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for accept in args.accepts:
        start = time.perf_counter()
        run = L.sample(density.target(), args.sampler, x0, draws=(args.budget - args.warmup) // per_step,
                       warmup=args.warmup, target_accept=accept, mass_estimate=args.mass_estimate,
                       generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
        seconds = time.perf_counter() - start
        s = summary(run.draws)
        grads = run.gradient_evaluations * args.chains
        var_err = float((s.sd.square() / moments.variance - 1.0).abs().max()) if moments is not None else float("nan")
        step = float(torch.as_tensor(run.step_size).mean())
        rejected = int(run.divergences.sum()) if run.divergences is not None else 0
        lines.append(
            f"| {accept} | {step:.3f} | {run.friction:.3f} | {s.min_ess_bulk / grads:.4f} | "
            f"{s.min_ess_tail / grads:.4f} | {s.max_rhat:.3f} | {var_err:.3f} | {rejected} | {seconds:.0f} |"
        )
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
