"""The comparison behind ``fewstep compare``: every ODE solver at several NFE against the exact answer.

For an exact target (a Gaussian mixture, or the digits data set as a mixture of narrow Gaussians) the
probability-flow ODE is solved to tight tolerance from the same start noise (:func:`reference_solution`);
each solver's error is the RMSE of its samples against that reference.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .sampling import sample
from .schedules import EDM, VP, Cosine, DiscreteVP, Flow, NoiseSchedule
from .solvers import available, get_solver
from .targets import GaussianMixture, digits_target, mixture_2d, reference_solution_from_time

SCHEDULES: dict[str, Callable[[], NoiseSchedule]] = {
    "vp": VP,
    "cosine": Cosine,
    "ddpm": DiscreteVP.linear,
    "sd": DiscreteVP.scaled_linear,
    "edm": EDM,
    "flow": Flow,
}
TARGETS = ("default", "ring", "grid", "wide", "digits")


def make_target(name: str) -> GaussianMixture:
    if name == "digits":
        return digits_target()
    if name not in TARGETS:
        raise ValueError(f"target: choose one of {', '.join(TARGETS)}, got {name!r}")
    return mixture_2d(name)


def make_schedule(name: str) -> NoiseSchedule:
    if name not in SCHEDULES:
        raise ValueError(f"schedule: choose one of {', '.join(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name]()


@dataclass
class Row:
    solver: str
    nfe_asked: int
    nfe: int | None  # the NFE actually spent (the largest feasible one <= asked), None if none
    rmse: float


def _feasible_nfe(solver: str, asked: int, schedule: NoiseSchedule, final_zero: bool) -> int | None:
    """The largest NFE <= asked that the solver can spend exactly."""
    slv = get_solver(solver)
    first_infinite = float(schedule.alpha(schedule.t_max)) == 0.0
    for n in range(asked, 0, -1):
        try:
            slv.steps_for_nfe(n, first_infinite, final_zero)
            return n
        except ValueError:
            continue
    return None


def run_comparison(
    target: GaussianMixture,
    schedule: NoiseSchedule,
    solvers: Sequence[str],
    nfes: Sequence[int],
    *,
    spacing: str = "logsnr",
    prediction: str = "epsilon",
    samples: int = 256,
    seed: int = 0,
) -> tuple[list[Row], Tensor, Tensor]:
    """RMSE of every (solver, NFE) against the exact PF-ODE solution from the same float64 noise."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples, target.dim, generator=gen, dtype=torch.float64)
    noise = noise * float(schedule.sigma(schedule.t_max))
    reference = reference_solution_from_time(target, noise, schedule, schedule.t_max)
    model = target.model(schedule, prediction)
    rows = []
    for name in solvers:
        for asked in nfes:
            nfe = _feasible_nfe(name, asked, schedule, True)
            if nfe is None:
                rows.append(Row(name, asked, None, math.nan))
                continue
            x = sample(model, noise, schedule, name, nfe=nfe, spacing=spacing, prediction=prediction, progress=False)
            rmse = float(torch.sqrt(torch.mean((x - reference) ** 2)))
            rows.append(Row(name, asked, nfe, rmse))
    return rows, noise, reference


def format_table(rows: Sequence[Row], nfes: Sequence[int]) -> str:
    """A plain-text table: one row per solver, one column per NFE; the best per column marked with '*'."""
    solvers = list(dict.fromkeys(r.solver for r in rows))
    cell = {(r.solver, r.nfe_asked): r for r in rows}
    best = {
        n: min((r.rmse for r in rows if r.nfe_asked == n and not math.isnan(r.rmse)), default=math.nan) for n in nfes
    }
    width = 13
    lines = ["solver".ljust(14) + "".join(f"NFE {n}".rjust(width) for n in nfes)]
    lines.append("-" * len(lines[0]))
    for s in solvers:
        parts = []
        for n in nfes:
            r = cell[(s, n)]
            if r.nfe is None:
                text = "-"
            else:
                text = f"{r.rmse:.2e}" + (f"({r.nfe})" if r.nfe != n else "") + ("*" if r.rmse == best[n] else "")
            parts.append(text.rjust(width))
        lines.append(s.ljust(14) + "".join(parts))
    lines.append("RMSE against the exact solution; (k): the solver spent k < NFE evaluations; *: best in column")
    return "\n".join(lines)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["solver", "nfe_asked", "nfe", "rmse"])
        for r in rows:
            w.writerow([r.solver, r.nfe_asked, r.nfe if r.nfe is not None else "", f"{r.rmse:.6e}"])


def plot_errors(rows: Sequence[Row], path: Path, title: str) -> None:
    """Error against NFE, log-log, one line per solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for s in dict.fromkeys(r.solver for r in rows):
        pts = sorted((r.nfe, r.rmse) for r in rows if r.solver == s and r.nfe is not None and r.rmse > 0)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({r.nfe_asked for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("NFE (model evaluations)")
    ax.set_ylabel("RMSE vs exact PF-ODE solution")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def deterministic_solvers() -> list[str]:
    return [info.name for info in available() if not info.stochastic]
