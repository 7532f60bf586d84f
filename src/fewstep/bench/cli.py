"""Command line: ``fewstep compare`` and ``fewstep solvers`` (also ``python -m fewstep ...``).

The options, their choices and ``fewstep solvers`` come from :mod:`fewstep.bench.catalog`, so that ``--help`` and
the solver list start without importing torch; a command imports the core when it runs.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..options import suggestion
from . import catalog
from .catalog import CONDITIONAL_TARGETS, POSTERIOR_PROBLEMS


@contextmanager
def third_party_warnings_hidden() -> Iterator[None]:
    """Hide the warnings that other packages raise during a command (e.g. "pkg_resources is deprecated" from
    CLIP, which k-diffusion imports): they say nothing about the run and the user cannot act on them. fewstep's
    own warnings are shown, and ``python -W ...`` or ``PYTHONWARNINGS`` settings are left as they are."""
    with warnings.catch_warnings():
        if not sys.warnoptions:
            warnings.filterwarnings("ignore", module=r"(?!fewstep(\.|$))")
        yield


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fewstep")
@click.pass_context
def main(ctx: click.Context) -> None:
    """fewstep: training-free fast samplers for diffusion and flow-matching models."""
    ctx.with_resource(third_party_warnings_hidden())


class NameChoice(click.Choice):
    """A choice among names whose error names the option, the value, the closest name and every name."""

    def __init__(self, choices: Sequence[str], what: str):
        super().__init__(list(choices))
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value in self.choices:
            return value
        names = [str(c) for c in self.choices]
        self.fail(
            f"unknown {self.what} {value!r}{suggestion(value, names)}; choose one of {', '.join(names)}", param, ctx
        )


@main.command()
@click.option("--ode", "kind", flag_value="ode", help="Only the probability-flow ODE solvers.")
@click.option("--stochastic", "kind", flag_value="stochastic", help="Only the stochastic samplers.")
def solvers(kind: str | None) -> None:
    """List the solvers: name, order, NFE per step (model evaluations), stochastic, paper.

    ``fewstep compare --solver NAME`` runs one (repeat it for several); ``fewstep.sample(..., solver=NAME)``
    is the same in Python. docs/solvers.md describes each.
    """
    rows = [s for s in catalog.SOLVERS if kind is None or s.stochastic == (kind == "stochastic")]
    header = ("name", "order", "NFE/step", "stochastic", "paper")
    cells = [(s.name, str(s.order), str(s.nfe_per_step), "yes" if s.stochastic else "no", s.paper) for s in rows]
    width = [max(len(r[i]) for r in [header, *cells]) for i in range(4)]
    for r in [header, *cells]:
        click.echo(f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]:>{width[2]}}  {r[3]:<{width[3]}}  {r[4]}".rstrip())


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
    type=click.Choice(
        [
            "default",
            "ring",
            "grid",
            "wide",
            "unbalanced",
            "nd64",
            "image",
            "digits",
            "learned",
            "digits_unet",
            *CONDITIONAL_TARGETS,
        ]
    ),
    help="Exact target: embedded 2-D mixtures (default, ring, grid, wide, unbalanced), a 64-D mixture (nd64), "
    "a 3x32x32 image mixture (image), the scikit-learn digits as a mixture of 1,797 narrow Gaussians (digits), "
    "or a small trained network (learned: trained once, about 30 s, then cached; its RMSE reference is a "
    "1,000-step DPM-Solver-3 solve of the network, its distribution metrics compare with the training mixture), "
    "or a tiny UNet trained on the digits (digits_unet: trained once, about 2 minutes, then cached; its reference "
    "is a 200-step DPM-Solver-3 solve of the network, its distribution metrics compare with the digits), or a "
    "class-labelled exact target whose network takes labels (labelled_2d: the default 2-D mixture in 4 angle "
    "sectors; labelled_64d: the 64-D mixture in 10 classes; labelled_digits: the digits by digit), run with "
    "--guidance.",
)
@click.option(
    "--schedule",
    default="vp",
    show_default=True,
    type=click.Choice(["vp", "cosine", "ddpm", "sd", "edm", "flow", "mean_reverting"]),
    help="Noise schedule of the (exact) model (mean_reverting: MRS's schedule of the shifted variable x - mu, "
    "here with mu = 0); the learned target always uses its own (VP).",
)
@click.option(
    "--nfe", "nfes", default=None, callback=_ints_or_none, help="Comma-separated NFEs.  [default: 5,10,20,50]"
)
@click.option(
    "--solver",
    "solvers",
    multiple=True,
    metavar="NAME",
    type=NameChoice(catalog.solver_names(), "solver"),
    help=f"Solver (repeatable; default: every solver): {', '.join(catalog.solver_names())}. `fewstep solvers` "
    "lists them with their order, NFE per step and paper.",
)
@click.option(
    "--spacing",
    default="logsnr",
    show_default=True,
    type=NameChoice(catalog.SPACINGS, "spacing"),
    help=f"Timestep spacing; {', '.join(catalog.DISCRETE_SPACINGS)} are diffusers' discrete timesteps "
    "(--schedule sd or ddpm).",
)
@click.option(
    "--prediction",
    default=None,
    type=NameChoice(catalog.PREDICTIONS, "prediction type"),
    help="What the model outputs.  [default: velocity for flow, else epsilon]",
)
@click.option("--samples", default=None, type=click.IntRange(2), help="Number of samples.  [default: 256]")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the start noise and the SDE noise.")
@click.option("--quick", is_flag=True, help="A fast run: NFE 5,10 and 64 samples (unless given), all solvers.")
@click.option("--out", "out_dir", default="fewstep-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--no-plot", is_flag=True, help="Do not write the PNG plots.")
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option(
    "--wall-clock",
    is_flag=True,
    help="Time every run: wall-clock seconds, split into model and solver time, in the tables and files, and the "
    "cost-vs-error plot compare_cost.png (the files are then no longer reproducible byte for byte).",
)
@click.option(
    "--tuned",
    "tuned_files",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="A tuned sampler's JSON (fewstep tune), shown as a row tuned:<file name> at its NFE; repeatable.",
)
@click.option(
    "--peers/--no-peers",
    default=None,
    help="Also run the peer libraries' samplers on the same target, schedule, noise and NFE: k-diffusion "
    "(every schedule) and diffusers (--schedule sd or ddpm), where importable.  [default: on when importable]",
)
@click.option(
    "--model",
    "model_spec",
    default=None,
    metavar="MODULE:FUNCTION|DIR",
    help="Compare on your own network instead of an exact target: an importable function returning (model, "
    "schedule, prediction, shape) or a fewstep.bench.user_model.UserModel, or an unconditional diffusers pipeline "
    "saved to DIR. Errors are RMSE against a teacher (DPM-Solver-3, --teacher-steps steps, from the same noise); "
    "ODE solvers only; 16 samples unless --samples.",
)
@click.option(
    "--guidance",
    default=None,
    type=float,
    metavar="SCALE",
    help="Classifier-free guidance at this scale on a class-labelled target (labelled_2d, labelled_64d, "
    "labelled_digits): every sampler, the peers' included, gets the same labels, null label and scale, and the "
    "RMSE is against the exact solution of the guided probability-flow ODE.  [default: 1, the conditional model]",
)
@click.option(
    "--posterior",
    default=None,
    type=click.Choice(POSTERIOR_PROBLEMS),
    help="Compare posterior samplers against the exact posterior instead: inpaint (a mask of half the coordinates, "
    "noisy), inpaint_noiseless (the same mask, observed exactly; the last column is max |Ax-y|), linear (a random Gaussian matrix, m = D/2, noisy), linear_noiseless (the same matrix, observed exactly) or reward (the tilt by a quadratic reward), on "
    "--target default (2-D) or nd64; prints component-weight error, sliced W2, MMD and the mean log-likelihood or "
    "reward of each available method (plain sampling, DPS, and the fewstep.posterior samplers and SMC) next to "
    "exact samples of the same size. Uses the first --nfe (default 20), --samples (default 256) and --seed.",
)
@click.option(
    "--particles",
    default="1,4,16",
    show_default=True,
    callback=_ints,
    help="Particles per sample of the particle methods (with --posterior).",
)
@click.option(
    "--teacher-steps", default=300, show_default=True, type=click.IntRange(10), help="The teacher's steps (--model)."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Reuse the rows of the previous run in --out (its compare.json, checked against manifest.json) when it "
    "had the same settings, computing only the missing (solver, NFE) rows; the output is that of a fresh run.",
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
    wall_clock: bool,
    peers: bool | None,
    model_spec: str | None,
    teacher_steps: int,
    resume: bool,
    tuned_files: tuple[str, ...],
    guidance: float | None,
    posterior: str | None,
    particles: list[int],
) -> None:
    """Run solvers at several NFEs on an exact target and report their errors.

    ODE solvers: RMSE against the exact solution from the same noise. All solvers (stochastic ones seeded):
    sliced W2, MMD and (mixtures) mode coverage against exact samples of the data distribution; for digits
    also FD-digits (Frechet distance of a small digits classifier's features, not Inception FID). Peer
    libraries (diffusers, k-diffusion) run alongside when importable (--no-peers: not). Writes
    compare.csv, compare.json, compare.png, samples.png (2-D and image targets) and report.html to --out, then
    manifest.json (each file's size and SHA-256, the settings, the version); an interrupted run leaves --out as it
    was, and outputs of the previous run that this one did not write are removed.
    """
    from . import compare as cmp
    from .peers import available_peers

    if posterior is not None:
        if model_spec is not None or tuned_files or guidance is not None:
            raise click.UsageError("--posterior: runs on the exact mixtures only (no --model, --tuned, --guidance)")
        _compare_posterior(posterior, target, nfes, samples, seed, particles)
        return
    if model_spec is not None and tuned_files:
        raise click.UsageError("--tuned: compares on the embedded targets (--target), not with --model")
    if model_spec is not None and guidance is not None:
        raise click.UsageError("--guidance: compares on the class-labelled targets (--target), not with --model")
    if guidance is not None and target not in CONDITIONAL_TARGETS:
        raise click.BadParameter(
            f"classifier-free guidance needs a class-labelled target, not --target {target}; choose one of "
            f"{', '.join(CONDITIONAL_TARGETS)} (e.g. --target labelled_2d)",
            param_hint="'--guidance'",
        )
    if model_spec is not None:
        _compare_model(
            model_spec, nfes, solvers, spacing, samples, seed, quick, out_dir, no_plot, no_report, teacher_steps
        )
        return
    libs = available_peers()
    if peers is None:
        peers = bool(libs)
    elif peers and not libs:
        raise click.UsageError("--peers: neither diffusers nor k-diffusion is importable")

    nfes = nfes or ([5, 10] if quick else [5, 10, 20, 50])
    tuned = _load_tuned(tuned_files)
    nfes = sorted({*nfes, *(t.nfe for t in tuned.values())})
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
        if isinstance(tgt, cmp.LEARNED_TARGETS):
            sched, pred = tgt.schedule, tgt.prediction
        learned = isinstance(tgt, cmp.LEARNED_TARGETS)
        where = "the learned target's own schedule" if learned else f"--schedule {schedule}"
        _check_combination(sched, where, spacing, pred)
        settings: dict[str, Any] = {
            "target": target,
            "dim": tgt.dim,
            "schedule": "vp (the network's own)" if learned else schedule,
            "spacing": spacing,
            "prediction": pred,
            "samples": samples,
            "seed": seed,
            "nfe": nfes,
            "solvers": names,
            "peers": [],  # the peer libraries that ran, filled in below
            "reference": cmp.reference_name(tgt, guidance),
            "tuned": list(tuned_files),
        }
        if target in CONDITIONAL_TARGETS:
            settings["guidance"] = 1.0 if guidance is None else guidance
        if wall_clock:  # timed rows are not reused by an untimed --resume, nor the other way
            settings["wall_clock"] = True
        out = Path(out_dir)
        done = _previous_rows(out, settings) if resume else None
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
            schedule_name=None if learned else schedule,
            done=done,
            tuned=tuned,
            guidance=guidance,
            timing=wall_clock,
        )
    except (ValueError, TypeError) as err:
        raise cli_error(err) from err
    rows = result.rows
    settings["peers"] = sorted({r.library for r in rows if r.library != "fewstep"})
    click.echo(", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("nfe", "solvers", "reference")))
    if any(not r.stochastic for r in rows):
        table = cmp.format_table(rows, nfes, "rmse")
        if learned:  # "learned_reference (N-step DPM-Solver-3 of the network)"
            table = table.replace("the exact solution", f"{settings['reference'][:-1]} of the network)")
        click.echo(table)
        click.echo()
    click.echo(cmp.format_table(rows, nfes, "sw2"))
    if any(not math.isnan(r.fd_digits) for r in rows):
        click.echo()
        click.echo(cmp.format_table(rows, nfes, "fd_digits"))
    if wall_clock:
        for metric in ("seconds", "model_seconds", "solver_seconds"):
            click.echo()
            click.echo(cmp.format_table(rows, nfes, metric))

    def samples_plot(stage: Path) -> list[str]:
        shape: tuple[int, ...] | None = getattr(cmp.data_distribution(tgt), "image_shape", None)
        if tgt.dim != 2 and shape is None:
            return []
        cmp.plot_samples(result, stage / "samples.png", min(nfes), None if tgt.dim == 2 else shape)
        return ["samples.png"]

    title = f"{target} target, {settings['schedule']} schedule, {spacing} spacing"
    if "guidance" in settings:
        title += f", CFG scale {settings['guidance']:g}"
    _write_outputs(out, rows, nfes, settings, title, no_plot, no_report, samples_plot)


def _compare_posterior(
    kind: str, target: str, nfes: list[int] | None, samples: int | None, seed: int, particles: list[int]
) -> None:
    """``fewstep compare --posterior``: the posterior samplers against the exact posterior (or tilt)."""
    from . import posterior_compare as pc

    where = {"default": "2d", "nd64": "64d"}
    if target not in where:
        raise click.BadParameter(
            f"a posterior problem runs on the default 2-D mixture or the 64-D one, not --target {target}; choose "
            "--target default or --target nd64",
            param_hint="'--target'",
        )
    nfe = (nfes or [20])[0]
    n = samples or 256
    try:
        problem = pc.posterior_problem(kind, where[target], seed)
        methods = pc.available_methods(kind)
        click.echo(
            f"posterior={kind}, target={target} (D={problem.dim}), nfe={nfe} per chain, samples={n}, seed={seed}, "
            f"methods: {', '.join(methods)}"
        )
        rows, exact = pc.compare_posterior(problem, methods, tuple(particles), nfe, n, 1, seed)
    except (ValueError, TypeError) as err:
        raise cli_error(err) from err
    click.echo(pc.format_posterior_table(rows, exact, problem.score_name))


def _load_tuned(paths: tuple[str, ...]) -> dict[str, Any]:
    """The tuned samplers of ``--tuned`` by file name (without .json); a bad file is a usage error naming it."""
    if not paths:
        return {}
    from ..tune import TunedSampler

    out = {}
    for path in paths:
        try:
            out[Path(path).stem] = TunedSampler.load(path)
        except (OSError, ValueError, TypeError) as err:
            raise click.BadParameter(f"{path}: {err}", param_hint="'--tuned'") from err
    return out


def _write_outputs(
    out: Path,
    rows: list[Any],
    nfes: list[int],
    settings: dict[str, Any],
    title: str,
    no_plot: bool,
    no_report: bool,
    more_plots: Callable[[Path], list[str]] | None = None,
) -> None:
    """Write a run's csv, json, plots (the error plot titled ``title``, then ``more_plots(stage)``) and report; they
    appear in ``out`` whole and together, or not at all. Then say what was written."""
    from . import compare as cmp
    from .output import MANIFEST, publish, staging

    written = ["compare.csv", "compare.json"]
    images: list[str] = []
    with staging(out) as stage:
        cmp.write_csv(rows, stage / "compare.csv")
        cmp.write_json(rows, settings, stage / "compare.json")
        if not no_plot:
            cmp.plot_errors(rows, stage / "compare.png", title)
            images.append("compare.png")
            if cmp.plot_cost(rows, stage / "compare_cost.png", f"{title}: error against wall-clock"):
                images.append("compare_cost.png")
            if more_plots is not None:
                images += more_plots(stage)
        if not no_report:
            from .report import write_report

            write_report(rows, nfes, settings, [stage / i for i in images], stage / "report.html")
            written.append("report.html")
        publish(stage, out, settings, __version__)
    written += [*images, MANIFEST]
    click.echo(f"wrote {', '.join(str(out / w) for w in written)}")


def _compare_model(
    spec: str,
    nfes: list[int] | None,
    solvers: tuple[str, ...],
    spacing: str,
    samples: int | None,
    seed: int,
    quick: bool,
    out_dir: str,
    no_plot: bool,
    no_report: bool,
    teacher_steps: int,
) -> None:
    """``fewstep compare --model``: the ODE solvers on the user's network against a teacher solve of it."""
    from . import compare as cmp
    from .user_model import compare_model, load_model

    nfes = nfes or ([5, 10] if quick else [5, 10, 20])
    try:
        user = load_model(spec)
        rows, cost = compare_model(
            user,
            list(solvers) or cmp.deterministic_solvers(),
            nfes,
            spacing=spacing,
            samples=samples or 16,
            seed=seed,
            teacher_steps=teacher_steps,
        )
    except (ValueError, TypeError, ImportError, AttributeError) as err:
        raise click.BadParameter(str(err), param_hint="'--model'") from err
    settings: dict[str, Any] = {
        "model": user.name,
        "schedule": type(user.schedule).__name__,
        "prediction": user.prediction,
        "shape": list(user.shape),
        "spacing": spacing,
        "samples": samples or 16,
        "seed": seed,
        "nfe": nfes,
        "solvers": sorted({r.solver for r in rows}),
        "peers": [],
        "reference": f"{cost['teacher']} ({cost['teacher_nfe']} evaluations, {cost['teacher_seconds']} s)",
    }
    click.echo(f"teacher: {settings['reference']}")
    click.echo(cmp.format_table(rows, nfes, "rmse").replace("the exact solution", "the teacher"))
    for metric in ("seconds", "model_seconds", "solver_seconds"):
        click.echo()
        click.echo(cmp.format_table(rows, nfes, metric))
    title = f"{user.name}: RMSE against the teacher, {spacing} spacing"
    _write_outputs(Path(out_dir), rows, nfes, settings, title, no_plot, no_report)


def _check_combination(sched: Any, where: str, spacing: str, prediction: str) -> None:
    """The option combinations the core rejects, checked first so that the error speaks of the options."""
    from ..schedules import DiscreteVP

    if spacing in catalog.DISCRETE_SPACINGS and not isinstance(sched, DiscreteVP):
        continuous = [s for s in catalog.SPACINGS if s not in catalog.DISCRETE_SPACINGS]
        raise click.BadParameter(
            f"{spacing!r} spaces diffusers' discrete timesteps, which need --schedule sd or ddpm, not {where}; "
            f"choose one of {', '.join(continuous)}",
            param_hint="'--spacing'",
        )
    if prediction in ("epsilon", "score") and float(sched.alpha(sched.t_max)) <= 0.0:
        raise click.BadParameter(
            f"{prediction!r} cannot give the data estimate where {where} starts (pure noise, alpha = 0); choose "
            "one of velocity, v_prediction, sample",
            param_hint="'--prediction'",
        )


#: The core's option names, which start its error messages ("spacing: ..."), as ``compare``'s options.
CORE_OPTIONS = {
    "target": "--target",
    "schedule": "--schedule",
    "solver": "--solver",
    "nfe": "--nfe",
    "spacing": "--spacing",
    "prediction": "--prediction",
    "seed": "--seed",
    "guidance": "--guidance",
}


def cli_error(err: Exception) -> click.ClickException:
    """An error of the core as the command line's: ``"spacing: ..."`` becomes an invalid ``--spacing``."""
    option, sep, message = str(err).partition(": ")
    if sep and option in CORE_OPTIONS:
        return click.BadParameter(message, param_hint=f"'{CORE_OPTIONS[option]}'")
    return click.UsageError(str(err))


# The settings that name the rows of a run rather than determine them: --resume ignores them.
_ROW_KEYS = ("nfe", "solvers", "peers")


def _previous_rows(out: Path, settings: dict[str, Any]) -> dict[tuple[str, int], Any] | None:
    """The rows of the previous run in ``out`` by (solver, NFE), when it can be trusted (``compare.json`` listed
    in ``manifest.json`` with its hash, by this fewstep version) and had the same settings; else None, with the
    reason on stderr. Peer rows only when the NFE list is the same (a peer's spacing is chosen over all NFEs)."""
    from .compare import row_from_dict
    from .output import verified

    def fresh(why: str) -> dict[tuple[str, int], Any] | None:
        click.echo(f"--resume: {why}; running fresh", err=True)
        return None

    path = out / "compare.json"
    if not path.is_file():
        return fresh(f"nothing to resume (no compare.json in {out})")
    why = verified(out, "compare.json", __version__)
    if why is not None:
        return fresh(why)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        old = data["settings"]
        rows = [row_from_dict(r) for r in data["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return fresh(f"cannot read compare.json ({err})")
    differ = [k for k in settings if k not in _ROW_KEYS and old.get(k) != settings[k]]
    if differ:
        changes = ", ".join(f"{k} {old.get(k)!r} -> {settings[k]!r}" for k in differ)
        return fresh(f"settings differ from the previous run's ({changes})")
    same_nfes = old.get("nfe") == settings["nfe"]
    done = {(r.solver, r.nfe_asked): r for r in rows if r.library == "fewstep" or same_nfes}
    wanted = [(s, n) for s in settings["solvers"] for n in settings["nfe"]]
    reused = sum(key in done for key in wanted)
    click.echo(f"--resume: reusing {reused} of {len(wanted)} rows of fewstep solvers", err=True)
    return done


from .generate_cli import generate  # noqa: E402  (the commands' modules import no torch)
from .mcmc_cli import mcmc  # noqa: E402
from .tune_cli import tune  # noqa: E402

main.add_command(generate)
main.add_command(tune)
main.add_command(mcmc)
