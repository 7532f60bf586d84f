"""Fewer and cheaper network calls (fewstep.reducers) against the best plain solver, at equal network calls and at
equal wall-clock.

Targets: the default 2-D mixture and the 64-D mixture of 200 components (exact references), the learned MLP and the
digits UNet (references: their own 1,000-step solves); VP schedule, logSNR spacing, final step to sigma = 0. Plain
solvers: dpmpp_2m, dpmpp_3m, unipc_bh2, ipndm at NFE 3..20. Reducers (each on dpmpp_2m, teleportation also on
unipc_bh2 and ipndm):

- teleport: the Gaussian fit of data samples (mixtures, and the data the networks were trained on), t_skip by
  ``choose_t_skip(tol)``; the probe calls are a one-off cost per model, listed apart, not in the run's calls;
- teleport_model: the same with the fit estimated from the network (``GaussianFit.from_model``, one call);
- ab_cache: ``ABCache(every=2|3, order=2)``;
- skip: ``SkipCache(threshold, max_skips=1)``;
- sada: ``SADA(threshold, max_skips=1)`` (the stability criterion: the ODE gradient's second-order difference);
- t_stitch: the early requests (lambda below the switch) by a cheap model: the Gaussian fit's exact denoiser on the
  mixtures, a smaller network trained on the same data on the learned targets (its calls listed as substituted).

Columns: requests, network calls of the run's model, substituted requests, RMSE, wall-clock seconds (the fastest of
``--repeats`` runs, single thread), then the RMSE of the same solver without the reducer at the same network calls,
the best plain solver's at the same network calls, and the best plain RMSE reached in at most the same seconds. Writes benchmarks/results/reducers.json and .md.
Run: python benchmarks/reducers.py [--samples 256] [--targets default,nd64,learned,digits_unet] [--repeats 3]
[--methods teleport,ab_cache,skip,sada,t_stitch] [--requests 6,8,10,12,16,20] [--plain-nfes 3-20] [--out STEM]
(the SADA table of docs/reducers.md: --methods sada,skip --targets nd64,learned --requests 20,30,50,100
--plain-nfes 3-100 --repeats 1 --out benchmarks/results/reducers_sada)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import fewstep
from fewstep.bench.targets import (
    digits_unet_target,
    learned_target,
    mixture_2d,
    mixture_nd,
    reference_solution_from_time,
)
from fewstep.bench.targets.digits_unet import DigitsUNetConfig
from fewstep.bench.targets.learned import TrainConfig
from fewstep.reducers import SADA, ABCache, GaussianFit, SkipCache, Teleport, TStitch

PLAIN = ("dpmpp_2m", "dpmpp_3m", "unipc_bh2", "ipndm")
PLAIN_NFES = tuple(range(3, 21))
SKIP_REQUESTS = (6, 8, 10, 12, 16, 20)
METHODS = ("teleport", "ab_cache", "skip", "sada", "t_stitch")
NFES = (4, 5, 6, 8, 10, 12, 16)
TELEPORT_SOLVERS = ("dpmpp_2m", "unipc_bh2", "ipndm")
RESULTS = Path(__file__).parent / "results"
SMALL_MLP = TrainConfig(width=32, depth=2, iterations=4000)
SMALL_UNET = DigitsUNetConfig(channels=8, groups=4, embedding=32, iterations=2000)


@dataclass
class Case:
    name: str
    denoiser: fewstep.Denoiser
    noise: torch.Tensor
    reference: torch.Tensor
    fit: GaussianFit
    shape: tuple[int, ...]
    small: fewstep.Denoiser
    small_label: str


@dataclass
class Result:
    target: str
    method: str
    solver: str
    requests: int
    network: int
    substituted: int
    rmse: float
    seconds: float
    note: str = ""
    same_solver_equal_calls: float = math.nan
    plain_equal_calls: float = math.nan
    plain_equal_seconds: float = math.nan


def cases(names: list[str], samples: int, seed: int) -> list[Case]:
    vp = fewstep.VP()
    out = []
    g = torch.Generator().manual_seed(seed)
    for name in names:
        if name in ("default", "nd64"):
            target = mixture_2d() if name == "default" else mixture_nd()
            noise = torch.randn(samples, target.dim, generator=g, dtype=torch.float64)
            denoiser = fewstep.Denoiser(target.model(vp, "epsilon"), vp, "epsilon")
            reference = reference_solution_from_time(target, noise, vp, vp.t_max)
            data = target.sample(20000, torch.Generator().manual_seed(seed + 1))
            fit = GaussianFit.from_samples(data)
            out.append(Case(name, denoiser, noise, reference, fit, (target.dim,), fit.denoiser(vp), "gaussian fit"))
        elif name == "learned":
            target = learned_target()
            small = learned_target(SMALL_MLP)
            noise = torch.randn(samples, 2, generator=g, dtype=torch.float64)
            fit = GaussianFit.from_samples(target.data.sample(20000, torch.Generator().manual_seed(seed + 1)))
            denoiser = fewstep.Denoiser(target.model, target.schedule, "epsilon")
            small_d = fewstep.Denoiser(small.model, small.schedule, "epsilon")
            out.append(Case(name, denoiser, noise, target.reference(noise), fit, (2,), small_d, "MLP 32x2"))
        elif name == "digits_unet":
            target = digits_unet_target()
            small = digits_unet_target(SMALL_UNET)
            noise = torch.randn(samples, 64, generator=g, dtype=torch.float64)
            fit = GaussianFit.from_samples(target.data.sample(20000, torch.Generator().manual_seed(seed + 1)))
            denoiser = fewstep.Denoiser(target.model, target.schedule, "epsilon")
            small_d = fewstep.Denoiser(small.model, small.schedule, "epsilon")
            out.append(Case(name, denoiser, noise, target.reference(noise), fit, (64,), small_d, "UNet 8 channels"))
        else:
            raise SystemExit(f"--targets: unknown {name!r}; choose from default, nd64, learned, digits_unet")
    return out


def timed(run: Any, repeats: int) -> tuple[torch.Tensor, float, fewstep.CallCount]:
    best, x, calls = math.inf, None, fewstep.CallCount()
    for _ in range(repeats):
        calls = fewstep.CallCount()
        start = time.perf_counter()
        x = run(calls)
        best = min(best, time.perf_counter() - start)
    assert x is not None
    return x, best, calls


def measure(case: Case, method: str, solver: str, nfe: int, repeats: int, **how: Any) -> Result:
    layer, teleport = how.get("layer"), how.get("teleport")

    def run(calls: fewstep.CallCount) -> torch.Tensor:
        if teleport is not None:
            return teleport.sample(case.denoiser, case.noise, solver=solver, nfe=nfe, calls=calls, progress=False)
        wrappers = [] if layer is None else [layer]
        return fewstep.sample(
            case.denoiser, case.noise, solver=solver, nfe=nfe, calls=calls, wrappers=wrappers, progress=False
        )

    x, seconds, calls = timed(run, repeats)
    rmse = float((x - case.reference).pow(2).mean().sqrt())
    return Result(case.name, method, solver, calls.requests, calls.network, calls.substituted, rmse, seconds,
                  how.get("note", ""))  # fmt: skip


def lambda_switch(schedule: fewstep.NoiseSchedule, fraction: float) -> float:
    """The time at ``fraction`` of the lambda span from t_max (T-Stitch's switch)."""
    lam = schedule.lambda_(torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64)).tolist()
    return float(schedule.t_of_lambda(torch.tensor(lam[0] + fraction * (lam[1] - lam[0]), dtype=torch.float64)))


