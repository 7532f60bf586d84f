"""``fewstep mcmc``: Langevin samplers side by side on a target with known answers (torch is imported when it runs).

It runs :func:`fewstep.bench.mcmc_compare.compare_samplers` and prints the Markdown table: ESS (bulk, tail) per
gradient evaluation, split R-hat, acceptance, moment errors and W2/MMD to exact samples, with blackjax's NUTS and
MALA alongside when blackjax is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["MCMC_TARGETS", "DEFAULT_SAMPLERS", "mcmc"]

#: The targets of ``fewstep mcmc`` (kept here so that ``--help`` imports no torch; a test checks they agree with
#: ``fewstep.bench.targets.densities.DENSITY_TARGETS``).
MCMC_TARGETS = ("gaussian", "gaussian_diag", "mixture", "funnel", "banana", "logistic_regression")
DEFAULT_SAMPLERS = "mala,baoab,randomized_midpoint"
#: the samplers that take ``warmup_tolerance`` (kinetic Langevin's schemes)
KINETIC_SAMPLERS = ("kinetic", "baoab", "obabo", "randomized_midpoint")


@click.command()
@click.option("--target", default="gaussian", show_default=True, type=click.Choice(MCMC_TARGETS), help="Target.")
@click.option("--dim", default=None, type=click.IntRange(1), help="Dimension, where the target has a choice.")
@click.option(
    "--samplers",
    default=DEFAULT_SAMPLERS,
    show_default=True,
    metavar="NAMES",
    help="Comma-separated fewstep.langevin sampler names (ula, mala, baoab, obabo, randomized_midpoint, ...).",
)
@click.option(
    "--peers/--no-peers",
    default=None,
    help="Run blackjax's NUTS and MALA alongside.  [default: on when blackjax is importable]",
)
@click.option("--chains", default=4, show_default=True, type=click.IntRange(2), help="Chains per sampler.")
@click.option("--draws", default=1000, show_default=True, type=click.IntRange(4), help="Kept draws per chain.")
@click.option("--warmup", default=500, show_default=True, type=click.IntRange(1), help="Warm-up iterations.")
@click.option(
    "--warmup-tolerance",
    default=None,
    type=click.FloatRange(0.0, min_open=True),
    metavar="FLOAT",
    help="Kinetic samplers: warm up past --warmup until the diagonal mass settles within this RMS log change "
    "(docs/langevin.md's tables use 0.4).  [default: exactly --warmup iterations]",
)
@click.option(
    "--match-budget/--no-match-budget",
    default=True,
    show_default=True,
    help="Give the fewstep samplers NUTS's gradient evaluations per chain (needs the peers).",
)
@click.option(
    "--reference",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON reference moments for logistic_regression (default: the ones shipped with fewstep, from "
    "benchmarks/langevin_reference.py).",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Seed of starts and noise.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the rows as JSON here.")
def mcmc(
    target: str,
    dim: int | None,
    samplers: str,
    peers: bool | None,
    chains: int,
    draws: int,
    warmup: int,
    warmup_tolerance: float | None,
    match_budget: bool,
    reference: str | None,
    seed: int,
    out: str | None,
) -> None:
    """Run Langevin samplers side by side on a target with known moments and print ESS per gradient evaluation,
    R-hat, acceptance and the errors against the exact answers."""
    import torch

    from .cli import cli_error
    from .mcmc_compare import compare_samplers, markdown_table
    from .mcmc_peers import PEER_SAMPLERS, blackjax_available
    from .targets.densities import LogisticRegression, density_target

    names = [s.strip() for s in samplers.split(",") if s.strip()]
    if not names:
        raise click.BadParameter("give at least one sampler name", param_hint="--samplers")
    if peers is None:
        peers = blackjax_available()
    elif peers and not blackjax_available():
        raise click.UsageError("--peers: blackjax is not importable (pip install blackjax)")
    if peers:
        names += [p for p in PEER_SAMPLERS if p not in names]
    try:
        problem = density_target(target, dim, seed)
        if reference is not None:
            if not isinstance(problem, LogisticRegression):
                raise ValueError("reference: only the logistic_regression target takes reference moments")
            problem.with_reference(reference)
        torch.set_num_threads(min(torch.get_num_threads(), 4))  # small batches: more threads only add overhead
        settle = {} if warmup_tolerance is None else {"warmup_tolerance": warmup_tolerance}
        rows = compare_samplers(
            problem,
            names,
            chains=chains,
            draws=draws,
            warmup=warmup,
            seed=seed,
            match_budget=match_budget and peers,
            options={name: dict(settle) for name in KINETIC_SAMPLERS if settle},
        )
    except ValueError as err:
        raise cli_error(err) from err
    click.echo(f"{problem.name} (d = {problem.dim}), {chains} chains, warm-up {warmup}")
    click.echo(markdown_table(rows))
    if out is not None:
        Path(out).write_text(json.dumps([r.as_dict() for r in rows], indent=1) + "\n", encoding="utf-8")
        click.echo(f"wrote {out}")
