"""Regenerate the compatibility tables of docs/integrations.md (between its ``integrations-*`` marker comments).

1. diffusers: every registered solver in each tiny random pipeline of tests/test_diffusers_pipelines.py (SD,
   image-to-image, inpainting, SDXL, SD3, SD3 with dynamic shifting, Flux): the largest relative difference of the
   pipeline's final latents against ``fewstep.sample`` on the same network, start and times
   (``max |a - b| / max |b|``), and the network evaluations the pipeline made (``!`` where the count differs from
   the reference's, ``error`` where the run raised).
2. k-diffusion / ComfyUI: every name of ``kdiffusion.KSAMPLERS``, the fewstep solver it runs (read from the call it
   makes) and, where k-diffusion has ``sample_<name>``, the largest relative difference against k-diffusion on the
   2-D mixture denoiser (EDM, Karras sigmas 80 -> 0.002 then 0, 10 steps, batch 64, float64, the same noise).

Both read the registry, so solvers and samplers added later appear on a re-run::

    python benchmarks/integrations_table.py            # measure, print and rewrite docs/integrations.md
    python benchmarks/integrations_table.py --no-write # print only
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.integrations import kdiffusion as fk
from fewstep.integrations.kdiffusion import run as fk_run
from fewstep.integrations.kdiffusion import samplers as fk_samplers

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "integrations.md"
F64 = torch.float64


def replace_between(page: str, marker: str, text: str) -> str:
    start, end = f"<!-- {marker}:start -->\n", f"<!-- {marker}:end -->"
    a, b = page.index(start) + len(start), page.index(end)
    return page[:a] + text + page[b:]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


# --- diffusers -------------------------------------------------------------------------------------------------


def pipeline_table(solvers: list[str]) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    import test_diffusers_pipelines as pipes  # the tiny pipelines and the reference run of the tests

    folder = Path(tempfile.mkdtemp(prefix="fewstep-tokenizers-"))
    built = {}
    for name, case in pipes.CASES.items():
        built[name] = case.build(folder)
        built[name].set_progress_bar_config(disable=True)
    names = list(built)
    rows = [
        "| solver | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for solver in solvers:
        cells = []
        for name in names:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    latents, expected, calls, reference, _ = pipes.run_case(built, name, solver)
                mark = "" if calls == reference.nfe else f" ! {reference.nfe}"
                cells.append(f"{rel(latents, expected):.0e} / {calls}{mark}")
            except Exception as err:  # noqa: BLE001 - a cell of the table says the run failed
                cells.append(f"error: {type(err).__name__}")
        rows.append(f"| `{solver}` | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return "\n".join(rows) + "\n"


# --- k-diffusion / ComfyUI -------------------------------------------------------------------------------------


class _SolverSpy:
    """Stands in for ``fewstep.sample`` inside the k-diffusion modules and records the solver each function runs."""

    MODULES = (fk_run, fk_samplers)  # the modules of the k-diffusion package that call fewstep.sample

    def __init__(self) -> None:
        self.real = fk_run.sample
        self.solvers: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        solver = args[3] if len(args) > 3 else kwargs["solver"]
        self.solvers.append(solver if isinstance(solver, str) else solver.name)
        return self.real(*args, **kwargs)


def karras(n: int = 10) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=F64)
    levels = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    return torch.cat([levels, torch.zeros(1, dtype=F64)])


def sampler_table() -> str:
    try:
        from k_diffusion import sampling as ks
    except ImportError:
        ks = None
    denoiser = mixture_2d("default").model(fewstep.EDM(), "sample")

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoiser(x, sigma)

    sigmas = karras()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 80.0

    def noise(sigma: Any, sigma_next: Any) -> torch.Tensor:  # a deterministic function of the interval
        seed = int(1e6 * float(sigma) + 1e3 * float(sigma_next)) % 2**31
        return torch.randn(64, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)

    rows = ["| ComfyUI / k-diffusion name | fewstep solver | max rel. diff. vs k-diffusion |", "|---|---|---|"]
    for name, function in sorted(fk.KSAMPLERS.items()):
        params = inspect.signature(function).parameters
        # sample_dpm_fast / sample_dpm_adaptive take (sigma_min, sigma_max[, n]) and make their own grid
        grid: tuple[Any, ...] = (sigmas,) if "sigmas" in params else (0.002, 80.0, *((10,) if "n" in params else ()))
        options: dict[str, Any] = {"disable": True}
        if "noise_sampler" in params:
            options["noise_sampler"] = noise
        spy = _SolverSpy()
        for module in spy.MODULES:
            module.sample = spy  # type: ignore[attr-defined]
        try:
            torch.manual_seed(1)
            ours = function(model, x, *grid, **options)
        finally:
            for module in spy.MODULES:
                module.sample = spy.real  # type: ignore[attr-defined]
        solver = ", ".join(f"`{s}`" for s in dict.fromkeys(spy.solvers)) or "adaptive (`fewstep.sample_adaptive`)"
        reference = getattr(ks, f"sample_{name}", None) if ks is not None else None
        if reference is None:
            agreement = "ComfyUI only (tests/test_comfyui_samplers.py)"
        else:
            torch.manual_seed(1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = reference(model, x, *grid, **options)
            agreement = f"{rel(ours, theirs):.1e}"
        rows.append(f"| `{name}` | {solver} | {agreement} |")
        print(rows[-1], flush=True)
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; do not rewrite docs/integrations.md")
    parser.add_argument("--solvers", default="", help="comma-separated solvers for the pipeline table (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    began = time.perf_counter()
    solvers = args.solvers.split(",") if args.solvers else sorted(i.name for i in fewstep.solvers.available())
    samplers = sampler_table()
    pipelines = pipeline_table(solvers)
    print(f"measured in {time.perf_counter() - began:.0f} s")
    if not args.no_write:
        page = DOC.read_text()
        page = replace_between(page, "integrations-pipelines", pipelines)
        page = replace_between(page, "integrations-samplers", samplers)
        DOC.write_text(page)


if __name__ == "__main__":
    main()
