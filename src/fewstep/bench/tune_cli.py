"""``fewstep tune``: the command line of :func:`fewstep.tune` (torch is imported when it runs).

It tunes a sampler for an embedded target or the user's ``module:function`` model (the convention of ``fewstep
compare --model`` and ``fewstep generate``), writes the :class:`~fewstep.tune.TunedSampler` as JSON, and prints the
held-out errors of the tuned sampler, of the best fixed configuration it started from and of fewstep's default.
"""

from __future__ import annotations

from pathlib import Path

import click

from . import catalog

__all__ = ["tune"]

#: The methods of :func:`fewstep.tune` (kept here so that ``--help`` imports no torch; a test checks they agree).
METHODS = ("auto", "gits", "dmn", "ld3", "search")


@click.command()
@click.option(
    "--model",
    default="default",
    show_default=True,
    metavar="TARGET|MODULE:FUNCTION",
    help="An embedded exact target (image, digits, nd64, default, ring, grid, wide, unbalanced) or a factory "
    "returning (model, schedule, prediction, shape) or a fewstep.bench.user_model.UserModel.",
)
@click.option("--nfe", required=True, type=click.IntRange(1), help="Model evaluations of the tuned sampler.")
@click.option("--method", default="auto", show_default=True, type=click.Choice(METHODS), help="Tuning method.")
@click.option(
    "--budget", default=2000, show_default=True, type=click.IntRange(1), help="Network calls in all (teacher too)."
)
@click.option("--calibration", default=64, show_default=True, type=click.IntRange(1), help="Calibration samples.")
@click.option("--holdout", default=64, show_default=True, type=click.IntRange(1), help="Held-out samples.")
@click.option(
    "--pool",
    default=None,
    type=click.IntRange(2),
    help="Draw a stratified calibration batch of --calibration samples from a pool of this many: the samples that "
    "the best starts send far from the teacher fill up to half of it, each stratum weighted by its share of the "
    "pool (costs time, not calls).  [default: no pool]",
)
@click.option(
    "--solver",
    default=None,
    metavar="NAME",
    help=f"Tune the times of this solver: {', '.join(catalog.solver_names())}.  [default: choose the solver too]",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Seed of the noise and the search.")
@click.option(
    "--loss",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "rmse", "mean_distance"]),
    help="What the optimisers minimise against the teacher (auto: the RMSE from 256 calibration samples on, else "
    "the mean per-sample distance).",
)
@click.option(
    "--coefficients",
    is_flag=True,
    help="Also fit the weights of the tuned sampler's steps to the teacher's trajectory (nfe calls, and nfe to check "
    "them on the held-out noise; kept only where better there).",
)
@click.option(
    "--refine-coefficients",
    is_flag=True,
    help="Fit the weights as --coefficients does, then move them all by gradient descent on the output's error "
    "through the network (half the calls the teacher and the starts leave are kept for it, so give about twice the "
    "budget; kept only where better on the held-out noise).",
)
@click.option(
    "--start",
    "start_path",
    default=None,
    metavar="PATH",
    type=click.Path(exists=True, dir_okay=False),
    help="A per-step sampler's JSON tuned for this model at fewer evaluations: grow it to --nfe (its steps split, "
    "then searched) instead of starting from the fixed configurations.",
)
@click.option(
    "--out", default="tuned.json", show_default=True, type=click.Path(dir_okay=False), help="Where to write the JSON."
)
def tune(
    model: str,
    nfe: int,
    method: str,
    budget: int,
    calibration: int,
    holdout: int,
    pool: int | None,
    solver: str | None,
    seed: int,
    loss: str,
    coefficients: bool,
    refine_coefficients: bool,
    start_path: str | None,
    out: str,
) -> None:
    """Tune the times (and solver) of an NFE-evaluation sampler for one model, against a high-NFE teacher.

    Writes the tuned sampler's JSON to --out (run it with fewstep.sample(..., solver=TunedSampler.load(path)),
    fewstep generate --tuned, or the diffusers scheduler) and prints its error on held-out noise beside the best
    fixed configuration and fewstep's default at the same NFE.
    """
    if solver is not None and solver not in catalog.solver_names():
        raise click.BadParameter(f"unknown solver {solver!r}; `fewstep solvers` lists them", param_hint="--solver")
    import torch

    from ..tune import TunedSampler
    from ..tune import tune as run_tune
    from .generation.models import resolve_model

    try:
        user = resolve_model(model)
    except (TypeError, ValueError) as err:
        raise click.BadParameter(str(err).removeprefix("model: "), param_hint="--model") from err
    start = None
    if start_path is not None:
        try:
            start = TunedSampler.load(start_path, model=user.model, schedule=user.schedule)
        except (TypeError, ValueError) as err:
            raise click.BadParameter(str(err), param_hint="--start") from err
    torch.set_num_threads(max(1, torch.get_num_threads()))
    click.echo(f"tuning {user.name} at NFE {nfe} ({method}, at most {budget} network calls) ...", err=True)
    try:
        tuned = run_tune(
            user.model,
            user.schedule,
            nfe=nfe,
            calibration=calibration,
            holdout=holdout,
            shape=user.shape,
            method=method,
            budget=budget,
            solver=solver,
            prediction=user.prediction,
            time_input=user.time_input,
            seed=seed,
            progress=True,
            loss=loss,
            coefficients="refine" if refine_coefficients else coefficients,
            start=start,
            pool=pool,
        )
    except ValueError as err:
        name, _, rest = str(err).partition(": ")
        hint = (
            f"--{name.replace('_', '-')}"
            if name in ("nfe", "budget", "solver", "method", "seed", "loss", "start", "pool", "calibration")
            else None
        )
        raise click.BadParameter(rest if hint else str(err), param_hint=hint) from err
    tuned.save(Path(out))
    click.echo(summary(tuned))
    click.echo(f"wrote {out}")


def summary(tuned: object) -> str:
    """The printed table: held-out RMSE against the teacher of the tuned sampler, its start and the default."""
    errors: dict[str, float] = getattr(tuned, "errors", {})
    start = getattr(tuned, "start", {}) or {}
    rows = [
        (f"tuned ({tuned.method}: {tuned.solver})", errors.get("holdout")),  # type: ignore[attr-defined]
        (f"{'start' if 'grown_from_nfe' in start else 'best fixed'} ({start.get('solver')}, {start.get('spacing')})",
         errors.get("start_holdout")),
        (f"default ({start.get('default_solver', '?')}, {start.get('default_spacing', '?')})",
         errors.get("default_holdout")),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    best = errors.get("holdout")
    lines = [f"{'sampler':<{width}}  held-out RMSE  / tuned", "-" * (width + 24)]
    for name, value in rows:
        if value is None:
            continue
        ratio = f"{value / best:7.2f}" if best else "    n/a"
        lines.append(f"{name:<{width}}  {value:13.4g}  {ratio}")
    teacher = getattr(tuned, "teacher", {}) or {}
    lines.append(
        f"{tuned.calls} network calls in {tuned.seconds:.1f} s (teacher: "  # type: ignore[attr-defined]
        f"{teacher.get('calls', '?')} calls)"
    )
    if "pool" in start:
        lines.append(f"calibration batch stratified from a pool of {start['pool']} ({start['pool_hard']} hard samples)")
    return "\n".join(lines)
