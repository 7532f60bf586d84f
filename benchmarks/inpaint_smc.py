"""``inpaint_smc``'s design choices on the noiseless inpainting problems (docs/posterior.md).

On ``fewstep compare --posterior inpaint_noiseless``'s problems (``--targets``: the 2-D and the 64-D mixture, a random
half of the coordinates observed exactly), K particles per prompt at NFE 20, one particle per prompt drawn by weight,
with the twist's stand-in prior (``data_std`` 1, or none) and the resampling rule (never; ``ess_threshold=0.5`` at
every step; the same raised at high noise) varied. Metrics as ``benchmarks/posterior.py``'s (the same seeds, so the
default row repeats its ``inpaint_smc`` row), plus the final ESS / K.

Usage: ``python benchmarks/inpaint_smc.py [--targets 64d,2d] [--particles 64] [--replicates 5] [--samples 256]``
"""

from __future__ import annotations

import argparse

import torch

from fewstep import VP
from fewstep.bench import posterior_compare as pc
from fewstep.bench.metrics import spread
from fewstep.posterior.smc import inpaint_smc

VARIANTS: dict[str, dict[str, object]] = {
    "default (data_std=1, no resampling)": {},
    "data_std=None": {"data_std": None},
    "ess_threshold=0.5, constant": {"ess_threshold": 0.5},
    "ess_threshold=0.5, noise schedule": {"ess_threshold": 0.5, "resample_schedule": "noise"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="64d,2d")
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, k = args.samples, args.particles
    for target in args.targets.split(","):
        problem = pc.posterior_problem("inpaint_noiseless", target)
        print(f"\n### inpaint_noiseless, {target}, K = {k}, NFE 20, {args.replicates} x {n}\n")
        print("| variant | weight L1 | sliced W2 | MMD^2 | final ESS / K |")
        print("|---|---|---|---|---|")
        for name, options in VARIANTS.items():
            values, ess = [], []
            for r in range(args.replicates):
                seed = 1000 * r  # benchmarks/posterior.py's seeds
                gen = torch.Generator().manual_seed(seed + 1)
                noise = pc._noise(n, (k, problem.dim), seed)
                out = inpaint_smc(
                    pc._model(problem, False), noise, VP(), problem.measurement, nfe=20, generator=gen, **options
                )  # type: ignore[arg-type]
                pick = torch.multinomial(out.weights.to(torch.float64), 1, generator=gen)[:, 0]
                values.append(pc._metrics(problem, out.samples[torch.arange(n), pick], r)[:3])
                ess.append(float(out.ess[-1].mean()) / k)
            cells = [spread(v) for v in zip(*values, strict=True)]
            text = " | ".join(f"{c.mean:.4f} ± {c.stderr:.4f}" for c in cells)
            print(f"| {name} | {text} | {sum(ess) / len(ess):.3f} |", flush=True)


if __name__ == "__main__":
    main()
