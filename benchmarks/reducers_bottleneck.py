"""Bottleneck sampling (fewstep.reducers.Bottleneck) against the best plain solver at equal cost.

Target: the digits enlarged to 16 x 16 as an exact mixture at every resolution
(``fewstep.bench.targets.multires.digits_multires``: a call at 8 x 8 is the exact denoiser of the 2 x 2 block means,
a quarter of the pixels and of the work); VP schedule, logSNR spacing, final step to sigma = 0. Reference: the
network's 400-step DPM-Solver++(3M) solve at full resolution (200 steps agree with it to about 1e-5).

Metrics: RMSE against the reference from the same start noise (a deterministic run's error; a run re-noised with
fresh noise ends at another sample of the data, so its RMSE measures that change, not an error) and ``off-data``, the
mean distance per pixel of a sample to its nearest training image (the data's own spread is std = 0.05: exact samples
score about 0.05; blurred or wrong samples more). Cost: network calls at each resolution, their full-resolution
equivalent by the pixel ratio (``sum nfe_i / factor_i^2``), and the wall-clock seconds of the run (the fastest of
``--repeats``, one thread). ``SW2``: the sliced 2-Wasserstein distance to 4,096 exact samples of the data. Each bottleneck row lists the best plain solver (dpmpp_2m, dpmpp_3m, unipc_bh2, ipndm at
NFE 3..12) at no more full-resolution calls than the bottleneck's full-resolution equivalent, and in no more seconds,
by each metric (each the best over the plain runs that qualify). Writes benchmarks/results/reducers_bottleneck.json and .md.
Run: python benchmarks/reducers_bottleneck.py [--samples 256] [--repeats 5]
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
from fewstep.bench.metrics import sliced_wasserstein2
from fewstep.bench.targets.multires import digits_multires
from fewstep.reducers import Bottleneck, Stage

PLAIN = ("dpmpp_2m", "dpmpp_3m", "unipc_bh2", "ipndm")
PLAIN_NFES = tuple(range(3, 13))
SOLVERS = ("dpmpp_2m", "unipc_bh2")
RESULTS = Path(__file__).parent / "results"


def plans() -> dict[str, list[Stage]]:
    """Low-high (the early, noisy steps at 8 x 8) and high-low-high (the paper's workflow) budgets."""
    out: dict[str, list[Stage]] = {}
    for n_low, n_high in ((4, 3), (6, 3), (6, 4), (8, 5), (8, 7)):
        out[f"low{n_low}->high{n_high}"] = [Stage(2, n_low, t_end=0.2), Stage(1, n_high, t_start=0.4)]
    for n_first, n_low, n_high in ((1, 4, 3), (2, 6, 4), (2, 8, 6)):
        out[f"high{n_first}->low{n_low}->high{n_high}"] = [
            Stage(1, n_first, t_end=0.8),
            Stage(2, n_low, t_end=0.2, t_start=0.8),
            Stage(1, n_high, t_start=0.4),
        ]
    return out


@dataclass
class Row:
    method: str
    solver: str
    noise: str
    calls_full: int
    calls_low: int
    full_equivalent: float
    seconds: float
    rmse: float
    off_data: float
    sw2: float
    plain_rmse_equal_cost: float = math.nan
    plain_off_equal_cost: float = math.nan
    plain_sw2_equal_cost: float = math.nan
    plain_off_equal_seconds: float = math.nan
    plain_sw2_equal_seconds: float = math.nan


def timed(run: Any, repeats: int) -> tuple[torch.Tensor, float]:
    best, x = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        x = run()
        best = min(best, time.perf_counter() - start)
    assert x is not None
    return x, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "reducers_bottleneck"), help="path stem of the .json and .md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    target, vp = digits_multires(16), fewstep.VP()
    model = target.model(vp, "epsilon")
    noise = torch.randn(
        args.samples, 1, 16, 16, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64
    )
    reference = fewstep.sample(model, noise, vp, "dpmpp_3m", nfe=400, progress=False)
    means = target.mixture.means

    def rmse(x: torch.Tensor) -> float:
        return float((x - reference).pow(2).mean().sqrt())

    def off(x: torch.Tensor) -> float:
        return float((torch.cdist(x.reshape(x.shape[0], -1), means).min(1).values / 16).mean())

    data = target.mixture.sample(4096, torch.Generator().manual_seed(args.seed + 2))

    def sw2(x: torch.Tensor) -> float:
        return sliced_wasserstein2(x.reshape(x.shape[0], -1), data)

    call_seconds = {}
    for factor in (1, 2):
        x = torch.nn.functional.avg_pool2d(noise, factor) * factor
        _, call_seconds[factor] = timed(lambda x=x: model(x, torch.tensor(0.5, dtype=torch.float64)), 5 * args.repeats)
    rows: list[Row] = []
    for solver in PLAIN:
        for nfe in PLAIN_NFES:
            x, seconds = timed(lambda s=solver, n=nfe: fewstep.sample(model, noise, vp, s, nfe=n, progress=False),
                               args.repeats)  # fmt: skip
            rows.append(Row("plain", solver, "-", nfe, 0, nfe, seconds, rmse(x), off(x), sw2(x)))
    for label, stages in plans().items():
        for solver in SOLVERS:
            for mode in ("fresh", "start"):
                bottleneck = Bottleneck(stages, noise=mode)

                def run(b: Bottleneck = bottleneck, s: str = solver) -> torch.Tensor:
                    g = torch.Generator().manual_seed(args.seed + 1)
                    return b.sample(model, noise, vp, s, generator=g, progress=False)

                x, seconds = timed(run, args.repeats)
                by = bottleneck.counts.by_factor()
                rows.append(Row(label, solver, mode, by.get(1, 0), by.get(2, 0), bottleneck.counts.full_equivalent,
                                seconds, rmse(x), off(x), sw2(x)))  # fmt: skip
    plain = [r for r in rows if r.method == "plain"]
    for r in rows:
        cost = [p for p in plain if p.calls_full <= r.full_equivalent + 1e-9]
        fast = [p for p in plain if p.seconds <= r.seconds]
        r.plain_rmse_equal_cost = min((p.rmse for p in cost), default=math.nan)
        r.plain_off_equal_cost = min((p.off_data for p in cost), default=math.nan)
        r.plain_sw2_equal_cost = min((p.sw2 for p in cost), default=math.nan)
        r.plain_off_equal_seconds = min((p.off_data for p in fast), default=math.nan)
        r.plain_sw2_equal_seconds = min((p.sw2 for p in fast), default=math.nan)
    ref_off, ref_sw2 = off(reference), sw2(reference)
    text = markdown(rows, call_seconds, (ref_off, ref_sw2), args)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("samples", "seed", "repeats")}
    blob = {"settings": settings, "call_seconds": call_seconds, "reference_off_data": ref_off,
            "reference_sw2": ref_sw2, "rows": [asdict(r) for r in rows]}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(blob, indent=1))
    out.with_suffix(".md").write_text(text)


