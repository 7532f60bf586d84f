"""The new solver families against DPM-Solver++(2M)/(3M), UniPC and DPM-Solver-v3 at 5-10 NFE on the exact targets.

For each exact 2-D mixture (VP schedule, epsilon model, logSNR spacing, final step to sigma = 0): DPM-Solver-v3's
statistics from exact data samples (``compute_ems``) and DC-Solver's ratios (``compute_dc_ratios``, searched per
NFE on ``--search`` noise samples that are not among the test samples); then every solver runs from the same
test noise and the table gives the RMSE (per coordinate) against the exact PF-ODE solution, with the search's
model evaluations (batched over the search samples) beside it.
Run: python benchmarks/new_solvers.py [--samples 1024] [--search 16] [--seed 0]
Writes benchmarks/results/new_solvers.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fewstep
from fewstep import compute_dc_ratios, compute_ems
from fewstep.bench.targets import mixture_2d, reference_solution_from_time

NFES = (5, 6, 8, 10)
BASELINES = ("dpmpp_2m", "dpmpp_3m", "unipc_bh2", "dpm_solver_v3")
TARGETS = ("default", "wide")
OUT = Path(__file__).resolve().parent / "results" / "new_solvers.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--search", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sched = fewstep.VP()
    columns = (*BASELINES, "dc_solver", "ddim", "conjugate_ddim")
    rows = []
    print("RMSE vs the exact solution (VP, epsilon model, logSNR spacing, final step to sigma = 0)")
    print(f"{'target':8s} {'NFE':>4s} " + " ".join(f"{c:>14s}" for c in columns) + "  DC vs best baseline, search")
    for tname in TARGETS:
        target = mixture_2d(tname)
        gen = torch.Generator().manual_seed(args.seed)
        model = target.model(sched, "epsilon")
        stats = compute_ems(model, sched, data=target.sample(256, gen), n_lambda=32, generator=gen, cache=False)
        search = torch.randn(args.search, target.dim, generator=gen, dtype=torch.float64)
        noise = torch.randn(args.samples, target.dim, generator=gen, dtype=torch.float64)
        ref = reference_solution_from_time(target, noise, sched, sched.t_max)
        for nfe in NFES:
            calls = fewstep.CallCount()
            start = time.perf_counter()
            ratios = compute_dc_ratios(
                model, sched, noise=search, nfe=nfe, prediction="epsilon", cache=False, calls=calls
            )
            seconds = time.perf_counter() - start
            errors = {}
            for name in columns:
                options = {"statistics": stats} if name == "dpm_solver_v3" else {}
                if name == "dc_solver":
                    options = {"ratios": ratios}
                x = fewstep.sample(model, noise, sched, name, nfe=nfe, prediction="epsilon", progress=False, **options)
                errors[name] = float(((x - ref) ** 2).mean().sqrt())
            best = min(errors[b] for b in BASELINES)
            change = errors["dc_solver"] / best - 1.0
            cells = [f"{errors[c]:.4f}{'*' if errors[c] == min(errors.values()) else ' '}" for c in columns]
            print(
                f"{tname:8s} {nfe:4d} " + " ".join(f"{c:>14s}" for c in cells)
                + f"  {change:+.0%}, {calls.nfe} evaluations ({seconds:.1f} s)"
            )  # fmt: skip
            rows.append(
                {"target": tname, "nfe": nfe, "rmse": errors, "dc_ratios": ratios.ratios.tolist(),
                 "dc_search_evaluations": calls.nfe, "dc_vs_best_baseline": change}
            )  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"written to {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT.name}")


if __name__ == "__main__":
    main()
