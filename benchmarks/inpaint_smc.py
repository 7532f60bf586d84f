"""``inpaint_smc``'s (and ``linear_smc``'s) design choices on the posterior problems (docs/posterior.md).

On a ``fewstep compare --posterior`` problem (``--problem``, default ``inpaint_noiseless``: a random half of the
coordinates observed exactly; ``linear_noiseless`` / ``linear`` / ``inpaint`` run ``linear_smc`` or ``inpaint_smc`` as
they apply) on the 2-D and the 64-D mixture (``--targets``), K particles per prompt at NFE 20, one particle per prompt
drawn by weight, with the twist's stand-in prior (``data_std`` 1, or none), the resampling rule (never;
``ess_threshold=0.5`` at every step; the same raised at high noise) and the spacing (logSNR, or ``time_quadratic``,
more nodes near the clean end) varied. Metrics as ``benchmarks/posterior.py``'s (the same seeds, so the default row
repeats its row), plus the final ESS / K.

Usage: ``python benchmarks/inpaint_smc.py [--problem inpaint_noiseless] [--targets 64d,2d] [--particles 64]
[--replicates 5] [--samples 256]``
"""

from __future__ import annotations

import argparse

import torch

from fewstep import VP
from fewstep.bench import posterior_compare as pc
from fewstep.bench.metrics import spread
from fewstep.posterior.smc import inpaint_smc, linear_smc

VARIANTS: dict[str, dict[str, object]] = {
    "default (data_std=1, no resampling)": {},
    "data_std=None": {"data_std": None},
    "ess_threshold=0.5, constant": {"ess_threshold": 0.5},
    "ess_threshold=0.5, noise schedule": {"ess_threshold": 0.5, "resample_schedule": "noise"},
    "spacing=time_quadratic": {"spacing": "time_quadratic"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="inpaint_noiseless", choices=[p for p in pc.PROBLEMS if p != "reward"])
    parser.add_argument("--targets", default="64d,2d")
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, k = args.samples, args.particles
    run = linear_smc if args.problem.startswith("linear") else inpaint_smc
    for target in args.targets.split(","):
        problem = pc.posterior_problem(args.problem, target)
        print(f"\n### {args.problem} ({run.__name__}), {target}, K = {k}, NFE 20, {args.replicates} x {n}\n")
        print("| variant | weight L1 | sliced W2 | MMD^2 | final ESS / K |")
        print("|---|---|---|---|---|")
        for name, options in VARIANTS.items():
            values, ess = [], []
            for r in range(args.replicates):
                seed = 1000 * r  # benchmarks/posterior.py's seeds
                gen = torch.Generator().manual_seed(seed + 1)
                noise = pc._noise(n, (k, problem.dim), seed)
                out = run(pc._model(problem, False), noise, VP(), problem.measurement, nfe=20, generator=gen, **options)  # type: ignore[arg-type]
                pick = torch.multinomial(out.weights.to(torch.float64), 1, generator=gen)[:, 0]
                values.append(pc._metrics(problem, out.samples[torch.arange(n), pick], r)[:3])
                ess.append(float(out.ess[-1].mean()) / k)
            cells = [spread(v) for v in zip(*values, strict=True)]
            text = " | ".join(f"{c.mean:.4f} ± {c.stderr:.4f}" for c in cells)
            print(f"| {name} | {text} | {sum(ess) / len(ess):.3f} |", flush=True)


if __name__ == "__main__":
    main()
