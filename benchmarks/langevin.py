"""fewstep's Langevin samplers against blackjax's NUTS and MALA on targets with known answers, on the same gradient
budget: ESS (bulk, tail) per gradient evaluation, split R-hat, acceptance, moment errors, sliced W2 and MMD to exact
samples. The goal measured: kinetic Langevin with the randomized midpoint method against NUTS's ESS per gradient
evaluation on the Gaussians and the logistic regression.

    python benchmarks/langevin.py                      # every target; writes benchmarks/results/langevin.json
    python benchmarks/langevin.py --targets banana --draws 500 --warmup 300
    python benchmarks/langevin.py --report             # print the stored tables
    python benchmarks/langevin.py --targets gaussian --friction 1.0 --out benchmarks/results/langevin_friction1.json
    python benchmarks/langevin.py --targets gaussian_diag --mass-estimate fisher
    python benchmarks/langevin.py --targets gaussian --kinetic-warmup 5000   # the kinetic samplers' own, fixed warm-up
    python benchmarks/langevin.py --targets gaussian --warmup-tolerance 0    # the kinetic samplers' warm-up = --warmup

The kinetic samplers' warm-up ends by default when their diagonal mass has settled (``--warmup-tolerance 0.4``,
fewstep.langevin.settle: at least --warmup iterations, at most a tenth of NUTS's gradient budget); an explicit
``--kinetic-warmup`` or ``--warmup-tolerance 0`` gives a fixed count.

Each target's entry in the results file keeps the settings it ran with (chains, draws, warm-up, friction), so
targets may be run with different budgets (the 1,000-D Gaussian with a shorter one).

blackjax runs NUTS first; each fewstep sampler then gets as many gradient evaluations per chain as NUTS spent
(warm-up included), so ESS per gradient compares like for like (fewstep.bench.mcmc_compare). The logistic
regression's moments come from src/fewstep/bench/data/langevin_logistic_reference.json
(python benchmarks/langevin_reference.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fewstep.bench.mcmc_cli import KINETIC_SAMPLERS
from fewstep.bench.mcmc_compare import McmcRow, compare_samplers, markdown_table
from fewstep.bench.mcmc_peers import PEER_SAMPLERS, blackjax_available
from fewstep.bench.targets.densities import BREAST_CANCER_REFERENCE, LogisticRegression, density_target

RESULTS = Path(__file__).parent / "results"
REFERENCE = BREAST_CANCER_REFERENCE
SAMPLERS = ["mala", "baoab", "obabo", "randomized_midpoint"]
#: the kinetic samplers' default warm-up: from --warmup on, until the diagonal mass has settled to this tolerance
SETTLE_TOLERANCE = 0.4
#: (target name, dimension or None for its default)
TARGETS = [
    ("gaussian", 100),
    ("gaussian_diag", 1000),
    ("logistic_regression", None),
    ("banana", None),
    ("funnel", 10),
    ("mixture", None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="*", default=[t for t, _ in TARGETS], help="names among the defaults")
    parser.add_argument("--samplers", nargs="*", default=SAMPLERS)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000, help="NUTS's kept draws per chain")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--friction", default="auto", help="the kinetic samplers' friction: 'auto' (adapted in warm-up) or a float"
    )
    parser.add_argument(
        "--mass-estimate",
        default="variance",
        choices=["variance", "fisher"],
        help="the kinetic samplers' diagonal mass in warm-up: the draws' variance (Stan's) or the Fisher divergence's",
    )
    parser.add_argument(
        "--kinetic-warmup",
        type=int,
        default=None,
        help="the kinetic samplers' warm-up iterations (default --warmup); a NUTS warm-up iteration costs tens to "
        "hundreds of gradients, a kinetic one a single gradient, and every sampler's warm-up counts in the budget",
    )
    parser.add_argument(
        "--warmup-tolerance",
        type=float,
        default=SETTLE_TOLERANCE,
        help="the kinetic samplers' warm-up ends when the diagonal mass has settled to this tolerance (RMS of "
        "log(m_new / m_old) between slow windows; fewstep.langevin.settle), --warmup being its minimum and a tenth "
        "of NUTS's gradient budget its cap; 0: exactly --warmup iterations (also with --kinetic-warmup)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "langevin.json")
    parser.add_argument("--report", action="store_true", help="only print the tables stored in --out")
    args = parser.parse_args()
    if args.report:
        report(args.out)
        return
    torch.set_num_threads(1)  # batches of a few chains: one thread is fastest
    names = list(args.samplers) + (list(PEER_SAMPLERS) if blackjax_available() else [])
    results: dict[str, object] = {}
    if args.out.is_file():
        results = json.loads(args.out.read_text(encoding="utf-8")).get("targets", {})
    dims = dict(TARGETS)
    friction = args.friction if args.friction == "auto" else float(args.friction)
    kinetic: dict[str, object] = {"friction": friction, "mass_estimate": args.mass_estimate}
    if args.kinetic_warmup is not None:  # an explicit count: that many iterations
        kinetic["warmup"] = args.kinetic_warmup
        args.warmup_tolerance = 0.0
    if args.warmup_tolerance > 0:
        kinetic["warmup_tolerance"] = args.warmup_tolerance
    else:
        args.warmup_tolerance = None  # a fixed warm-up, stored as such
    options = {name: dict(kinetic) for name in KINETIC_SAMPLERS}
    for name in args.targets:
        target = density_target(name, dims.get(name))
        if isinstance(target, LogisticRegression):
            target.with_reference(REFERENCE)
        start = time.perf_counter()
        rows = compare_samplers(
            target,
            names,
            chains=args.chains,
            draws=args.draws,
            warmup=args.warmup,
            seed=args.seed,
            match_budget="blackjax_nuts" in names,
            options=options,
        )
        print(
            f"\n{target.name} (d = {target.dim}), {args.chains} chains, warm-up {args.warmup}{kinetic_note(args)} "
            f"({time.perf_counter() - start:.0f} s)"
        )
        print(markdown_table(rows))
        print(warmups_line(rows))
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "targets", "report")}
        results[name] = {
            "name": target.name,
            "dim": target.dim,
            "settings": settings,
            "rows": [r.as_dict() for r in rows],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "command": "python benchmarks/langevin.py",
            "settings": settings,
            "machine": platform.machine(),
            "torch": torch.__version__,
        }
        args.out.write_text(json.dumps({"meta": meta, "targets": results}, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


def kinetic_note(args: argparse.Namespace) -> str:
    """`` (kinetic 5000)`` when the kinetic samplers ran their own warm-up length, ``(kinetic settled to 0.4 from
    500)`` when it ended once the mass settled."""
    own = getattr(args, "kinetic_warmup", None)
    tolerance = getattr(args, "warmup_tolerance", None)
    if tolerance is not None:
        return f" (kinetic settled to {tolerance} from {own if own is not None else args.warmup})"
    return "" if own is None else f" (kinetic {own})"


def report(path: Path) -> None:
    """Print the Markdown tables of a results file (what docs/langevin.md shows)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for entry in data["targets"].values():
        settings = entry.get("settings", data["meta"]["settings"])
        rows = [McmcRow(**row) for row in entry["rows"]]
        print(
            f"\n{entry['name']} (d = {entry['dim']}), {settings['chains']} chains, warm-up {settings['warmup']}"
            f"{kinetic_note(argparse.Namespace(**settings))}, "
            f"NUTS draws {settings['draws']}, kinetic friction {settings.get('friction', 1.0)}, "
            f"mass {settings.get('mass_estimate', 'variance')}\n"
        )
        print(markdown_table(rows))
        print(warmups_line(rows))


def warmups_line(rows: list[McmcRow]) -> str:
    """The warm-up iterations each sampler ran (a settled warm-up's length is known only after the run)."""
    return "\nwarm-up iterations run: " + ", ".join(f"{r.sampler} {r.warmup}" for r in rows)


if __name__ == "__main__":
    main()
