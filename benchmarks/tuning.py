"""Measure ``fewstep.tune`` against the best fixed configuration, and write the table of docs/tuning.md.

For each target (the default 2-D mixture, the 64-D mixture ``mixture_nd``, the digits mixture, the learned MLP and,
where this fewstep has it, the learned digits UNet) on its VP schedule, and each NFE of 5, 6, 8 and 10:

- the held-out noise: ``--holdout`` samples (default 1,024; 512 on the digits targets, whose reference costs more)
  of ``sigma(t_max) N(0, I)`` from seed 1 (the tuning draws its own calibration and held-out batches from seed 0),
  and its reference: the exact probability-flow ODE solution for the mixtures, the network's own tight solve
  (``reference``) for the learned targets. The mixtures' exact denoisers are built ``differentiable``, so that the
  gradient methods get the whole gradient through the run, as through a trained network. The RMSE of a few steps
  on these targets is dominated by the few samples that land in another mode; 256 samples, used before, left the
  minimum over some 400 fixed configurations biased towards the configuration that happened to move none of them;
- the best fixed configuration: the lowest RMSE against the reference of every deterministic fewstep solver on
  every continuous spacing (at the largest NFE <= asked the solver can spend, as benchmarks/defaults.py does);
- each tuning method (``auto``, ``gits``, ``dmn``, ``ld3``) with a calibration batch and a held-out batch (on which
  the tuning decides whether to keep its start) of ``--calibration`` samples each (default 256: a batched call counts
  as one network call, and a larger batch generalises better, and decides better) and a budget of
  ``--budget`` network calls (default 2,000, teacher and backward passes included): its RMSE on the held-out
  noise, the ratio to the best fixed one, its network calls and seconds. ``coefficients`` is ``auto`` with
  ``coefficients=True``; ``stratified`` is that on a stratified batch of 2,048 drawn from a pool of 16,384
  (``pool=``; 1,024 from 4,096 on the digits mixture, whose calls on large batches are the slowest), with 2,048
  (1,024) held-out samples in the tuning; ``refined`` is ``stratified`` with ``coefficients="refine"`` (``auto`` then
  moves the best start's times by GITS and Nelder-Mead, and its fitted weights end to end through the network), and
  ``search_refined`` the same with ``method="search"`` (the per-step search before the refinement).

The measurements go to ``benchmarks/results/tuning.json`` (or ``--results``; resumed from: ``--fresh`` starts over)
and the table, with the cells of every other ``benchmarks/results/tuning*.json``, into docs/tuning.md between its
markers. Usage: ``python benchmarks/tuning.py [--fresh] [--targets default,nd64] [--methods auto,gits]
[--nfes 5,6,8,10] [--calibration 256] [--holdout 1024] [--budget 2000] [--results PATH] [--no-write]``. One CPU
thread; about an hour in all on an idle machine (the digits UNet's first use trains it, a few minutes).
``--fixed-selection`` only checks the baseline: per cell, the best fixed configuration chosen on another draw of
as many samples (seed 2), and its RMSE on the held-out noise over the best there (a table; nothing is written).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import fewstep
from fewstep.bench.compare import _feasible_nfe, deterministic_solvers
from fewstep.bench.metrics import rmse
from fewstep.bench.targets import digits_target, learned_target, mixture_2d, mixture_nd, reference_solution_from_time
from fewstep.spacing import CONTINUOUS_SPACINGS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "tuning.json"
DOC = ROOT / "docs" / "tuning.md"
NFES = (5, 6, 8, 10)
#: ``coefficients``: ``auto`` with ``coefficients=True`` (the fitted non-stationary form of its result);
#: ``stratified``: ``coefficients`` on a stratified calibration batch drawn from a pool (``pool=``, docs/tuning.md);
#: ``refined``: that with ``coefficients="refine"`` (``auto`` is then GITS, Nelder-Mead and the refinement);
#: ``search_refined``: ``refined`` with ``method="search"`` (the per-step search before the refinement)
METHODS = ("auto", "gits", "dmn", "ld3", "coefficients", "stratified", "refined", "search_refined")
#: the ``fewstep.tune`` options of the composite methods (the others are ``tune``'s method of the same name)
COMPOSITE: dict[str, dict[str, Any]] = {
    "coefficients": {"method": "auto", "coefficients": True},
    "stratified": {"method": "auto", "coefficients": True},
    "refined": {"method": "auto", "coefficients": "refine"},
    "search_refined": {"method": "search", "coefficients": "refine"},
}
#: the methods tuned on a stratified batch from a pool
POOLED = ("stratified", "refined", "search_refined")
TARGETS = ("default", "nd64", "digits", "learned", "digits_unet")
HELD_OUT = 1024
#: targets whose reference is costly: at most this many held-out samples
HELD_OUT_COSTLY = {"digits": 512, "digits_unet": 512}
CALIBRATION = 256
BUDGET = 2000
#: ``stratified``: the pool, and the stratified calibration batch and the held-out batch of the tuning (the pool's
#: teacher solve and starts cost time, not calls; the digits mixture's calls on large batches are the slowest)
POOL, POOL_CALIBRATION = 16384, 2048
POOL_COSTLY = {"digits": (4096, 1024), "digits_unet": (2048, 512)}


def make_case(name: str) -> dict[str, Any] | None:
    """``{model, schedule, prediction, dim, reference(noise)}`` of a target (None: not in this fewstep)."""
    schedule = fewstep.VP()
    if name in ("default", "nd64", "digits"):
        target = {"default": mixture_2d, "nd64": lambda: mixture_nd(64), "digits": digits_target}[name]()

        def exact(noise: torch.Tensor) -> torch.Tensor:
            return reference_solution_from_time(target, noise, schedule, schedule.t_max)

        # differentiable: the gradient methods (ld3, refined) follow the answers into the states, as through a network
        return {"model": target.model(schedule, "epsilon", differentiable=True), "schedule": schedule,
                "prediction": "epsilon", "dim": target.dim, "reference": exact}  # fmt: skip
    if name == "learned":
        learned = learned_target()
    elif name == "digits_unet":
        try:
            from fewstep.bench.targets.digits_unet import digits_unet_target
        except ImportError:
            return None
        learned = digits_unet_target()
    else:
        raise ValueError(f"--targets: choose from {', '.join(TARGETS)}, got {name!r}")
    return {"model": learned.model, "schedule": learned.schedule, "prediction": learned.prediction,
            "dim": learned.dim, "reference": learned.reference}  # fmt: skip


def fixed_errors(case: dict[str, Any], noise: torch.Tensor, reference: torch.Tensor, nfe: int) -> dict[str, float]:
    """RMSE of every deterministic solver x continuous spacing at ``nfe`` (or the largest NFE below it)."""
    out: dict[str, float] = {}
    schedule = case["schedule"]
    for solver in deterministic_solvers():
        spent = _feasible_nfe(solver, nfe, schedule, True)
        if spent is None:
            continue
        for spacing in CONTINUOUS_SPACINGS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x = fewstep.sample(
                        case["model"], noise, schedule, solver, nfe=spent, spacing=spacing,
                        prediction=case["prediction"], progress=False,
                    )  # fmt: skip
            except ValueError:
                continue
            value = rmse(x, reference)
            out[f"{solver}|{spacing}"] = value if math.isfinite(value) else math.inf
    return out


def held_out_noise(case: dict[str, Any], count: int, seed: int) -> torch.Tensor:
    """``count`` samples of ``sigma(t_max) N(0, I)`` from ``seed`` (the measurement's: seed 1)."""
    schedule = case["schedule"]
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, case["dim"], generator=gen, dtype=torch.float64) * float(schedule.sigma(schedule.t_max))


