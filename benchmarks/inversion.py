"""Plain inversion round trips: the relative error of ``sample(invert(x0))`` for every invertible solver.

On the default 2-D mixture (VP schedule, epsilon model, logSNR times, data taken as the state at t_min): for each
solver of ``fewstep.inversion.INVERTIBLE``, NFE 10/20/50 and float64/float32, the relative error
``|sample(invert(x0)) - x0| / |x0|`` with ``final="t_min"``; then the same with classifier-free guidance at scale
7.5 on the class-labelled mixture (its model takes ``y``; -1 is unconditional), one label per sample. Last, the
fixed-point refinement of each step (``refine=FixedPoint(m)``) for the one-step solvers in float64: the round trip
and the largest reported residual as the corrections per step grow.
``--target learned`` / ``--target digits`` run the plain and fixed-point tables on a trained network instead: the
learned MLP target (``fewstep.bench.targets.learned_target``, trained on the default mixture) or the digits UNet
(``digits_unet_target``, 8 x 8 digits; about 2 minutes of training on first use), both cached after their first
training and unconditional (no CFG rows), with samples of their training data as the data.
Run: python benchmarks/inversion.py [--samples 256] [--seed 0] [--only fixed-point] [--target learned|digits]
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch

import fewstep
from fewstep.bench.targets import digits_unet_target, labelled_mixture_2d, learned_target, mixture_2d
from fewstep.inversion import INVERTIBLE, ONE_STEP, FixedPoint, FixedPointReport, invert

NFES = (10, 20, 50)
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def round_trip(model: Any, x0: torch.Tensor, solver: str, nfe: int, options: Mapping[str, Any]) -> str:
    """The round trip's relative error, or why this NFE cannot be spent by the solver."""
    schedule = fewstep.VP()
    try:
        latent = invert(model, x0, schedule, solver, nfe, **options)
    except ValueError:
        return "n/a"
    back = fewstep.sample(model, latent, schedule, solver, nfe, final="t_min", **options)
    return f"{float((back - x0).norm() / x0.norm()):.1e}"


def table(title: str, model: Any, x0: torch.Tensor, options: Mapping[str, Any]) -> None:
    print(f"\n{title}\n")
    header = " | ".join(f"{d} NFE {n}" for d in DTYPES for n in NFES)
    print(f"| solver | {header} |")
    print("|---" * (1 + len(DTYPES) * len(NFES)) + "|")
    for solver in INVERTIBLE:
        cells = [round_trip(model, x0.to(dtype), solver, nfe, options) for dtype in DTYPES.values() for nfe in NFES]
        print(f"| {solver} | " + " | ".join(cells) + " |", flush=True)


ITERATIONS = (0, 1, 2, 4, 8)


def trained(name: str) -> tuple[Any, Any]:
    """A trained target's network, evaluated in the dtype of its input (float32 or float64 weights), and the
    mixture it was trained on."""
    load = learned_target if name == "learned" else digits_unet_target
    nets = {dtype: load(dtype=dtype).model for dtype in DTYPES.values()}
    return (lambda x, t: nets[x.dtype](x, t)), load().data


def fixed_point_table(title: str, model: Any, x0: torch.Tensor, options: Mapping[str, Any]) -> None:
    """Round trip / largest final residual of ``invert(..., refine=FixedPoint(m))`` per solver, NFE and ``m``."""
    print(f"\n{title}: round trip / largest step residual, float64\n")
    print("| solver | NFE | " + " | ".join(f"{m} corrections" for m in ITERATIONS) + " |")
    print("|---" * (2 + len(ITERATIONS)) + "|")
    schedule = fewstep.VP()
    for solver in ONE_STEP:
        for nfe in NFES:
            cells = []
            for m in ITERATIONS:
                report = FixedPointReport()
                try:
                    latent = invert(model, x0, schedule, solver, nfe, refine=FixedPoint(m), report=report, **options)
                except ValueError:
                    cells.append("n/a")
                    continue
                back = fewstep.sample(model, latent, schedule, solver, nfe, final="t_min", **options)
                err = float((back - x0).norm() / x0.norm())
                cells.append(f"{err:.1e} / {float(report.residual.max()):.1e}")
            print(f"| {solver} | {nfe} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["plain", "fixed-point"], default=None)
    parser.add_argument("--target", choices=["mixture", "learned", "digits"], default="mixture")
    args = parser.parse_args()
    torch.set_num_threads(1)
    schedule = fewstep.VP()
    if args.target != "mixture":
        model, data = trained(args.target)
        x0 = data.sample(args.samples, torch.Generator().manual_seed(args.seed)).to(torch.float64)
        table(f"{args.target} target, VP, no guidance", model, x0, {})
        fixed_point_table(f"fixed-point refinement, {args.target} target", model, x0, {})
        return
    mixture = mixture_2d()
    x0 = mixture.sample(args.samples, torch.Generator().manual_seed(args.seed)).to(torch.float64)
    labelled = labelled_mixture_2d()
    y = torch.arange(args.samples) % labelled.num_classes
    x0_labelled = labelled.sample(y, torch.Generator().manual_seed(args.seed)).to(torch.float64)
    cfg = {"model_kwargs": {"y": y}, "uncond_kwargs": {"y": torch.full_like(y, -1)}, "guidance_scale": 7.5}
    if args.only != "fixed-point":
        table("default 2-D mixture, VP, no guidance", mixture.model(schedule, "epsilon"), x0, {})
        table("class-labelled 2-D mixture, VP, CFG 7.5", labelled.model(schedule, "epsilon"), x0_labelled, cfg)
    if args.only != "plain":
        fixed_point_table("fixed-point refinement, default 2-D mixture", mixture.model(schedule, "epsilon"), x0, {})
        fixed_point_table(
            "fixed-point refinement, class-labelled 2-D mixture, CFG 7.5",
            labelled.model(schedule, "epsilon"),
            x0_labelled,
            cfg,
        )


if __name__ == "__main__":
    main()
