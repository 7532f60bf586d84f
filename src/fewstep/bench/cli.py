"""Command line: ``fewstep compare`` (also ``python -m fewstep compare``)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fewstep")
def main() -> None:
    """fewstep: training-free fast samplers for diffusion and flow-matching models."""


def _ints_or_none(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    return None if value is None else _ints(ctx, param, value)


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
    type=click.Choice(["default", "ring", "grid", "wide", "unbalanced", "nd64", "image", "digits", "learned"]),
    help="Exact target: embedded 2-D mixtures (default, ring, grid, wide, unbalanced), a 64-D mixture (nd64), "
    "a 3x32x32 image mixture (image), the scikit-learn digits as a mixture of 1,797 narrow Gaussians (digits), "
    "or a small trained network (learned: trained once, about 30 s, then cached; its RMSE reference is a "
    "1,000-step DPM-Solver-3 solve of the network, its distribution metrics compare with the training mixture).",
)
@click.option(
    "--schedule",
    default="vp",
    show_default=True,
    type=click.Choice(["vp", "cosine", "ddpm", "sd", "edm", "flow"]),
    help="Noise schedule of the (exact) model; the learned target always uses its own (VP).",
)
@click.option(
    "--nfe", "nfes", default=None, callback=_ints_or_none, help="Comma-separated NFEs.  [default: 5,10,20,50]"
)
@click.option("--solver", "solvers", multiple=True, help="Solver name (repeatable). Default: every solver.")
@click.option("--spacing", default="logsnr", show_default=True, help="Timestep spacing name.")
@click.option("--prediction", default=None, help="Model output type (default: velocity for flow, else epsilon).")
@click.option("--samples", default=None, type=click.IntRange(2), help="Number of samples.  [default: 256]")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the start noise and the SDE noise.")
@click.option("--quick", is_flag=True, help="A fast run: NFE 5,10 and 64 samples (unless given), all solvers.")
@click.option("--out", "out_dir", default="fewstep-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--no-plot", is_flag=True, help="Do not write the PNG plots.")
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option(
    "--peers/--no-peers",
    default=None,
    help="Also run the peer libraries' samplers on the same target, schedule, noise and NFE: k-diffusion "
    "(every schedule) and diffusers (--schedule sd or ddpm), where importable.  [default: on when importable]",
)
def compare(
    target: str,
    schedule: str,
    nfes: list[int] | None,
    solvers: tuple[str, ...],
    spacing: str,
    prediction: str | None,
    samples: int | None,
    seed: int,
    quick: bool,
    out_dir: str,
    no_plot: bool,
    no_report: bool,
    peers: bool | None,
) -> None:
    """Run solvers at several NFEs on an exact target and report their errors.

    ODE solvers: RMSE against the exact solution from the same noise. All solvers (stochastic ones seeded):
    sliced W2, MMD and (mixtures) mode coverage against exact samples of the data distribution; for digits
    also FD-digits (Frechet distance of a small digits classifier's features, not Inception FID). Peer
    libraries (diffusers, k-diffusion) run alongside when importable (--no-peers: not). Writes
    compare.csv, compare.json, compare.png, samples.png (2-D and image targets) and report.html to --out.
    """
    from . import compare as cmp
    from .peers import available_peers
    from .targets import LearnedTarget

    libs = available_peers()
    if peers is None:
        peers = bool(libs)
    elif peers and not libs:
        raise click.UsageError("--peers: neither diffusers nor k-diffusion is importable")

    nfes = nfes or ([5, 10] if quick else [5, 10, 20, 50])
    samples = samples or (64 if quick else 256)
    names = list(solvers) or cmp.all_solvers()
    known = {i.name for i in cmp.available()}
    bad = [n for n in names if n not in known]
    if bad:
        raise click.BadParameter(
            f"unknown solver {bad[0]!r}; choose from {', '.join(sorted(known))}", param_hint="'--solver'"
        )
    try:
        tgt = cmp.make_target(target)
        sched = cmp.make_schedule(schedule)
        pred = prediction or ("velocity" if schedule == "flow" else "epsilon")
        if isinstance(tgt, LearnedTarget):
            sched, pred = tgt.schedule, tgt.prediction
        result = cmp.compare(
            tgt,
            sched,
            names,
            nfes,
            spacing=spacing,
            prediction=pred,
            samples=samples,
            seed=seed,
            progress=True,
            peers=peers,
            schedule_name=None if isinstance(tgt, LearnedTarget) else schedule,
        )
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err
    rows = result.rows
    settings = {
        "target": target,
        "dim": tgt.dim,
        "schedule": "vp (the network's own)" if isinstance(tgt, LearnedTarget) else schedule,
        "spacing": spacing,
        "prediction": pred,
        "samples": samples,
        "seed": seed,
        "nfe": nfes,
        "solvers": names,
        "peers": sorted({r.library for r in rows if r.library != "fewstep"}),
        "reference": "learned_reference (1,000-step DPM-Solver-3)"
        if isinstance(tgt, LearnedTarget)
        else "exact PF-ODE solution (tight-tolerance solve)",
    }
    click.echo(", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("nfe", "solvers", "reference")))
    if any(not r.stochastic for r in rows):
        table = cmp.format_table(rows, nfes, "rmse")
        if isinstance(tgt, LearnedTarget):
            table = table.replace("the exact solution", "learned_reference (1,000-step DPM-Solver-3 of the network)")
        click.echo(table)
        click.echo()
    click.echo(cmp.format_table(rows, nfes, "sw2"))
    if any(not math.isnan(r.fd_digits) for r in rows):
        click.echo()
        click.echo(cmp.format_table(rows, nfes, "fd_digits"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmp.write_csv(rows, out / "compare.csv")
    cmp.write_json(rows, settings, out / "compare.json")
    written = ["compare.csv", "compare.json"]
    images: list[Path] = []
    if not no_plot:
        cmp.plot_errors(
            rows, out / "compare.png", f"{target} target, {settings['schedule']} schedule, {spacing} spacing"
        )
        images.append(out / "compare.png")
        shape: tuple[int, ...] | None = getattr(cmp.data_distribution(tgt), "image_shape", None)
        if tgt.dim == 2 or shape is not None:
            cmp.plot_samples(result, out / "samples.png", min(nfes), None if tgt.dim == 2 else shape)
            images.append(out / "samples.png")
    if not no_report:
        from .report import write_report

        write_report(rows, nfes, settings, images, out / "report.html")
        written.append("report.html")
    written += [p.name for p in images]
    click.echo(f"wrote {', '.join(str(out / w) for w in written)}")