def fixed_selection(names: list[str], holdout: int, nfes: tuple[int, ...]) -> None:
    """How much the best fixed configuration gains from being chosen on the very noise it is scored on: per cell, the
    best on the measurement's held-out noise (seed 1), the best on as many other samples (seed 2) with its RMSE there,
    and its RMSE on the measurement's noise over the former's (1: the same configuration). Prints a table, a row as
    each cell is measured."""
    print(
        "| target | NFE | best fixed (on the scored noise) | RMSE | best fixed on other noise | its RMSE there | its RMSE "
        "on the scored noise / best |\n| --- | --- | --- | --- | --- | --- | --- |",
        flush=True,
    )
    for name in names:
        case = make_case(name)
        if case is None:
            continue
        count = min(holdout, HELD_OUT_COSTLY.get(name, holdout))
        scored, other = held_out_noise(case, count, 1), held_out_noise(case, count, 2)
        scored_reference, other_reference = case["reference"](scored), case["reference"](other)
        for nfe in nfes:
            on_scored = fixed_errors(case, scored, scored_reference, nfe)
            on_other = fixed_errors(case, other, other_reference, nfe)
            best, chosen = min(on_scored, key=on_scored.__getitem__), min(on_other, key=on_other.__getitem__)
            print(
                f"| {name} | {nfe} | {best.replace('|', ', ')} | {on_scored[best]:.4g} | {chosen.replace('|', ', ')} "
                f"| {on_other[chosen]:.4g} | {on_scored[chosen] / on_scored[best]:.3f} |",
                flush=True,
            )


