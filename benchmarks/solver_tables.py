"""Accuracy of every registered solver at a given NFE: the tables of docs/solvers.md, "Accuracy at a given NFE".

(a) ODE solvers: RMSE of the samples against the exact probability-flow ODE solution from the same noise
    (:func:`fewstep.bench.compare.compare`) at NFE 5, 6, 8, 10, 15, 20 on the default 2-D mixture and on the digits
    target (VP schedule, epsilon prediction), each solver on its best spacing among SPACINGS: the one with the
    smallest geometric mean RMSE over the NFEs (the table says which).
(b) Every solver, stochastic ones included (seeded): sliced W2 against exact samples of the data distribution
    at NFE 10, 20, 50, logSNR spacing, on the default 2-D mixture and the 64-D mixture (``nd64``).

A solver that cannot spend exactly an NFE (2 or 3 evaluations per step) is run at the largest NFE below it that
it can spend, shown as ``value (k)`` with k the NFE spent, as ``fewstep compare`` does; ``-``: no feasible NFE.
The solvers are those registered when the script runs (``fewstep.solvers.available()``).

Run: python benchmarks/solver_tables.py [--samples 256] [--digits-samples 64] [--dist-samples 1024] [--no-nd64]
[--no-write]. It prints the tables and writes them into docs/solvers.md between the solver-tables markers.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from fewstep.bench.compare import Row, compare, data_distribution, deterministic_solvers, make_schedule, make_target
from fewstep.bench.metrics import sliced_wasserstein2
from fewstep.solvers import available

ODE_NFES = (5, 6, 8, 10, 15, 20)
DIST_NFES = (10, 20, 50)
SPACINGS = ("logsnr", "time_quadratic", "karras", "uniform")  # on VP, "exponential" is "logsnr"
DOC = Path(__file__).resolve().parents[1] / "docs" / "solvers.md"
BEGIN, END = "<!-- solver-tables:begin -->", "<!-- solver-tables:end -->"
COMMAND = "python benchmarks/solver_tables.py"


def cell(row: Row | None, metric: str, fmt: str) -> str:
    if row is None or row.nfe is None:
        return "-"
    value = getattr(row, metric)
    if row.nonfinite or math.isnan(value):
        return "nan!"
    return format(value, fmt) + (f" ({row.nfe})" if row.nfe != row.nfe_asked else "")


def geometric_mean(rows: Sequence[Row]) -> float:
    values = [r.rmse for r in rows if r.nfe is not None and math.isfinite(r.rmse) and r.rmse > 0]
    if len(values) < len(rows) - sum(r.nfe is None for r in rows):  # a non-finite run disqualifies the spacing
        return math.inf
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.inf


def markdown(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def rmse_table(target_name: str, samples: int, seed: int) -> str:
    """(a): per ODE solver, the RMSE row of its best spacing."""
    target, schedule = make_target(target_name), make_schedule("vp")
    solvers = deterministic_solvers()
    by_spacing = {
        spacing: compare(target, schedule, solvers, ODE_NFES, spacing=spacing, samples=samples, seed=seed).rows
        for spacing in SPACINGS
    }
    lines = []
    for name in solvers:
        rows = {sp: [r for r in by_spacing[sp] if r.solver == name] for sp in SPACINGS}
        best = min(SPACINGS, key=lambda sp: geometric_mean(rows[sp]))
        lines.append([f"`{name}`", best, *(cell(r, "rmse", ".2e") for r in rows[best])])
    return markdown(["solver", "best spacing", *(f"NFE {n}" for n in ODE_NFES)], lines)


def sw2_table(target_names: Sequence[str], samples: int, seed: int) -> tuple[str, str]:
    """(b): per solver and target, the sliced W2 at each NFE; and a note with each target's sampling floor."""
    solvers = [info.name for info in available()]
    stochastic = {info.name: info.stochastic for info in available()}
    schedule = make_schedule("vp")
    rows: dict[str, dict[tuple[str, int], Row]] = {}
    floors = []
    for name in target_names:
        target = make_target(name)
        result = compare(target, schedule, solvers, DIST_NFES, samples=samples, seed=seed)
        rows[name] = {(r.solver, r.nfe_asked): r for r in result.rows}
        others = [
            data_distribution(target).sample(samples, generator=torch.Generator().manual_seed(seed + k))
            for k in (2, 3, 4, 5)
        ]
        floor = sum(sliced_wasserstein2(other, result.exact, projections=128) for other in others) / len(others)
        floors.append(f"{name} {floor:.3f}")
    header = ["solver", "SDE", *(f"{t} NFE {n}" for t in target_names for n in DIST_NFES)]
    lines = [
        [f"`{s}`", "yes" if stochastic[s] else "no", *(cell(rows[t][(s, n)], "sw2", ".3f") for t in target_names for n in DIST_NFES)]
        for s in solvers
    ]  # fmt: skip
    note = "the sampling floor, the mean sliced W2 from 4 other sets of exact samples to these: " + ", ".join(floors)
    return markdown(header, lines), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="samples for the 2-D RMSE table")
    parser.add_argument("--digits-samples", type=int, default=64, help="samples for the digits RMSE table")
    parser.add_argument("--dist-samples", type=int, default=1024, help="samples for the sliced W2 table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-nd64", action="store_true", help="leave the 64-D mixture out of the sliced W2 table")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/solvers.md alone")
    args = parser.parse_args()
    start = time.perf_counter()
    targets = ["default"] if args.no_nd64 else ["default", "nd64"]

    def timed(label: str, table: str) -> str:
        print(f"{label}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return table

    rmse_2d = timed("RMSE, 2-D", rmse_table("default", args.samples, args.seed))
    rmse_digits = timed("RMSE, digits", rmse_table("digits", args.digits_samples, args.seed))
    sw2, floor_note = sw2_table(targets, args.dist_samples, args.seed)
    timed("sliced W2", sw2)
    sections = [
        f"RMSE against the exact PF-ODE solution, default 2-D mixture (VP, {args.samples} samples, seed {args.seed}):",
        rmse_2d,
        f"RMSE against the exact PF-ODE solution, digits target (VP, {args.digits_samples} samples, seed {args.seed}):",
        rmse_digits,
        f"Sliced W2 against exact samples (VP, logSNR spacing, {args.dist_samples} samples, seed {args.seed}; "
        f"{floor_note}):",
        sw2,
    ]
    body = "\n\n".join(sections)
    print(body)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if not args.no_write:
        text = DOC.read_text()
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
        if not pattern.search(text):
            raise SystemExit(f"{DOC.name}: no {BEGIN} ... {END} markers")
        DOC.write_text(pattern.sub(lambda _: f"{BEGIN}\n{body}\n{END}", text))


if __name__ == "__main__":
    main()