def run_case(
    case: Case,
    repeats: int,
    tol: float,
    methods: set[str],
    requests: tuple[int, ...] = SKIP_REQUESTS,
    plain_nfes: tuple[int, ...] = PLAIN_NFES,
) -> list[Result]:
    rows: list[Result] = []
    for solver in PLAIN:
        for nfe in plain_nfes:
            try:
                rows.append(measure(case, "plain", solver, nfe, repeats))
            except ValueError:
                continue
    if "sada" in methods:
        for threshold in (0.05, 0.1, 0.2):
            for nfe in requests:
                layer = SADA(threshold, max_skips=1)
                rows.append(measure(case, f"sada(threshold={threshold})", "dpmpp_2m", nfe, repeats, layer=layer))
    if "skip" in methods:
        for threshold in (0.05, 0.1):
            for nfe in requests:
                layer = SkipCache(threshold, max_skips=1)
                rows.append(measure(case, f"skip(threshold={threshold})", "dpmpp_2m", nfe, repeats, layer=layer))
    if methods & {"teleport", "ab_cache", "t_stitch"}:
        rows += _others(case, repeats, tol, methods)
    plain = [r for r in rows if r.method == "plain"]
    for r in rows:
        same_calls = [p.rmse for p in plain if p.network == r.network]
        r.same_solver_equal_calls = min((p.rmse for p in plain if p.network == r.network and p.solver == r.solver),
                                        default=math.nan)  # fmt: skip
        r.plain_equal_calls = min(same_calls, default=math.nan)
        r.plain_equal_seconds = min((p.rmse for p in plain if p.seconds <= r.seconds), default=math.nan)
    return rows


