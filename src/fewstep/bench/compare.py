"""The comparison behind ``fewstep compare``: every solver at several NFE against the exact answer.

For an exact target (a Gaussian mixture, or the digits data set as a mixture of narrow Gaussians) the
probability-flow ODE is solved to tight tolerance from the same start noise (:func:`reference_solution`);
each ODE solver's error is the RMSE of its samples against that reference. The ``learned`` target (a small
trained network, :func:`~fewstep.bench.targets.learned_target`) has no closed form: its reference is
:func:`~fewstep.bench.targets.learned_reference` (a 1,000-step DPM-Solver-3 solve of the same network from the
same noise), so its RMSE measures the solver's error, not the network's. The ``digits_unet`` target (a tiny UNet
trained on the 8 x 8 digits, :func:`~fewstep.bench.targets.digits_unet_target`) is handled the same way, with
its own reference (``target.reference``) and the digits as its data distribution.

Every solver, stochastic ones included (seeded), also gets distribution metrics against exact samples of
the data distribution (``target.sample(n)``; for ``learned`` the mixture it was trained on): sliced W2,
MMD, and for mixtures the fraction of modes covered; for the digits target also FD-digits, the Frechet
distance between the features of a small digits classifier (:func:`fewstep.bench.metrics.fd_digits`; *not*
Inception FID, comparable only with other FD-digits values).

The conditional targets (``labelled_2d``, ``labelled_64d``, ``labelled_digits``: class-labelled mixtures,
:mod:`fewstep.bench.targets.conditional`) run every sampler on the exact class-conditional network with the labels
``0, 1, ..., C - 1, 0, 1, ...`` over the samples and, with ``guidance=w``, classifier-free guidance at scale ``w``
(the unconditional branch gets the null label -1; without it, ``w = 1``: the conditional model alone). The RMSE is
then against the exact solution of the guided probability-flow ODE (:class:`~fewstep.bench.targets.GuidedMixture`)
from the same noise, and the distribution metrics compare with its exact solutions from independent noise (exact
samples of the guided sampler's limit, which is not the tilted distribution ``p(x|y)^w p(x)^(1-w)``).

With ``peers=True`` the peer libraries' samplers (diffusers, k-diffusion; :mod:`fewstep.bench.peers`) run on the
same target, schedule, start noise and NFE budget and get the same metrics, in rows with ``library`` set.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..sampling import sample
from ..schedules import EDM, VP, Cosine, DiscreteVP, Flow, MeanReverting, NoiseSchedule
from ..solvers import available, get_solver
from .catalog import CONDITIONAL_TARGETS
from .metrics import _kernel_sum, median_bandwidth, mode_coverage, sliced_wasserstein2
from .output import atomic_write_bytes, atomic_write_text
from .targets.conditional import NULL_LABEL

if TYPE_CHECKING:
    from .peers import PeerGuidance
from .targets import (
    DigitsUNetTarget,
    GaussianMixture,
    GuidedMixture,
    LabelledMixture,
    LearnedTarget,
    digits_target,
    digits_unet_target,
    labelled_digits,
    labelled_mixture_2d,
    labelled_mixture_nd,
    learned_target,
    mixture_2d,
    mixture_image,
    mixture_nd,
    reference_solution_from_time,
)

SCHEDULES: dict[str, Callable[[], NoiseSchedule]] = {
    "vp": VP,
    "cosine": Cosine,
    "ddpm": DiscreteVP.linear,
    "sd": DiscreteVP.scaled_linear,
    "edm": EDM,
    "flow": Flow,
    "mean_reverting": MeanReverting,  # on the shifted variable x - mu (mu = 0 here: the exact targets' own data)
}
MIXTURES_2D = ("default", "ring", "grid", "wide", "unbalanced")
TARGETS = (*MIXTURES_2D, "nd64", "image", "digits", "learned", "digits_unet", *CONDITIONAL_TARGETS)
Target = GaussianMixture | LearnedTarget | DigitsUNetTarget | LabelledMixture
#: The trained networks: they bring their own schedule, prediction and reference (``target.reference(noise)``).
LEARNED_TARGETS = (LearnedTarget, DigitsUNetTarget)


def make_target(name: str) -> Target:
    """The target called ``name`` (one of :data:`TARGETS`); ``learned`` and ``digits_unet`` train once (about 30 s
    and 2 minutes), then load."""
    if name == "digits":
        return digits_target()
    if name == "nd64":
        return mixture_nd(64)
    if name == "image":
        return mixture_image()
    if name == "learned":
        return learned_target()
    if name == "digits_unet":
        return digits_unet_target()
    if name == "labelled_2d":
        return labelled_mixture_2d()
    if name == "labelled_64d":
        return labelled_mixture_nd(64)
    if name == "labelled_digits":
        return labelled_digits()
    if name not in MIXTURES_2D:
        raise ValueError(f"target: choose one of {', '.join(TARGETS)}, got {name!r}")
    return mixture_2d(name)


def make_schedule(name: str) -> NoiseSchedule:
    if name not in SCHEDULES:
        raise ValueError(f"schedule: choose one of {', '.join(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name]()


def reference_name(target: Target, guidance: float | None = None) -> str:
    """What a target's RMSE is measured against, in words: the network's own tight solve, or the exact solution."""
    if isinstance(target, LEARNED_TARGETS):
        steps = target.reference_steps if isinstance(target, DigitsUNetTarget) else 1000
        return f"learned_reference ({steps:,}-step DPM-Solver-3)"
    if isinstance(target, LabelledMixture):
        return (
            f"exact guided PF-ODE solution (CFG scale {1.0 if guidance is None else guidance:g}, tight-tolerance solve)"
        )
    return "exact PF-ODE solution (tight-tolerance solve)"


def data_distribution(target: Target) -> GaussianMixture:
    """The exact data distribution: the mixture itself (all classes of a labelled one), or the mixture a learned
    target was trained on."""
    if isinstance(target, LabelledMixture):
        return target.mixture
    return target.data if isinstance(target, LEARNED_TARGETS) else target


@dataclass(frozen=True)
class GuidedRun:
    """A conditional target's run: the labels of the samples (cycling through the classes) and the CFG scale, which
    every sampler of the comparison is given (fewstep's through ``model_kwargs`` / ``uncond_kwargs`` /
    ``guidance_scale``, the peers' through :class:`~fewstep.bench.peers.PeerGuidance`)."""

    target: LabelledMixture
    labels: Tensor
    scale: float

    @classmethod
    def of(cls, target: Target, guidance: float | None, samples: int) -> GuidedRun | None:
        """The run's guidance, or None for an unconditional target (ValueError with ``guidance`` given there)."""
        if not isinstance(target, LabelledMixture):
            if guidance is not None:
                raise ValueError(
                    f"guidance: needs a conditional target (its network takes class labels), got {target!r}; choose "
                    f"one of {', '.join(CONDITIONAL_TARGETS)}"
                )
            return None
        scale = 1.0 if guidance is None else guidance
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ValueError(f"guidance: the CFG scale must be a finite number, got {guidance!r}")
        return cls(target, torch.arange(samples) % target.num_classes, float(scale))

    @property
    def null(self) -> Tensor:
        return torch.full_like(self.labels, NULL_LABEL)

    def sample_kwargs(self) -> dict[str, Any]:
        """``fewstep.sample``'s conditioning and CFG options for this run."""
        return {"model_kwargs": {"y": self.labels}, "uncond_kwargs": {"y": self.null}, "guidance_scale": self.scale}

    def exact(self) -> GuidedMixture:
        """The exact target of the guided probability-flow ODE."""
        return self.target.guided(self.labels, self.scale)

    def peer(self) -> PeerGuidance:
        """The same guidance for the peer libraries (:class:`fewstep.bench.peers.PeerGuidance`)."""
        from .peers import PeerGuidance

        return PeerGuidance(self.labels, self.null, self.scale)


@dataclass
class Row:
    solver: str
    nfe_asked: int
    nfe: int | None  # the NFE actually spent (the largest feasible one <= asked), None if none
    rmse: float  # against the reference from the same noise; NaN for stochastic solvers
    stochastic: bool = False
    sw2: float = math.nan  # sliced W2 against exact samples of the data distribution
    mmd: float = math.nan  # squared MMD (biased) against the same exact samples
    coverage: float = math.nan  # fraction of mixture components reached
    fd_digits: float = math.nan  # FD-digits against the exact samples (digits target only)
    library: str = "fewstep"  # fewstep, diffusers or k-diffusion
    nonfinite: bool = False  # the run raised or returned inf / NaN
    seconds: float = math.nan  # the run's wall-clock time
    model_seconds: float = math.nan  # of which inside the model-call stack (network, guidance, conversion)
    solver_seconds: float = math.nan  # the rest: the solver's own work


METRICS = ("rmse", "sw2", "mmd", "coverage", "fd_digits", "seconds", "model_seconds", "solver_seconds")


class ModelClock:
    """An evaluation layer that adds the wall-clock time spent below it (the model-call stack) to ``seconds``. On an
    accelerator the times are only meaningful with synchronised calls (as on the CPU, where the targets run)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, inner: Callable[..., Any], needs_eps: bool, calls: Any) -> Callable[..., Any]:
        def evaluate(x: Tensor, p: Any) -> Any:
            start = time.perf_counter()
            out = inner(x, p)
            self.seconds += time.perf_counter() - start
            return out

        return evaluate


def timed(row: Row, run: Callable[[list[Any]], Tensor]) -> Tensor:
    """``run([clock])`` (a sample call given its wrappers), its wall-clock split into the row's ``seconds``,
    ``model_seconds`` and ``solver_seconds``."""
    clock = ModelClock()
    start = time.perf_counter()
    x = run([clock])
    row.seconds = time.perf_counter() - start
    row.model_seconds, row.solver_seconds = clock.seconds, row.seconds - clock.seconds
    return x


@dataclass
class Comparison:
    """Everything one run produced: rows, the start noise, the reference, exact samples, and the samples of
    every solver at the smallest NFE (for the scatter / image grids)."""

    rows: list[Row]
    noise: Tensor
    reference: Tensor
    exact: Tensor
    first_samples: dict[str, Tensor]


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


def _stochastic(solver: str) -> bool:
    return any(i.name == solver and i.stochastic for i in available())


def compare(
    target: Target,
    schedule: NoiseSchedule,
    solvers: Sequence[str],
    nfes: Sequence[int],
    *,
    spacing: str = "logsnr",
    prediction: str = "epsilon",
    samples: int = 256,
    seed: int = 0,
    progress: bool = False,
    peers: bool = False,
    schedule_name: str | None = None,
    done: Mapping[tuple[str, int], Row] | None = None,
    tuned: Mapping[str, Any] | None = None,
    guidance: float | None = None,
    timing: bool = False,
) -> Comparison:
    """Run every (solver, NFE): RMSE against the reference from the same float64 noise (ODE solvers), and
    sliced W2 / MMD / mode coverage against ``samples`` exact samples of the data distribution (all solvers;
    stochastic ones seeded from ``seed``). A learned target uses its own schedule and prediction.

    ``peers``: also run the importable peer libraries (:mod:`fewstep.bench.peers`): k-diffusion on every schedule,
    diffusers on DiscreteVP schedules (``schedule_name`` sd / ddpm, or any DiscreteVP built by
    ``DiscreteVP.linear`` / ``scaled_linear``).

    ``done``: rows of an earlier run with the same target, schedule, spacing, prediction, samples and seed, by
    ``(solver, nfe_asked)``; those rows are reused instead of recomputed (a row depends on nothing else), except
    that the solvers :func:`plot_samples` shows are run again at the smallest NFE for their samples
    (``first_samples`` then holds only those). Peer rows are reused as a whole when ``done`` holds rows of the
    same peer libraries (the caller passes them only for the same NFE list: a peer's spacing is chosen over all
    NFEs).

    ``tuned``: :class:`fewstep.TunedSampler` s by label, each run from the same noise at its own NFE, in a row
    named ``tuned:<label>`` (ValueError when one was tuned for another schedule).

    ``guidance``: the CFG scale of a conditional target (:data:`CONDITIONAL_TARGETS`; None: 1, the conditional model
    alone); a ValueError for any other target. Every sampler, peers included, runs with the same labels and scale,
    and the reference is the exact guided solution (module docstring).

    ``timing``: record each fewstep run's wall-clock in its row (``seconds``, split into ``model_seconds`` inside the
    model-call stack and ``solver_seconds``); off by default, so that a seeded comparison's files are reproducible
    byte for byte."""
    done = done or {}
    guided = GuidedRun.of(target, guidance, samples)
    cond: dict[str, Any] = guided.sample_kwargs() if guided is not None else {}
    if isinstance(target, LEARNED_TARGETS):
        schedule, prediction = target.schedule, target.prediction
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples, target.dim, generator=gen, dtype=torch.float64)
    noise = noise * float(schedule.sigma(schedule.t_max))
    data = data_distribution(target)
    if guided is not None:  # the guided ODE's exact solutions from independent noise
        g1 = torch.Generator().manual_seed(seed + 1)
        exact_noise = torch.randn(samples, target.dim, generator=g1, dtype=torch.float64)
        exact_noise = exact_noise * float(schedule.sigma(schedule.t_max))
        exact = reference_solution_from_time(guided.exact(), exact_noise, schedule, schedule.t_max)
    else:
        exact = data.sample(samples, generator=torch.Generator().manual_seed(seed + 1))
    stochastic = {name: _stochastic(name) for name in solvers}
    mmd_to = _MMD(exact)
    fd_to = _FDDigits(exact) if tuple(getattr(data, "image_shape", None) or ()) == (8, 8) else None
    reference: Tensor
    if peers or not all(stochastic.values()):
        if isinstance(target, LEARNED_TARGETS):
            reference = target.reference(noise)
        elif guided is not None:
            reference = reference_solution_from_time(guided.exact(), noise, schedule, schedule.t_max)
        else:
            reference = reference_solution_from_time(data, noise, schedule, schedule.t_max)
    else:
        reference = torch.full_like(noise, math.nan)
    model: Callable[..., Tensor] = (
        target.model if isinstance(target, LEARNED_TARGETS) else target.model(schedule, prediction)
    )
    rows: list[Row] = []
    first: dict[str, Tensor] = {}
    runs = [(name, asked) for name in solvers for asked in nfes]
    smallest = min(nfes)
    feasible = [n for n in solvers if done and _feasible_nfe(n, smallest, schedule, True) is not None]
    shown = set(sample_panels(feasible))  # run again at the smallest NFE (with done) for plot_samples
    bar = _progress(len(runs), progress)
    for name, asked in runs:
        bar.set_postfix_str(f"{name} NFE {asked}")
        if (name, asked) in done and not (asked == smallest and name in shown):
            rows.append(done[name, asked])
            bar.update(1)
            continue
        nfe = _feasible_nfe(name, asked, schedule, True)
        if nfe is None:
            rows.append(Row(name, asked, None, math.nan, stochastic[name]))
            bar.update(1)
            continue
        g = torch.Generator().manual_seed(_run_seed(seed, name, asked)) if stochastic[name] else None
        row = Row(name, asked, nfe, math.nan, stochastic[name])

        def run(wrappers: list[Any], name: str = name, nfe: int = nfe, g: torch.Generator | None = g) -> Tensor:
            return sample(
                model, noise, schedule, name, nfe=nfe, spacing=spacing, prediction=prediction, generator=g,
                progress=False, wrappers=wrappers, **cond,
            )  # fmt: skip

        x = timed(row, run) if timing else run([])
        if (name, asked) in done:  # run again only for its samples
            rows.append(done[name, asked])
        else:
            row.rmse = math.nan if stochastic[name] else float(torch.sqrt(torch.mean((x - reference) ** 2)))
            _distribution_metrics(row, x, exact, data, mmd_to, fd_to)
            rows.append(row)
        if asked == smallest and (not done or name in shown):
            first[name] = x
        bar.update(1)
    bar.close()
    for label, sampler in (tuned or {}).items():
        sampler.check(schedule=schedule)
        x = sample(model, noise, schedule, solver=sampler, prediction=prediction, progress=False, **cond)
        row = Row(f"tuned:{label}", sampler.nfe, sampler.nfe, float(torch.sqrt(torch.mean((x - reference) ** 2))))
        _distribution_metrics(row, x, exact, data, mmd_to, fd_to)
        rows += [row if n == sampler.nfe else Row(row.solver, n, None, math.nan) for n in nfes]  # "-" elsewhere
    if peers:
        old_peers = [r for r in done.values() if r.library != "fewstep"]
        if old_peers and {r.library for r in old_peers} == set(_peer_libraries(schedule_name)):
            rows += old_peers
        else:
            peer_guidance = guided.peer() if guided is not None else None
            rows += _peer_rows(
                model, schedule, schedule_name, noise, reference, nfes, prediction, exact, data, mmd_to, fd_to,
                peer_guidance,
            )  # fmt: skip
    return Comparison(rows, noise, reference, exact, first)


def _run_seed(seed: int, solver: str, nfe: int) -> int:
    """The noise seed of one stochastic run: a function of ``--seed``, the solver's name and the NFE only, so a
    row does not change with the other solvers in the run (or the order of the registry)."""
    return (seed * 1_000_003 + zlib.crc32(solver.encode()) * 7919 + nfe) % 2**63


def _distribution_metrics(
    row: Row, x: Tensor, exact: Tensor, data: GaussianMixture, mmd_to: _MMD, fd_to: _FDDigits | None
) -> None:
    if bool(torch.all(torch.isfinite(x))):
        row.sw2 = sliced_wasserstein2(x, exact, projections=128)
        row.mmd = mmd_to(x)
        row.coverage = mode_coverage(x, data).coverage
        if fd_to is not None:
            row.fd_digits = fd_to(x)
    else:
        row.nonfinite = True


def _peer_libraries(schedule_name: str | None) -> list[str]:
    """The importable peer libraries that run on this schedule (diffusers: DiscreteVP schedules only)."""
    from .peers import available_peers

    return [
        lib
        for lib in available_peers()
        if lib != "diffusers" or schedule_name is None or schedule_name in ("sd", "ddpm")
    ]


def _peer_rows(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    schedule_name: str | None,
    noise: Tensor,
    reference: Tensor,
    nfes: Sequence[int],
    prediction: str,
    exact: Tensor,
    data: GaussianMixture,
    mmd_to: _MMD,
    fd_to: _FDDigits | None,
    guidance: PeerGuidance | None = None,
) -> list[Row]:
    from . import peers as p

    libs = _peer_libraries(schedule_name)
    runs: list[p.PeerRun] = []
    if "diffusers" in libs:
        runs += p.diffusers_runs(model, schedule, noise, reference, nfes, prediction, guidance=guidance)
    if "k-diffusion" in libs:
        runs += p.kdiffusion_runs(model, schedule, noise, nfes, prediction, reference=reference, guidance=guidance)
    rows = []
    for r in runs:
        row = Row(f"{r.library}:{r.label}", r.nfe_asked, r.nfe, math.nan, library=r.library)
        if r.x is None:
            row.nonfinite = True
            warnings.warn(f"peer {row.solver} at NFE {r.nfe_asked} failed: {r.error}", RuntimeWarning, stacklevel=2)
        else:
            x = r.x.detach().to(torch.float64)
            _distribution_metrics(row, x, exact, data, mmd_to, fd_to)
            if not row.nonfinite:
                row.rmse = float(torch.sqrt(torch.mean((x - reference) ** 2)))
        rows.append(row)
    return rows


class _FDDigits:
    """:func:`fewstep.bench.metrics.fd_digits` against one fixed set of exact samples (features computed once)."""

    def __init__(self, y: Tensor) -> None:
        from .metrics import DigitsFeatures

        self.features = DigitsFeatures()
        self.fy = self.features(y.reshape(y.shape[0], -1).to(torch.float64))

    def __call__(self, x: Tensor) -> float:
        from .metrics import frechet_distance

        return frechet_distance(self.features(x.reshape(x.shape[0], -1).to(torch.float64)), self.fy)


class _MMD:
    """:func:`fewstep.bench.metrics.mmd` (biased, default bandwidths) against one fixed ``y``, its self-term cached."""

    def __init__(self, y: Tensor) -> None:
        self.y = y.reshape(y.shape[0], -1).to(torch.float64)
        h0 = median_bandwidth(self.y)
        self.inv2h2 = 1.0 / (2.0 * torch.tensor([0.5 * h0, h0, 2.0 * h0], dtype=torch.float64) ** 2)
        self.kyy = _kernel_sum(self.y, self.y, self.inv2h2, False) / self.y.shape[0] ** 2

    def __call__(self, x: Tensor) -> float:
        a = x.reshape(x.shape[0], -1).to(torch.float64)
        n, m = a.shape[0], self.y.shape[0]
        kxx = _kernel_sum(a, a, self.inv2h2, False) / (n * n)
        kxy = _kernel_sum(a, self.y, self.inv2h2, False) / (n * m)
        return float(kxx + self.kyy - 2.0 * kxy)


class _NoBar:
    def set_postfix_str(self, _s: str) -> None: ...
    def update(self, _n: int) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr, when enabled and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="run", leave=False)


LABELS = {
    "rmse": "RMSE against the exact solution",
    "sw2": "sliced W2 against exact samples of the data distribution",
    "mmd": "squared MMD against exact samples of the data distribution",
    "coverage": "fraction of mixture modes covered",
    "fd_digits": "FD-digits (Frechet distance of digits-classifier features; not Inception FID) against exact samples",
    "seconds": "wall-clock seconds of the run",
    "model_seconds": "wall-clock seconds of the run inside the model-call stack",
    "solver_seconds": "wall-clock seconds of the run outside the model-call stack (the solver's own work)",
}


def format_table(rows: Sequence[Row], nfes: Sequence[int], metric: str = "rmse") -> str:
    """A plain-text table of ``metric``: one row per solver, one column per NFE; the best per column marked
    with '*' (lowest; highest for coverage). RMSE tables leave out stochastic solvers."""
    rows = [r for r in rows if not (metric == "rmse" and r.stochastic)]
    solvers = list(dict.fromkeys(r.solver for r in rows))
    cell = {(r.solver, r.nfe_asked): r for r in rows}
    pick = max if metric == "coverage" else min
    best = {
        n: pick(
            (getattr(r, metric) for r in rows if r.nfe_asked == n and not math.isnan(getattr(r, metric))),
            default=math.nan,
        )
        for n in nfes
    }
    width = 14
    name_w = max([24, *(len(s) + 7 for s in solvers)])
    lines = ["solver".ljust(name_w) + "".join(f"NFE {n}".rjust(width) for n in nfes)]
    lines.append("-" * len(lines[0]))
    for s in solvers:
        parts = []
        for n in nfes:
            r = cell[(s, n)]
            v = getattr(r, metric)
            if r.nonfinite:
                text = "nan!"
            elif r.nfe is None or math.isnan(v):
                text = "-"
            else:
                num = f"{v:.3f}" if metric == "coverage" else f"{v:.2e}"
                text = num + (f"({r.nfe})" if r.nfe != n else "") + ("*" if v == best[n] else "")
            parts.append(text.rjust(width))
        lines.append((s + (" (sde)" if r.stochastic else "")).ljust(name_w) + "".join(parts))
    note = f"{LABELS[metric]}; (k): the solver spent k < NFE evaluations; *: best in column"
    if any(r.library != "fewstep" for r in rows):
        note += "; diffusers:/k-diffusion: rows are peer libraries"
    if any(r.nonfinite for r in rows):
        note += "; nan!: the run raised or returned inf/NaN"
    lines.append(note)
    return "\n".join(lines)


CSV_FIELDS = ("library", "solver", "stochastic", "nonfinite", "nfe_asked", "nfe", *METRICS)


def row_dict(r: Row) -> dict[str, Any]:
    """A row as plain values (NaN as None)."""
    d = asdict(r)
    return {k: (None if isinstance(d[k], float) and math.isnan(d[k]) else d[k]) for k in CSV_FIELDS}


def row_from_dict(d: Mapping[str, Any]) -> Row:
    """The inverse of :func:`row_dict` (None back to NaN)."""
    floats = {"rmse", *METRICS}
    values: dict[str, Any] = {k: (math.nan if d.get(k) is None and k in floats else d.get(k)) for k in CSV_FIELDS}
    return Row(**values)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """One line per (solver, NFE): ``library, solver, stochastic, nonfinite, nfe_asked, nfe, rmse, sw2, mmd,
    coverage, fd_digits`` (empty where a value does not apply). Written atomically."""
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(CSV_FIELDS)
    for r in rows:
        d = row_dict(r)
        w.writerow(["" if d[k] is None else (f"{d[k]:.6e}" if isinstance(d[k], float) else d[k]) for k in CSV_FIELDS])
    atomic_write_text(path, f.getvalue())


def write_json(rows: Sequence[Row], settings: dict[str, Any], path: Path) -> None:
    """``{"settings": ..., "rows": [...]}``: the same rows as the CSV (full precision; null for NaN). Written
    atomically."""
    atomic_write_text(path, json.dumps({"settings": settings, "rows": [row_dict(r) for r in rows]}, indent=1) + "\n")


def _savefig(fig: Any, path: Path) -> None:
    """Render ``fig`` as PNG in memory, then write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "fewstep"
    return plt


