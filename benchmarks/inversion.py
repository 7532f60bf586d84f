"""Plain inversion round trips: the relative error of ``sample(invert(x0))`` for every invertible solver.

On the default 2-D mixture (VP schedule, epsilon model, logSNR times, data taken as the state at t_min): for each
solver of ``fewstep.inversion.INVERTIBLE``, NFE 10/20/50 and float64/float32, the relative error
``|sample(invert(x0)) - x0| / |x0|`` with ``final="t_min"``; then the same with classifier-free guidance at scale
7.5 on the class-labelled mixture (its model takes ``y``; -1 is unconditional), one label per sample.
Run: python benchmarks/inversion.py [--samples 256] [--seed 0]
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch

import fewstep
from fewstep.bench.targets import labelled_mixture_2d, mixture_2d
from fewstep.inversion import INVERTIBLE, invert

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    schedule = fewstep.VP()
    mixture = mixture_2d()
    x0 = mixture.sample(args.samples, torch.Generator().manual_seed(args.seed)).to(torch.float64)
    table("default 2-D mixture, VP, no guidance", mixture.model(schedule, "epsilon"), x0, {})
    labelled = labelled_mixture_2d()
    y = torch.arange(args.samples) % labelled.num_classes
    x0 = labelled.sample(y, torch.Generator().manual_seed(args.seed)).to(torch.float64)
    cfg = {"model_kwargs": {"y": y}, "uncond_kwargs": {"y": torch.full_like(y, -1)}, "guidance_scale": 7.5}
    table("class-labelled 2-D mixture, VP, CFG 7.5", labelled.model(schedule, "epsilon"), x0, cfg)


if __name__ == "__main__":
    main()
