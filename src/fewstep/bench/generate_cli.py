"""``fewstep generate``: the command line of :func:`fewstep.generate` (torch is imported when it runs).

Run it as it is for one process, or under torchrun for several (``torchrun --nproc_per_node 8 -m fewstep generate
...``); every process runs the same command.
"""

from __future__ import annotations

import json
from typing import Any

import click

from . import catalog

__all__ = ["generate"]

#: The first word of the core's error messages -> the option it is about.
OPTIONS = {
    "n": "--n",
    "out": "--out",
    "model": "--model",
    "solver": "--solver",
    "tuned": "--tuned",
    "nfe": "--nfe",
    "spacing": "--spacing",
    "seed": "--seed",
    "batch": "--batch",
    "shard_size": "--shard-size",
    "format": "--format",
    "guidance_scale": "--guidance-scale",
    "prediction": "--model",
    "schedule": "--model",
}


def _options(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value is read as JSON when it parses (numbers, true/false), else kept as text."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


@click.command()
@click.option(
    "-n",
    "--n",
    "--samples",
    "n",
    required=True,
    type=click.IntRange(1),
    help="Number of samples (indices 0 .. N-1). Under torchrun write -n or --samples: torchrun reads --n as an "
    "abbreviation of its own options.",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Base seed of every sample's noise.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option(
    "--model",
    default="image",
    show_default=True,
    metavar="TARGET|MODULE:FUNCTION",
    help="An embedded exact target (image, digits, nd64, default, ring, grid, wide, unbalanced) or a factory "
    "returning (model, schedule, prediction, shape) or a fewstep.bench.user_model.UserModel (per-index "
    "conditioning, unconditional branch, data range).",
)
@click.option(
    "--solver",
    default=None,
    metavar="NAME",
    help=f"Solver: {', '.join(catalog.solver_names())}.  [default: the measured default for the schedule and NFE]",
)
@click.option(
    "--option",
    "solver_options",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_options,
    help="A solver option (repeatable), e.g. --option eta=0.5.",
)
@click.option("--tuned", default=None, type=click.Path(dir_okay=False), help="A tuned sampler's JSON (fewstep tune).")
@click.option("--nfe", default=None, type=click.IntRange(1), help="Model evaluations per sample.  [default: 10]")
@click.option("--spacing", default=None, type=click.Choice(catalog.SPACINGS), help="Timestep spacing.")
@click.option("--batch", default=64, show_default=True, type=click.IntRange(1), help="Samples per model call.")
@click.option("--shard-size", default=None, type=click.IntRange(1), help="Samples per shard.  [default: --batch]")
@click.option("--format", "fmt", default="npz", show_default=True, type=click.Choice(["npz", "png"]))
@click.option("--guidance-scale", default=1.0, show_default=True, type=float, help="Classifier-free guidance scale.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float64"]))
@click.option("--layout", default="interleaved", show_default=True, type=click.Choice(["interleaved", "blocked"]))
@click.option("--device", default=None, help="Device.  [default: cuda:LOCAL_RANK when CUDA is available, else cpu]")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def generate(
    n: int,
    seed: int,
    out: str,
    model: str,
    solver: str | None,
    solver_options: dict[str, Any],
    tuned: str | None,
    nfe: int | None,
    spacing: str | None,
    batch: int,
    shard_size: int | None,
    fmt: str,
    guidance_scale: float,
    dtype: str,
    layout: str,
    device: str | None,
    quiet: bool,
) -> None:
    """Generate N samples into --out: resumable, and the same samples for any number of processes.

    Sample i depends on (--seed, i) alone. Writes shards/shard-K.npz (arrays indices and samples) or
    images/I.png per sample (--format png), a record per shard and manifest.json (configuration, versions,
    index ranges, checksums, samples/s). Rerun the same command to complete an interrupted run; a directory
    holding another configuration's run is refused. Under torchrun every process runs this same command
    (gloo on CPU, NCCL on GPUs).
    """
    from .generation import generate as run

    try:
        run(
            n,
            out,
            model=model,
            solver=solver,
            solver_options=solver_options,
            tuned=tuned,
            nfe=nfe,
            spacing=spacing,
            seed=seed,
            batch=batch,
            shard_size=shard_size,
            format=fmt,
            guidance_scale=guidance_scale,
            dtype=dtype,
            layout=layout,
            device=device,
            progress=not quiet,
        )
    except (ValueError, TypeError) as err:
        option, sep, message = str(err).partition(": ")
        if sep and option in OPTIONS:
            raise click.BadParameter(message, param_hint=f"'{OPTIONS[option]}'") from err
        raise click.UsageError(str(err)) from err