def _others(case: Case, repeats: int, tol: float, methods: set[str]) -> list[Result]:
    rows: list[Result] = []
    schedule = case.denoiser.schedule
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float64
    teleports = {}
    if "teleport" in methods:
        teleports["teleport"] = Teleport.auto(case.fit, case.denoiser, case.shape, tol, generator=gen, dtype=dtype)
        model_fit = GaussianFit.from_model(case.denoiser, case.shape, generator=gen, dtype=dtype)
        teleports["teleport_model"] = Teleport.auto(model_fit, case.denoiser, case.shape, tol, generator=gen,
                                                    dtype=dtype)  # fmt: skip
    for label, tp in teleports.items():
        assert tp.choice is not None
        note = f"t_skip={tp.t_skip:.3f}, {tp.choice.network_calls} probe calls once"
        for solver in TELEPORT_SOLVERS:
            for nfe in NFES:
                rows.append(measure(case, label, solver, nfe, repeats, teleport=tp, note=note))
    for every in (2, 3) if "ab_cache" in methods else ():
        for nfe in (6, 8, 10, 12, 16, 20):
            layer = ABCache(every=every, order=2)
            rows.append(measure(case, f"ab_cache(every={every})", "dpmpp_2m", nfe, repeats, layer=layer))
    for fraction in (0.2, 0.35) if "t_stitch" in methods else ():
        t_switch = lambda_switch(schedule, fraction)
        for nfe in NFES:
            layer = TStitch(case.small, t_switch)
            note = f"{case.small_label} for lambda < {fraction:.0%} of the span (t >= {t_switch:.3f})"
            rows.append(measure(case, f"t_stitch({fraction})", "dpmpp_2m", nfe, repeats, layer=layer, note=note))
    return rows


def ints(text: str) -> tuple[int, ...]:
    """``"a-b"`` (inclusive) or ``"a,b,c"``."""
    if "-" in text:
        lo, hi = text.split("-")
        return tuple(range(int(lo), int(hi) + 1))
    return tuple(int(v) for v in text.split(","))


def markdown(rows: list[Result]) -> str:
    head = (
        "| target | method | solver | requests | network | substituted | RMSE | seconds | same solver plain, equal calls "
        "| best plain, equal calls | best plain, equal seconds | note |\n|" + "---|" * 12
    )
    lines = [head]
    for r in rows:
        if r.method == "plain":
            continue
        lines.append(
            f"| {r.target} | {r.method} | {r.solver} | {r.requests} | {r.network} | {r.substituted} | {r.rmse:.4f} "
            f"| {r.seconds:.4f} | {r.same_solver_equal_calls:.4f} | {r.plain_equal_calls:.4f} | {r.plain_equal_seconds:.4f} "
            f"| {r.note} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default="default,nd64,learned,digits_unet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tol", type=float, default=0.01, help="choose_t_skip's tolerance")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"a subset of {','.join(METHODS)}")
    parser.add_argument("--requests", default=",".join(map(str, SKIP_REQUESTS)), help="requests of skip and sada runs")
    parser.add_argument("--plain-nfes", default="3-20", help="NFEs of the plain runs: a range a-b or a list")
    parser.add_argument("--out", default=str(RESULTS / "reducers"), help="path stem of the .json and .md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[Result] = []
    for case in cases(args.targets.split(","), args.samples, args.seed):
        start = time.perf_counter()
        methods = set(args.methods.split(","))
        if not methods <= set(METHODS):
            raise SystemExit(f"--methods: choose from {', '.join(METHODS)}, got {args.methods!r}")
        found = run_case(case, args.repeats, args.tol, methods, ints(args.requests), ints(args.plain_nfes))
        rows += found
        print(markdown(found), flush=True)
        print(f"{case.name}: {time.perf_counter() - start:.0f} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ("samples", "seed", "targets", "repeats", "tol", "methods", "requests", "plain_nfes")
    settings = {k: getattr(args, k) for k in keys}
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": [asdict(r) for r in rows]}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
