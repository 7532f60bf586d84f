"""DPM-Solver++(3M): the Taylor-exact second-difference weight against the reference (diffusers) weight.

Prints the RMSE against the exact PF-ODE solution, for both weights, on exact targets x schedules x NFE.
Run: python benchmarks/dpmpp_3m_weight.py [--samples 256] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

import fewstep
from fewstep.bench.targets import digits_target, mixture_2d, reference_solution_from_time
from fewstep.solvers import DPMSolverPP3M

NFES = (5, 6, 8, 10, 15, 20, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    targets = {"default 2-D": mixture_2d(), "wide 2-D": mixture_2d("wide"), "digits": digits_target()}
    schedules = {"vp": fewstep.VP(), "sd": fewstep.DiscreteVP.scaled_linear(), "edm": fewstep.EDM()}
    print("RMSE vs exact, reference weight / taylor weight (the better one marked *), logsnr spacing")
    print(f"{'target':12s} {'schedule':8s} " + " ".join(f"{'NFE ' + str(n):>21s}" for n in NFES))
    for tname, target in targets.items():
        for sname, sched in schedules.items():
            gen = torch.Generator().manual_seed(args.seed)
            n = min(args.samples, 64) if tname == "digits" else args.samples
            noise = torch.randn(n, target.dim, generator=gen, dtype=torch.float64) * float(sched.sigma(sched.t_max))
            ref = reference_solution_from_time(target, noise, sched, sched.t_max)
            model = target.model(sched, "epsilon")
            cells = []
            for nfe in NFES:
                err = []
                for weight in ("reference", "taylor"):
                    x = fewstep.sample(model, noise, sched, DPMSolverPP3M(d2_weight=weight), nfe=nfe)
                    err.append(float(((x - ref) ** 2).mean().sqrt()))
                marks = ["*" if e == min(err) else " " for e in err]
                cells.append(f"{err[0]:.2e}{marks[0]}/{err[1]:.2e}{marks[1]}")
            print(f"{tname:12s} {sname:8s} " + " ".join(f"{c:>21s}" for c in cells))


if __name__ == "__main__":
    main()
