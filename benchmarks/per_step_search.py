"""The per-step solver search (fewstep.tune.search) against DPM-Solver++(2M) and UniPC-bh2 on exact targets.

For each schedule and NFE: the search runs on a calibration batch with the exact PF-ODE answer as teacher, from
logSNR times, with and without refining the times; printed is the held-out RMSE against the exact answer of the
searched solver and of dpmpp_2m / unipc_bh2 at the logSNR times, the network calls spent and the chosen steps
(order, d/n prediction, l/t scale, + corrector).
Run: python benchmarks/per_step_search.py [--budget 300] [--calibration 128] [--holdout 512] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

import fewstep
from fewstep.bench.targets import mixture_2d, reference_solution_from_time
from fewstep.spacing import model_times
from fewstep.tune.search import search_choices


def rmse(denoiser: fewstep.Denoiser, x: torch.Tensor, exact: torch.Tensor, solver: str, times, **options) -> float:
    out = fewstep.sample(denoiser, x, solver=solver, spacing=torch.as_tensor(times), progress=False, **options)
    return float(torch.sqrt(torch.mean((out - exact) ** 2)))


SETTINGS = {"vp": (fewstep.VP(), "epsilon"), "edm": (fewstep.EDM(), "sample")}
NFES = (5, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--holdout", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    target = mixture_2d("default")
    print(f"default 2-D mixture, budget {args.budget} calls, held-out RMSE vs exact")
    print(
        f"{'schedule':8s} {'NFE':>3s} {'dpmpp_2m':>9s} {'unipc_bh2':>9s} {'search':>9s} {'+times':>9s}  choices (+times)"
    )
    for name, (schedule, prediction) in SETTINGS.items():
        denoiser = fewstep.Denoiser(target.model(schedule, prediction), schedule, prediction)
        g = torch.Generator().manual_seed(args.seed)
        a, s = float(schedule.alpha(schedule.t_max)), float(schedule.sigma(schedule.t_max))
        n = args.calibration + args.holdout
        x = a * target.sample(n, g) + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
        exact = reference_solution_from_time(target, x, schedule, schedule.t_max)
        cal, held = x[: args.calibration], x[args.calibration :]

        for nfe in NFES:
            times = model_times(schedule, nfe, "logsnr").numpy()
            row, picked = [], []
            for refine in (False, True):
                calls = fewstep.CallCount()
                solver, options, found = search_choices(
                    denoiser, None, nfe, cal, exact[: args.calibration], times, args.budget, args.seed,
                    refine_times=refine, calls=calls,
                )  # fmt: skip
                row.append(rmse(denoiser, held, exact[args.calibration :], solver, found, **options))
                picked.append(
                    " ".join(
                        f"{c['order']}{c['prediction'][0]}{c['scale'][0]}{'+' if c['corrector'] else ''}"
                        for c in options["choices"]
                    )
                )
            base = [rmse(denoiser, held, exact[args.calibration :], s, times) for s in ("dpmpp_2m", "unipc_bh2")]
            print(f"{name:8s} {nfe:3d} " + " ".join(f"{v:9.4f}" for v in base + row) + "  " + " | ".join(picked))


if __name__ == "__main__":
    main()
