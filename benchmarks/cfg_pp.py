"""CFG++ against plain CFG on the exact classifier-free-guided target.

On steps of equal size ``h`` in lambda, DDIM's CFG++ step at ``lam = w (1 - e^{-h})`` is DDIM's CFG step at scale
``w`` (the guidance vector enters ``x_t`` as ``lam (x0_c - x0_u)`` in CFG++ and as ``w (1 - e^{-h}) (x0_c - x0_u)``
through the extrapolated noise in CFG), so CFG++ at that ``lam`` is a discretisation of the same guided
probability-flow ODE. This prints, per solver and NFE, the RMSE of both against that ODE's exact solution
(:class:`~fewstep.bench.targets.GuidedMixture`, from the same noise, to ``t_min``), on the class-labelled 2-D
mixture (every sample of class 0), VP, logSNR spacing.

Run: python benchmarks/cfg_pp.py [--samples 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import torch

import fewstep
from fewstep.bench.targets import labelled_mixture_2d, reference_solution_from_time
from fewstep.guidance import CFGPlusPlus, ClassifierFreeGuidance

SOLVERS = ("ddim", "dpmpp_2m", "res_multistep", "dpmpp_2s", "gradient_estimation")
NFES = (6, 10, 20, 40)
SCALES = (2.0, 4.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sched = fewstep.VP()
    labelled = labelled_mixture_2d()
    model = labelled.model(sched, "epsilon")
    noise = torch.randn(args.samples, 2, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    y, null = torch.zeros(args.samples, dtype=torch.long), torch.full((args.samples,), -1, dtype=torch.long)
    span = float(sched.lambda_(sched.t_min) - sched.lambda_(sched.t_max))
    print("RMSE vs the exact guided PF-ODE at scale w (to t_min): plain CFG(w) / CFG++(lam = w (1 - e^{-h}))")
    print(f"{'w':>4s} {'solver':20s} " + " ".join(f"{'NFE ' + str(n):>21s}" for n in NFES))
    for w in SCALES:
        ref = reference_solution_from_time(labelled.guided(y, w), noise, sched, sched.t_max, sched.t_min)
        for solver in SOLVERS:
            cells = []
            for nfe in NFES:
                steps = nfe // fewstep.solvers.get_solver(solver).nfe_per_step
                lam = w * -math.expm1(-span / steps)
                err = []
                for rule in (ClassifierFreeGuidance(w, {"y": null}), CFGPlusPlus(lam, {"y": null})):
                    x = fewstep.sample(
                        model, noise, sched, solver, nfe=nfe, spacing="logsnr", final="t_min",
                        model_kwargs={"y": y}, guidance=rule,
                    )  # fmt: skip
                    err.append(float((x - ref).square().mean().sqrt()))
                cells.append(f"{err[0]:.2e}/{err[1]:.2e}")
            print(f"{w:4.1f} {solver:20s} " + " ".join(f"{c:>21s}" for c in cells))


if __name__ == "__main__":
    main()
