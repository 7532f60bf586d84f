"""Measure every ODE solver x spacing on every built-in target and schedule, and choose ``fewstep.sample``'s defaults.

For each schedule of ``fewstep compare`` (vp, cosine, ddpm, sd, edm, flow) and each built-in target (the five 2-D
mixtures, nd64, image, digits; the learned target on its own schedule), from the same float64 noise as ``fewstep
compare`` (256 samples, seed 0): the RMSE against the exact probability-flow ODE solution of every deterministic
solver on every spacing at NFE 5, 10 and 20 (the largest NFE <= asked that the solver can spend), and of
k-diffusion's samplers on their Karras and exponential sigmas (where k-diffusion can start: not at alpha = 0).

The defaults are then chosen per schedule family (``fewstep.defaults.family``) and NFE: of the (solver, spacing) pairs
whose solver spends any NFE, the one with the smallest geometric-mean ratio to the best fewstep configuration of each
of the family's targets and schedules. The script writes
the measurements to ``benchmarks/results/defaults.json`` (and resumes from it: ``--fresh`` starts over), rewrites the
tables in ``src/fewstep/defaults.py``, docs/benchmarks.md ("Defaults") and the README's recommendation between their
markers, and prints them (default / best fewstep, default / best k-diffusion per target, schedule and NFE).

Usage: ``python benchmarks/defaults.py [--fresh] [--targets default,ring] [--schedules sd,edm] [--no-write]``.
About 20-30 minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import fewstep
from fewstep.bench.compare import SCHEDULES, TARGETS, _feasible_nfe, deterministic_solvers, make_schedule, make_target
from fewstep.bench.metrics import rmse
from fewstep.bench.peers import kdiffusion_runs
from fewstep.bench.targets import LearnedTarget, learned_reference, reference_solution_from_time
from fewstep.defaults import NFE_POINTS, family
from fewstep.spacing import DISCRETE_SPACINGS, SPACINGS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "defaults.json"
TABLE_FILE = ROOT / "src" / "fewstep" / "defaults.py"
SAMPLES = 256


def spacings_for(schedule: fewstep.NoiseSchedule) -> list[str]:
    return [s for s in SPACINGS if s not in DISCRETE_SPACINGS or isinstance(schedule, fewstep.DiscreteVP)]


def measure(target_name: str, schedule_name: str, done: dict[str, Any] | None = None) -> dict[str, Any]:
    """RMSEs of every (solver, spacing, NFE) and of k-diffusion's best, for one target and schedule; ``done``: an
    earlier measurement of the case, whose configurations are kept (only new solvers and spacings are run)."""
    target = make_target(target_name)
    schedule = make_schedule(schedule_name)
    if isinstance(target, LearnedTarget):
        schedule, prediction = target.schedule, target.prediction
    else:
        prediction = "velocity" if isinstance(schedule, fewstep.Flow) else "epsilon"
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(SAMPLES, target.dim, generator=gen, dtype=torch.float64) * float(schedule.sigma(schedule.t_max))
    if isinstance(target, LearnedTarget):
        reference = learned_reference(target, noise)
        model = target.model
    else:
        reference = reference_solution_from_time(target, noise, schedule, schedule.t_max)
        model = target.model(schedule, prediction)
    errors: dict[str, float] = dict(done["rmse"]) if done else {}
    for solver in deterministic_solvers():
        for spacing in spacings_for(schedule):
            for asked in NFE_POINTS:
                nfe = _feasible_nfe(solver, asked, schedule, True)
                key = f"{solver}|{spacing}|{asked}"
                if nfe is None or key in errors:
                    continue
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        x = fewstep.sample(
                            model, noise, schedule, solver, nfe=nfe, spacing=spacing, prediction=prediction
                        )
                    value = rmse(x, reference)
                except ValueError:
                    continue
                errors[key] = value if math.isfinite(value) else math.inf
    if done and done.get("kdiffusion"):
        return {"family": family(schedule), "rmse": errors, "kdiffusion": done["kdiffusion"]}
    peers: dict[str, float] = {}
    try:
        runs = kdiffusion_runs(model, schedule, noise, NFE_POINTS, prediction, reference=reference)
    except ImportError:
        runs = []
    for run in runs:
        if run.x is not None:
            value = rmse(run.x, reference)
            key = str(run.nfe_asked)
            if math.isfinite(value) and value < peers.get(key, math.inf):
                peers[key] = value
    return {"family": family(schedule), "rmse": errors, "kdiffusion": peers}


def spends_any_budget(solver: str) -> bool:
    """Whether ``solver`` can spend every NFE from 1 to 30 (on every family's schedule): a default must."""
    schedules = [make_schedule(name) for name in SCHEDULES]
    return all(_feasible_nfe(solver, n, sch, True) == n for sch in schedules for n in range(1, 31))


def choose(results: dict[str, dict[str, Any]]) -> dict[tuple[str, int], tuple[str, str, float]]:
    """Per family and NFE: of the configurations that ran on every case of the family, with a solver that spends any
    budget, the one with the smallest geometric mean of its ratios to each case's best fewstep configuration (the
    typical case; the worst case of a single configuration is far off on some target, see the report)."""
    table: dict[tuple[str, int], tuple[str, str, float]] = {}
    any_budget = {s: spends_any_budget(s) for s in deterministic_solvers()}
    for fam in sorted({r["family"] for r in results.values()}):
        cases = [r for r in results.values() if r["family"] == fam]
        for nfe in NFE_POINTS:
            best = [min(v for k, v in r["rmse"].items() if k.endswith(f"|{nfe}")) for r in cases]
            candidates = {k.rsplit("|", 1)[0] for r in cases for k in r["rmse"] if k.endswith(f"|{nfe}")}
            scored = []
            for cand in candidates:
                if not any_budget[cand.split("|")[0]]:
                    continue
                ratios = [r["rmse"].get(f"{cand}|{nfe}", math.inf) / b for r, b in zip(cases, best, strict=True)]
                if all(0 < x < math.inf for x in ratios):
                    scored.append((math.exp(sum(map(math.log, ratios)) / len(ratios)), cand))
            mean, cand = min(scored)
            solver, spacing = cand.split("|")
            table[fam, nfe] = (solver, spacing, mean)
    return table


def write_block(name: str, lines: list[str]) -> None:
    text = TABLE_FILE.read_text()
    start, end = (
        f"# --- {name} by benchmarks/defaults.py: start ---\n",
        f"# --- {name} by benchmarks/defaults.py: end ---",
    )
    a, b = text.index(start) + len(start), text.index(end)
    TABLE_FILE.write_text(text[:a] + "\n".join(lines) + "\n" + text[b:])


def write_table(table: dict[tuple[str, int], tuple[str, str, float]]) -> None:
    lines = ["MEASURED: dict[tuple[str, int], tuple[str, str]] = {"]
    for (fam, nfe), (solver, spacing, worst) in sorted(table.items()):
        lines.append(f'    ("{fam}", {nfe}): ("{solver}", "{spacing}"),  # mean ratio to the best: {worst:.3f}')
    write_block("measured", [*lines, "}"])


def report(results: dict[str, dict[str, Any]], table: dict[tuple[str, int], tuple[str, str, float]]) -> str:
    """The acceptance table: the default's RMSE over the best fewstep and the best k-diffusion configuration."""
    out = [
        "| target | schedule | NFE | default | RMSE | / best fewstep (its config) | / best k-diffusion |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case, r in sorted(results.items()):
        target_name, schedule_name = case.split("@")
        for nfe in NFE_POINTS:
            solver, spacing, _ = table[r["family"], nfe]
            own = r["rmse"].get(f"{solver}|{spacing}|{nfe}", math.nan)
            vals = {k: v for k, v in r["rmse"].items() if k.endswith(f"|{nfe}")}
            best_key = min(vals, key=vals.__getitem__)
            peer = r["kdiffusion"].get(str(nfe))
            vs_peer = f"{own / peer:.2f}" if peer else "n/a"
            out.append(
                f"| {target_name} | {schedule_name} | {nfe} | {solver}, {spacing} | {own:.4g} | "
                f"{own / vals[best_key]:.2f} ({best_key.rsplit('|', 1)[0].replace('|', ', ')}) | {vs_peer} |"
            )
    return "\n".join(out)


def family_table(table: dict[tuple[str, int], tuple[str, str, float]]) -> str:
    """The defaults as a recommendation per model family (README and docs/benchmarks.md)."""
    names = {
        "discrete_vp": "DDPM / Stable Diffusion 1.x-2.x / SDXL (discrete VP, epsilon or v)",
        "vp": "continuous VP, cosine",
        "edm": "EDM / k-diffusion sigmas, VE",
        "flow": "SD3 / Flux / rectified flows (velocity)",
    }
    out = ["| model family | NFE 5 | NFE 10 | NFE 20 |", "| --- | --- | --- | --- |"]
    for fam, label in names.items():
        cells = [f"`{table[fam, n][0]}`, {table[fam, n][1]}" if (fam, n) in table else "-" for n in NFE_POINTS]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def summary(results: dict[str, dict[str, Any]], table: dict[tuple[str, int], tuple[str, str, float]]) -> str:
    """How the defaults fare against each case's best fewstep configuration and k-diffusion's best, and how the
    former default (DPM-Solver++ 3M on logSNR) fared."""
    cases = within = old_within = peer_cases = peer_wins = 0
    logs: list[float] = []
    old_logs: list[float] = []
    for r in results.values():
        for nfe in NFE_POINTS:
            best = min(v for k, v in r["rmse"].items() if k.endswith(f"|{nfe}"))
            solver, spacing, _ = table[r["family"], nfe]
            own = r["rmse"][f"{solver}|{spacing}|{nfe}"] / best
            old = r["rmse"].get(f"dpmpp_3m|logsnr|{nfe}", math.inf) / best
            cases += 1
            within += own <= 1.25
            old_within += old <= 1.25
            logs.append(math.log(own))
            old_logs.append(math.log(old))
            peer = r["kdiffusion"].get(str(nfe))
            if peer:
                peer_cases += 1
                peer_wins += own * best <= peer
    mean, old_mean = math.exp(sum(logs) / cases), math.exp(sum(old_logs) / cases)
    return (
        f"Over {cases} cases (target x schedule x NFE): the defaults are within 1.25x of the case's best fewstep "
        f"configuration in {within} (the former default, DPM-Solver++ 3M on logSNR: {old_within}), with a geometric-mean "
        f"ratio of {mean:.2f} (former: {old_mean:.2f}); they are at least as accurate as k-diffusion's best sampler and "
        f"sigma grid in {peer_wins} of the {peer_cases} cases k-diffusion can run (it cannot start flows at alpha = 0). "
        f"No fixed rule does much better: the single configuration per family and NFE chosen with hindsight to be "
        f"within 1.25x in as many cases as possible is so in {within_bound(results)} of the {cases}; the rest is what "
        f"per-model tuning (`fewstep.tune`) is for."
    )


def within_bound(results: dict[str, dict[str, Any]]) -> int:
    """The most cases within 1.25x of their best that any one (solver, spacing) per family and NFE can reach: the
    upper bound of every fixed default rule that sees only the schedule family and the NFE."""
    total = 0
    for fam in {r["family"] for r in results.values()}:
        cases = [r for r in results.values() if r["family"] == fam]
        for nfe in NFE_POINTS:
            best = [min(v for k, v in r["rmse"].items() if k.endswith(f"|{nfe}")) for r in cases]
            configs = {k.rsplit("|", 1)[0] for r in cases for k in r["rmse"] if k.endswith(f"|{nfe}")}
            total += max(
                sum(r["rmse"].get(f"{c}|{nfe}", math.inf) <= 1.25 * b for r, b in zip(cases, best, strict=True))
                for c in configs
            )
    return total


def write_docs(results: dict[str, dict[str, Any]], table: dict[tuple[str, int], tuple[str, str, float]]) -> None:
    text = f"{family_table(table)}\n\n{summary(results, table)}\n\n{report(results, table)}\n"
    for path in (ROOT / "docs" / "benchmarks.md",):
        page = path.read_text()
        start, end = "<!-- defaults:start -->\n", "<!-- defaults:end -->"
        a, b = page.index(start) + len(start), page.index(end)
        path.write_text(page[:a] + text + page[b:])
    readme = ROOT / "README.md"
    page = readme.read_text()
    start, end = "<!-- defaults-table:start -->\n", "<!-- defaults-table:end -->"
    a, b = page.index(start) + len(start), page.index(end)
    readme.write_text(page[:a] + family_table(table) + "\n" + page[b:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="ignore earlier measurements")
    # the digits UNet is left out: its float64 convolutions make the reference and every run slow on a CPU (its
    # measurements are in docs/tuning.md)
    exact = [t for t in TARGETS if t not in ("learned", "digits_unet")]
    parser.add_argument("--targets", default=",".join(exact) + ",learned")
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
    parser.add_argument("--no-write", action="store_true", help="print only; do not rewrite src/fewstep/defaults.py")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, dict[str, Any]] = {}
    if RESULTS.exists() and not args.fresh:
        results = json.loads(RESULTS.read_text())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for target_name in args.targets.split(","):
        for schedule_name in args.schedules.split(","):
            if target_name == "learned" and schedule_name != "ddpm":
                continue  # the learned target has its own schedule; measure it once
            case = f"{target_name}@{schedule_name}"
            start = time.perf_counter()
            results[case] = measure(target_name, schedule_name, results.get(case))
            RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
            print(f"{case}: {time.perf_counter() - start:.0f} s", flush=True)
    table = choose(results)
    for (fam, nfe), (solver, spacing, mean) in sorted(table.items()):
        print(f"{fam:12s} NFE {nfe:3d}: {solver:20s} {spacing:15s} geometric-mean ratio to the best {mean:.3f}")
    print(summary(results, table))
    print(report(results, table))
    if not args.no_write:
        write_table(table)
        write_docs(results, table)


if __name__ == "__main__":
    main()
