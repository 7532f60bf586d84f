"""Adaptive step sizes: model evaluations against error for each embedded pair at a few tolerances.

On the default 2-D mixture (VP schedule, epsilon model, rtol = atol = tol, max norm, to t_min): for the ODE
pairs the RMSE against the exact probability-flow ODE solution from the same noise; for every pair (the SDE pair
included) the sliced W2 distance to exact samples. NFE is the total over the batch's run (one step size per batch),
with accepted/rejected step counts.
Run: python benchmarks/adaptive.py [--samples 1024] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

import fewstep
from fewstep.adaptive import METHODS, AdaptiveStats
from fewstep.bench.metrics import sliced_wasserstein2
from fewstep.bench.targets import mixture_2d, reference_solution_from_time

TOLS = (1e-1, 1e-2, 1e-3, 1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    target, schedule = mixture_2d(), fewstep.VP()
    model = target.model(schedule, "epsilon")
    noise = torch.randn(args.samples, 2, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    exact_ode = reference_solution_from_time(target, noise, schedule, schedule.t_max, schedule.t_min)
    exact = target.sample(4096, torch.Generator().manual_seed(args.seed + 1)).double()
    floor = sliced_wasserstein2(target.sample(args.samples, torch.Generator().manual_seed(args.seed + 2)), exact)
    print(f"default 2-D mixture, VP, {args.samples} samples; SW2 between two exact sample sets: {floor:.4f}")
    print(f"{'method':14s} {'tol':>7s} {'NFE':>6s} {'accepted':>9s} {'rejected':>9s} {'RMSE':>10s} {'SW2':>8s}")
    for name, pair in METHODS.items():
        for tol in TOLS:
            if pair.stochastic and tol < 1e-3:
                continue  # Euler-Maruyama's error estimate is O(h^1.5): small tolerances take thousands of steps
            stats = AdaptiveStats()
            x = fewstep.sample_adaptive(
                model, noise, schedule, name, rtol=tol, atol=tol, seed=args.seed, stats=stats, final="t_min"
            )
            rmse = "" if pair.stochastic else f"{float((x - exact_ode).square().mean().sqrt()):.3e}"
            sw2 = sliced_wasserstein2(x, exact)
            print(
                f"{name:14s} {tol:7.0e} {stats.nfe:6d} {stats.accepted:9d} {stats.rejected:9d} {rmse:>10s} {sw2:8.4f}"
            )


if __name__ == "__main__":
    main()
