"""Command line: ``fewstep compare`` (also ``python -m fewstep compare``)."""

from __future__ import annotations

from pathlib import Path

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fewstep")
def main() -> None:
    """fewstep: training-free fast samplers for diffusion and flow-matching models."""


def _ints(_ctx: click.Context, _param: click.Parameter, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as err:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from err
    if not out or any(v < 1 for v in out):
        raise click.BadParameter("NFE values must be positive integers")
    return out


@main.command()
@click.option(
    "--target",
    default="default",
    show_default=True,
    type=click.Choice(["default", "ring", "grid", "wide", "digits"]),
    help="Exact target: embedded 2-D mixtures, or the scikit-learn digits as a mixture of 1,797 narrow Gaussians.",
)
@click.option(
    "--schedule",
    default="vp",
    show_default=True,
    type=click.Choice(["vp", "cosine", "ddpm", "sd", "edm", "flow"]),
    help="Noise schedule of the (exact) model.",
)
@click.option("--nfe", "nfes", default="5,10,20,50", show_default=True, callback=_ints, help="Comma-separated NFEs.")
@click.option("--solver", "solvers", multiple=True, help="Solver name (repeatable). Default: every ODE solver.")
@click.option("--spacing", default="logsnr", show_default=True, help="Timestep spacing name.")
@click.option("--prediction", default=None, help="Model output type (default: velocity for flow, else epsilon).")
@click.option("--samples", default=256, show_default=True, type=click.IntRange(1), help="Number of samples.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the start noise.")
@click.option("--out", "out_dir", default="fewstep-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--no-plot", is_flag=True, help="Do not write the PNG plot.")
def compare(
    target: str,
    schedule: str,
    nfes: list[int],
    solvers: tuple[str, ...],
    spacing: str,
    prediction: str | None,
    samples: int,
    seed: int,
    out_dir: str,
    no_plot: bool,
) -> None:
    """Run ODE solvers at several NFEs on an exact target and report their RMSE against the exact solution."""
    from .compare import (
        deterministic_solvers,
        format_table,
        make_schedule,
        make_target,
        plot_errors,
        run_comparison,
        write_csv,
    )

    names = list(solvers) or deterministic_solvers()
    try:
        tgt, sched = make_target(target), make_schedule(schedule)
        pred = prediction or ("velocity" if schedule == "flow" else "epsilon")
        rows, _, _ = run_comparison(
            tgt, sched, names, nfes, spacing=spacing, prediction=pred, samples=samples, seed=seed
        )
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err
    click.echo(
        f"target={target} (dim {tgt.dim}), schedule={schedule}, spacing={spacing}, prediction={pred}, "
        f"samples={samples}, seed={seed}"
    )
    click.echo(format_table(rows, nfes))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "compare.csv")
    click.echo(f"wrote {out / 'compare.csv'}")
    if not no_plot:
        plot_errors(rows, out / "compare.png", f"{target} target, {schedule} schedule, {spacing} spacing")
        click.echo(f"wrote {out / 'compare.png'}")