def markdown(rows: list[Row], call_seconds: dict[int, float], floor: tuple[float, float], args: Any) -> str:
    lines = [
        f"{args.samples} samples, 16 x 16 digits mixture; one call: {call_seconds[1] * 1e3:.1f} ms at 16 x 16, "
        f"{call_seconds[2] * 1e3:.1f} ms at 8 x 8 (ratio {call_seconds[1] / call_seconds[2]:.2f}, pixel ratio 4); "
        f"the reference's own off-data {floor[0]:.4f} and SW2 {floor[1]:.4f} (the floor of {args.samples} samples)",
        "",
        "| method | solver | noise | calls 16x16 | calls 8x8 | full-res equivalent | seconds | RMSE | off-data | SW2 "
        "| best plain, equal cost: RMSE | off-data | SW2 | best plain, equal seconds: off-data | SW2 |",
        "|" + "---|" * 15,
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.solver} | {r.noise} | {r.calls_full} | {r.calls_low} | {r.full_equivalent:g} "
            f"| {r.seconds:.4f} | {r.rmse:.4f} | {r.off_data:.4f} | {r.sw2:.4f} | {r.plain_rmse_equal_cost:.4f} "
            f"| {r.plain_off_equal_cost:.4f} | {r.plain_sw2_equal_cost:.4f} | {r.plain_off_equal_seconds:.4f} "
            f"| {r.plain_sw2_equal_seconds:.4f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
