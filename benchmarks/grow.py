"""Where a few-step sampler sends a trajectory to another mode, and what growing a tuned sampler gives.

1. Under CFG 7.5 on the labelled 64-D mixture (the guidance benchmark's target, schedule and scale), from 2,048
   samples of noise (seed 7, no batch of benchmarks/guidance.py), for tuned samplers of
   ``benchmarks/results/guidance.json`` and UniPC-bh2 on Karras sigmas at NFE 10: after each step, the exact
   probability-flow solve from the sampler's state to the data; the count of samples that end more than 3 (in
   norm) from the exact solution of the start noise is the count of trajectories sent to another mode by then
   (the final counts are the sampler's). The step where the count settles is where the mode is decided.
2. On the unguided default 2-D mixture, an NFE-6 per-step sampler grown from a tuned NFE-4 one
   (``fewstep.tune(..., start=)``) against a fresh NFE-6 tuning (calibration 64, held-out 32, budget 800, seed 0):
   RMSE against the exact solution on 512 samples of noise from seed 9.

Usage: ``python benchmarks/grow.py [--results benchmarks/results/guidance.json]``; writes
``benchmarks/results/grow.md``. About ten minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch

import fewstep
from fewstep.bench.compare import GuidedRun, make_schedule, make_target
from fewstep.bench.targets import mixture_2d, reference_solution_from_time

ROOT = Path(__file__).resolve().parent.parent
SAMPLERS = (  # tuned samplers of the guidance benchmark's 64-D results, by key prefix and NFE
    ("tuned[auto seed 11 hard large]:", 8),
    ("tuned[auto seed 13 hard]:", 10),
    ("tuned[auto seed 11 hard large]:", 10),
    ("tuned[auto seed 11 hard large grown]:", 10),
)
FAR = 3.0  # a sample this far (in norm) from the exact solution went to another mode (the modes are ~10 apart)


def settled(results: dict[str, Any]) -> list[str]:
    target, schedule = make_target("labelled_64d"), make_schedule("sd")
    noise = torch.randn(2048, target.dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    noise = noise * float(schedule.sigma(schedule.t_max))
    run = GuidedRun.of(target, 7.5, noise.shape[0])
    assert run is not None
    guided = run.exact()
    exact = reference_solution_from_time(guided, noise, schedule, schedule.t_max)
    model = target.model(schedule, "epsilon")
    stored = results["cases"]["labelled_64d"]["tuned_samplers"]
    runs: list[tuple[str, dict[str, Any]]] = [("UniPC-bh2, Karras, NFE 10", {"solver": "unipc_bh2", "nfe": 10,
                                                                         "spacing": "karras"})]  # fmt: skip
    for prefix, nfe in SAMPLERS:
        keys = [k for k in stored if k.startswith(prefix) and k.endswith(f"|{nfe}")]
        if keys:
            runs.append((f"`{prefix[6:-2]}`, NFE {nfe}", {"solver": fewstep.TunedSampler.from_dict(stored[keys[0]])}))
    lines = ["| sampler | sent to another mode after each step (exact solve from there) | final RMSE |",
             "| --- | --- | --- |"]  # fmt: skip
    for label, options in runs:
        states: list[tuple[float, torch.Tensor]] = []

        def record(info: dict[str, Any], into: list[tuple[float, torch.Tensor]] = states) -> None:
            into.append((info["t_next"], info["x"]))  # the state after the step, at t_next

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = fewstep.sample(
                model, noise, schedule, progress=False, callback=record, **options, **run.sample_kwargs()
            )
        counts = []
        for t, state in states[:-1]:  # the last state is the sample itself
            y = reference_solution_from_time(guided, state, schedule, t, rtol=1e-9, atol=1e-9)
            counts.append(int(((y - exact).pow(2).sum(1).sqrt() > FAR).sum()))
        counts.append(int(((x - exact).pow(2).sum(1).sqrt() > FAR).sum()))
        rmse = float((x - exact).pow(2).mean().sqrt())
        lines.append(f"| {label} | {' / '.join(map(str, counts))} | {rmse:.4f} |")
        print(lines[-1], flush=True)
    return lines


def grown_2d() -> list[str]:
    schedule, target = fewstep.VP(), mixture_2d()
    model = target.model(schedule, "epsilon")
    options: dict[str, Any] = {"calibration": 64, "holdout": 32, "shape": (2,), "grid": 40, "budget": 800, "seed": 0}
    small = fewstep.tune(model, schedule, nfe=4, **options)
    samplers = {"tuned, NFE 4": small, "grown from it, NFE 6": fewstep.tune(model, schedule, nfe=6, start=small,
                                                                            **options),
                "tuned afresh, NFE 6": fewstep.tune(model, schedule, nfe=6, **options)}  # fmt: skip
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    exact = reference_solution_from_time(target, noise, schedule, schedule.t_max)
    lines = ["| default 2-D mixture, unguided | start | RMSE vs exact |", "| --- | --- | --- |"]
    for label, tuned in samplers.items():
        x = fewstep.sample(model, noise, schedule, solver=tuned, progress=False)
        lines.append(f"| {label} | {tuned.start['spacing']} | {float((x - exact).pow(2).mean().sqrt()):.4f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "guidance.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    text = "\n".join([*settled(json.loads(Path(args.results).read_text())), "", *grown_2d()])
    (ROOT / "benchmarks" / "results" / "grow.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