#: How many series each panel of :func:`plot_errors` highlights (the rest are drawn faint, without a legend entry).
TOP_K = 6


def _top(rows: Sequence[Row], metric: str, k: int) -> list[str]:
    """The ``k`` solvers with the smallest mean log ``metric`` over the NFEs they ran (fewstep's and the peers')."""
    scores: dict[str, list[float]] = {}
    for r in rows:
        value = getattr(r, metric)
        if r.nfe is not None and value > 0 and math.isfinite(value):
            scores.setdefault(r.solver, []).append(math.log(value))
    return sorted(scores, key=lambda s: sum(scores[s]) / len(scores[s]))[:k]


def plot_errors(rows: Sequence[Row], path: Path, title: str) -> None:
    """Error against NFE, log-log: RMSE of the ODE solvers (left), sliced W2 of every solver (right). The
    :data:`TOP_K` best series of each panel are drawn in colour with a legend outside the axes, the rest faint."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    ticks = sorted({r.nfe_asked for r in rows})
    peers = any(r.library != "fewstep" for r in rows)
    tops = {metric: _top(rows, metric, TOP_K) for metric in ("rmse", "sw2")}
    colour = {s: f"C{k % 10}" for k, s in enumerate(dict.fromkeys(tops["rmse"] + tops["sw2"]))}  # one per solver
    marker = {s: "osd^vP<>ph"[k % 10] for k, s in enumerate(colour)}
    for ax, metric in zip(axes, ("rmse", "sw2"), strict=True):
        top = tops[metric]
        for s in dict.fromkeys(r.solver for r in rows):
            pts = sorted(
                (r.nfe, getattr(r, metric))
                for r in rows
                if r.solver == s and r.nfe is not None and getattr(r, metric) > 0
            )
            if not pts:
                continue
            sto = any(r.stochastic for r in rows if r.solver == s)
            peer = any(r.library != "fewstep" for r in rows if r.solver == s)
            style = {"ls": "--" if sto else (":" if peer else "-")}
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if s in top:
                ax.plot(xs, ys, marker=marker[s], color=colour[s], lw=2, label=s, zorder=3, **style)
            else:
                ax.plot(xs, ys, color="0.75", lw=0.8, alpha=0.6, zorder=1, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("NFE (model evaluations)")
        ax.set_ylabel("RMSE vs exact PF-ODE solution" if metric == "rmse" else "sliced W2 vs exact samples")
        kinds = "dashed: stochastic" + (", dotted: peer libraries" if peers else "")
        ax.set_title(title if metric == "rmse" else f"all solvers ({kinds})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=f"best {TOP_K}", frameon=False)
    fig.tight_layout()
    try:
        _savefig(fig, path)
    finally:
        plt.close(fig)


def plot_cost(rows: Sequence[Row], path: Path, title: str) -> bool:
    """RMSE against wall-clock seconds, log-log, one line per deterministic solver over its NFEs (the
    :data:`TOP_K` best at the largest NFE in colour, the rest faint). False (nothing written) when no row was
    timed."""
    timed_rows = [r for r in rows if r.nfe is not None and r.seconds > 0 and r.rmse > 0 and not r.stochastic]
    if not timed_rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    top = _top(timed_rows, "rmse", TOP_K)
    for k, s in enumerate(dict.fromkeys(r.solver for r in timed_rows)):
        pts = sorted((r.seconds, r.rmse) for r in timed_rows if r.solver == s)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if s in top:
            ax.plot(xs, ys, marker="osd^vP<>ph"[k % 10], lw=2, label=s, zorder=3)
        else:
            ax.plot(xs, ys, color="0.75", lw=0.8, alpha=0.6, zorder=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall-clock seconds of the run (model and solver)")
    ax.set_ylabel("RMSE vs reference")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=f"best {TOP_K}", frameon=False)
    fig.tight_layout()
    try:
        _savefig(fig, path)
    finally:
        plt.close(fig)
    return True


def sample_panels(names: Sequence[str], k: int = 5) -> list[str]:
    """The solvers (of ``names``, in the run's order) whose samples :func:`plot_samples` shows: up to ``k``,
    a few well-known ones first."""
    preferred = ("ddim", "dpmpp_2m", "ipndm", "unipc_bh2", "euler_ancestral", "dpmpp_2m_sde")
    out = [n for n in preferred if n in names]
    out += [n for n in names if n not in out]
    return out[:k]


def plot_samples(comparison: Comparison, path: Path, nfe: int, image_shape: tuple[int, ...] | None, k: int = 5) -> None:
    """Exact samples and the first ``k`` solvers' samples at the smallest NFE: scatter plots for 2-D targets,
    an image grid (16 samples each) for image targets."""
    plt = _plt()
    names = sample_panels(list(comparison.first_samples), k)
    panels = [("exact samples", comparison.exact), *[(n, comparison.first_samples[n]) for n in names]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), squeeze=False)
    for ax, (name, x) in zip(axes[0], panels, strict=True):
        x = x.detach().to(torch.float64)
        if image_shape is None:
            ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.6)
            lim = float(comparison.exact.abs().max()) * 1.3
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
        else:
            h, w = image_shape[-2:]
            imgs = x[:16].reshape(-1, *image_shape)
            n = imgs.shape[0]
            grid = (
                torch.zeros(4 * (h + 1), 4 * (w + 1))
                if len(image_shape) == 2
                else torch.ones(4 * (h + 1), 4 * (w + 1), image_shape[0])
            )
            for j in range(n):
                r, c = divmod(j, 4)
                img = imgs[j].clamp(-1, 1) * 0.5 + 0.5
                if len(image_shape) == 3:
                    img = img.permute(1, 2, 0)
                grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img.float()
            ax.imshow(grid.numpy(), cmap="gray_r" if len(image_shape) == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(name if name == "exact samples" else f"{name}, NFE {nfe}", fontsize=9)
    fig.tight_layout()
    try:
        _savefig(fig, path)
    finally:
        plt.close(fig)


def deterministic_solvers() -> list[str]:
    return [info.name for info in available() if not info.stochastic]


def all_solvers() -> list[str]:
    """Every registered solver: the ODE solvers first, then the stochastic ones."""
    return deterministic_solvers() + [info.name for info in available() if info.stochastic]