def measure(
    name: str, methods: list[str], calibration: int, holdout: int, budget: int, nfes: tuple[int, ...] = NFES
) -> dict[str, Any] | None:
    case = make_case(name)
    if case is None:
        return None
    schedule = case["schedule"]
    noise = held_out_noise(case, min(holdout, HELD_OUT_COSTLY.get(name, holdout)), 1)
    reference = case["reference"](noise)
    cells: dict[str, Any] = {}
    for nfe in nfes:
        fixed = fixed_errors(case, noise, reference, nfe)
        best = min(fixed, key=fixed.__getitem__)
        cell: dict[str, Any] = {"best_fixed": best, "best_fixed_rmse": fixed[best], "methods": {}}
        for method in methods:
            start = time.perf_counter()
            batches: dict[str, Any] = {"calibration": calibration, "holdout": calibration}
            if method in POOLED:
                pool, size = POOL_COSTLY.get(name, (POOL, POOL_CALIBRATION))
                batches = {"pool": pool, "calibration": size, "holdout": size}
            options = COMPOSITE.get(method, {"method": method, "coefficients": False})
            tuned = fewstep.tune(
                case["model"], schedule, nfe=nfe, shape=(case["dim"],), budget=budget, prediction=case["prediction"],
                seed=0, **options, **batches,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            x = fewstep.sample(case["model"], noise, schedule, solver=tuned, prediction=case["prediction"])
            value = rmse(x, reference)
            cell["methods"][method] = {
                "rmse": value, "ratio": value / fixed[best], "calls": tuned.calls, "seconds": seconds,
                "solver": tuned.solver, "start": tuned.start, "times": tuned.times, "errors": tuned.errors,
                "batches": batches,
            }  # fmt: skip
            print(f"{name} NFE {nfe} {method}: ratio {value / fixed[best]:.3f} ({tuned.calls} calls, {seconds:.0f} s)",
                  flush=True)  # fmt: skip
        cell["settings"] = {"calibration": calibration, "holdout": int(noise.shape[0]), "budget": budget}
        cells[str(nfe)] = cell
    return cells


def table(results: dict[str, Any]) -> str:
    methods = [m for m in METHODS if any(m in c["methods"] for r in results.values() for c in r.values())]
    head = (
        "| target | NFE | best fixed (solver, spacing) | RMSE | tuned (auto) RMSE | "
        + " | ".join(f"{m} / best" for m in methods)
        + " | auto calls | auto seconds |"
    )
    out = [head, "|" + " --- |" * (7 + len(methods))]
    ratios: list[float] = []
    fitted: list[float] = []
    paired: list[float] = []  # auto's ratio in the cells measured with fitted coefficients
    pooled: list[float] = []  # the stratified tuning's, and coefficients' in the same cells
    unpooled: list[float] = []
    refined: list[float] = []  # the refined tuning's, and the stratified tuning's in the same cells
    searched: list[float] = []
    for name in TARGETS:
        for nfe in NFES:
            cell = results.get(name, {}).get(str(nfe))
            if cell is None:
                continue
            runs = cell["methods"]
            auto = runs.get("auto", {})
            if auto:
                ratios.append(auto["ratio"])
            if "coefficients" in runs:
                fitted.append(runs["coefficients"]["ratio"])
                paired.append(auto.get("ratio", math.nan))
            if "stratified" in runs:
                pooled.append(runs["stratified"]["ratio"])
                unpooled.append(runs.get("coefficients", {}).get("ratio", math.nan))
            if "refined" in runs:
                refined.append(runs["refined"]["ratio"])
                if "stratified" in runs:
                    searched.append(runs["stratified"]["ratio"])
            out.append(
                f"| {name} | {nfe} | {cell['best_fixed'].replace('|', ', ')} | {cell['best_fixed_rmse']:.4g} | "
                f"{auto.get('rmse', math.nan):.4g} | "
                + " | ".join(f"{runs[m]['ratio']:.2f}" if m in runs else "-" for m in methods)
                + f" | {auto.get('calls', '-')} | {auto.get('seconds', math.nan):.0f} |"
            )
    if ratios:
        out += [
            "",
            f"Over {len(ratios)} cells, the tuned (auto) sampler's RMSE over the best fixed configuration's: median "
            f"{statistics.median(ratios):.2f}, worst {max(ratios):.2f}, best {min(ratios):.2f} (acceptance target: "
            "median <= 0.5, every cell <= 0.7).",
        ]
    if fitted:
        out.append(
            f"With fitted coefficients (`coefficients`, {len(fitted)} cells): median {statistics.median(fitted):.2f}, "
            f"worst {max(fitted):.2f}, best {min(fitted):.2f}; `auto` in the same cells: median "
            f"{statistics.median(paired):.2f}, worst {max(paired):.2f}, best {min(paired):.2f}."
        )
    if pooled:
        out.append(
            f"On a stratified calibration batch from a pool (`stratified`, {len(pooled)} cells): median "
            f"{statistics.median(pooled):.2f}, worst {max(pooled):.2f}, best {min(pooled):.2f}; `coefficients` in the "
            f"same cells: median {statistics.median(unpooled):.2f}, worst {max(unpooled):.2f}, best "
            f"{min(unpooled):.2f}."
        )
    if refined:
        above = sum(r > 0.7 for r in refined)
        out.append(
            f"With the refined weights (`refined`, {len(refined)} cells): median {statistics.median(refined):.2f}, "
            f"worst {max(refined):.2f}, best {min(refined):.2f}, {above} cell{'' if above == 1 else 's'} above 0.7"
            + (
                f"; `stratified` in the {len(searched)} of them where it was measured: median "
                f"{statistics.median(searched):.2f}, worst {max(searched):.2f}, best {min(searched):.2f}."
                if searched
                else "."
            )
        )
    return "\n".join(out)


def merged(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with the cells of the other ``benchmarks/results/tuning*.json`` files it lacks (a target, some of
    its NFEs, or some methods, measured apart with ``--results``); a method's run in ``results`` wins over another
    file's."""
    out: dict[str, dict[str, Any]] = {}
    for source in [*(json.loads(p.read_text()) for p in sorted(RESULTS.parent.glob("tuning*.json"))), results]:
        for name, cells in source.items():
            for nfe, cell in cells.items():
                into = out.setdefault(name, {}).setdefault(nfe, {**cell, "methods": {}})
                if "auto" in cell["methods"]:  # the cell's own fields (best fixed) from the main measurement
                    into.update({key: value for key, value in cell.items() if key != "methods"})
                into["methods"].update(cell["methods"])
    return out


def write_doc(text: str) -> None:
    page = DOC.read_text()
    start, end = "<!-- tuning:start -->\n", "<!-- tuning:end -->"
    a, b = page.index(start) + len(start), page.index(end)
    DOC.write_text(page[:a] + text + "\n" + page[b:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="ignore earlier measurements")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--calibration", type=int, default=CALIBRATION, help="calibration samples per tuning")
    parser.add_argument("--holdout", type=int, default=HELD_OUT, help="held-out samples of the measurement")
    parser.add_argument("--budget", type=int, default=BUDGET, help="network calls per tuning")
    parser.add_argument("--nfes", default=",".join(map(str, NFES)), help="the NFEs measured (default 5,6,8,10)")
    parser.add_argument("--results", default=str(RESULTS), help="the JSON file of the measurements (resumed from)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not rewrite docs/tuning.md")
    parser.add_argument(
        "--fixed-selection", action="store_true",
        help="only check the baseline: the best fixed configuration chosen on other noise, scored on the held-out noise",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.fixed_selection:
        fixed_selection(args.targets.split(","), args.holdout, tuple(int(v) for v in args.nfes.split(",")))
        return
    results: dict[str, Any] = {}
    store = Path(args.results)
    if store.exists() and not args.fresh:
        results = json.loads(store.read_text())
    store.parent.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    for name in args.targets.split(","):
        if name in results:
            continue
        nfes = tuple(int(v) for v in args.nfes.split(","))
        cells = measure(name, methods, args.calibration, args.holdout, args.budget, nfes)
        if cells is None:
            print(f"{name}: not in this fewstep, skipped")
            continue
        results[name] = cells
        store.write_text(json.dumps(results, indent=1, sort_keys=True))
        if not args.no_write:  # the table so far, after each target
            write_doc(table(merged(results)))
    text = table(merged(results))
    print(text)
    if not args.no_write:
        write_doc(text)


if __name__ == "__main__":
    main()
