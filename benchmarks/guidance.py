"""Classifier-free guidance at few NFE: fewstep's best configuration against the peers' best, on exact guided targets.

On the class-labelled exact targets of ``fewstep compare`` (``labelled_2d``: the default 2-D mixture in 4 angle
sectors; ``labelled_64d``: the 64-D mixture in 10 classes), with CFG at scale 7.5 on the ``sd`` schedule (diffusers'
schedulers need a DiscreteVP schedule), from the same float64 noise and the same labels (the classes in turn): the
RMSE against the exact solution of the guided probability-flow ODE (:class:`fewstep.bench.targets.GuidedMixture`,
DOP853 at rtol = atol = 1e-11; its distance to a 1e-8 solve is recorded) of

- every deterministic fewstep solver on every spacing, run with ``guidance_scale=`` / ``uncond_kwargs=``;
- samplers fitted to the guided model by ``fewstep.tune`` per NFE (:data:`TUNE_METHODS`: the per-step search and
  Nelder-Mead on the times; 6,000 network calls each, calibrated on their own noise of :data:`TUNE_CALIBRATION`
  samples from seeds 1 and 3, disjoint from the benchmark's batches; :data:`LARGE_METHODS`: the per-step search on
  four times as many calibration samples with 20,000 calls, from two draws; :data:`HARD_METHODS`: the per-step
  search on stratified calibration batches that hold more of the trajectories few-step samplers send to another
  mode (:func:`hard_calibration`); :data:`GROWN_FROM`: the per-step search started from such a sampler of a smaller
  NFE, its steps split (``fewstep.tune(..., start=)``); ``--no-tune`` leaves them out);
- the solvers that led that grid (:data:`SPACING_SOLVERS`) on spacings with tuned options (:data:`TUNED_SPACINGS`:
  Karras and polyexponential ``rho``, beta ``a``, ``b``; ``--no-spacings`` leaves them out);
- every deterministic k-diffusion sampler (:data:`fewstep.bench.peers.KDIFFUSION_ODE`) on Karras, exponential and
  polyexponential sigmas, through a CFG denoiser (``u + w (c - u)`` on the denoised output);
- every diffusers scheduler of :data:`fewstep.bench.peers.DIFFUSERS` on its default timesteps, linspace / leading /
  trailing, and the Karras / exponential / beta / Lu-lambda sigmas where it takes them, in a pipeline's CFG loop.

A configuration may spend fewer evaluations than the NFE (the largest it can spend exactly; Heun-type peers 2n - 1).
Each side's configuration is chosen on selection noise and measured on another batch (256 samples, the reported
RMSE): the errors at scale 7.5 are dominated by the few trajectories that end in another mode, so a choice made on
the batch it is measured on would favour the side with more configurations. The selection is the same for both sides:
every configuration runs on a first selection batch (256 samples) and on a second one (:data:`CHECK_SAMPLES`), and the
one with the smallest RMSE over both (4,096 samples) is chosen. The table gives, per target and NFE, both choices, their
evaluation RMSE and ratio (the goal: at most 0.7), the ratio with both chosen on the first selection batch alone
(first), with both chosen on the evaluation batch itself (oracle), and of the chosen configurations on a confirmation
batch of :data:`CONFIRM_SAMPLES` (confirm). Results go to ``benchmarks/results/guidance.json``, which a later run
resumes from (``--fresh`` starts over; a change of the tuning's settings reruns the tuned samplers only, one of
:data:`LARGE_FACTOR` or :data:`LARGE_BUDGET` the large ones only).

Usage: ``python benchmarks/guidance.py [--fresh] [--no-tune] [--no-spacings] [--targets labelled_2d,labelled_64d]
[--nfe 5,8,10] [--results PATH]``.
A run that resumes the fixed configurations' rows from the JSON and tunes took 45 minutes on a shared 2-core
machine; the ``large`` tunings, two draws, added about 70 minutes, the ``hard`` ones about 10 minutes on the 2-D
mixture and 4-15 minutes per NFE and spec on the 64-D one, the ``grown`` ones 3-11 minutes per NFE on the 2-D mixture
and 14-19 on the 64-D one.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import fewstep
from fewstep.bench.compare import GuidedRun, _feasible_nfe, deterministic_solvers, make_schedule, make_target
from fewstep.bench.metrics import rmse
from fewstep.bench.output import atomic_write_text
from fewstep.bench.peers import (
    DIFFUSERS,
    KDIFFUSION_ODE,
    SIGMA_GRIDS,
    SPACINGS,
    available_peers,
    diffusers_grid,
    kdiffusion_grid,
)
from fewstep.bench.targets import reference_solution_from_time
from fewstep.bench.targets.conditional import cfg_combine
from fewstep.spacing import SPACINGS as FEWSTEP_SPACINGS
from fewstep.spacing import Spacing

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "guidance.json"
SCHEDULE = "sd"
SCALE = 7.5
SAMPLES = 256  # per batch: the selection batch, then the evaluation batch
SEED = 0
F64 = torch.float64
TUNE_SEED = 1  # the tuning's calibration noise is drawn from its own seed, not from the benchmark's
TUNE_BUDGET = 6000
#: The tuning's calibration samples per target (its held-out batch is half as large): several times the selection
#: batch, so that its RMSE is not decided by the few trajectories near a class boundary (with 80 samples the fitted
#: times did not carry over to fresh noise); multiples of every target's number of classes, since the guided model
#: given to ``fewstep.tune`` labels the samples by their position in the batch.
TUNE_CALIBRATION = {"labelled_2d": 2000, "labelled_64d": 1000}
#: The tunings run per NFE, as ``fewstep.tune``'s (``method``, ``solver``, ``seed``), all with ``loss="rmse"``: the
#: per-step solver search and Nelder-Mead on the times of the best fixed start (``solver=None``), each from two draws
#: of the calibration noise (the fitted times depend on which boundary trajectories a draw holds), and Nelder-Mead on
#: the times of two solvers that the start's choice on the calibration batch passes over but that tune best on the
#: 64-D mixture at NFE 5. Each result is a candidate like a fixed configuration, chosen or not by the same two-stage
#: selection; a spec added later is tuned on a rerun without redoing the others.
TUNE_METHODS: tuple[tuple[str, str | None, int], ...] = (
    ("auto", None, TUNE_SEED), ("dmn", None, TUNE_SEED), ("dmn", "dpmpp_3m", TUNE_SEED), ("dmn", "deis_3", TUNE_SEED),
    ("auto", None, TUNE_SEED + 2), ("dmn", None, TUNE_SEED + 2),
)  # fmt: skip
#: The per-step search again on a calibration batch :data:`LARGE_FACTOR` times as large (8,000 samples on the 2-D
#: mixture, 4,000 on the 64-D one) with :data:`LARGE_BUDGET` network calls (a batched call is one call, so the
#: larger batch costs time, not calls; the larger budget lets the search try more per-step choices on it): the
#: boundary trajectories that decide the RMSE at this scale are a few per thousand, and a batch that holds more of
#: them fits times that carry over to fresh noise. From two draws of the calibration noise, as the searches above.
#: Labelled "large" in the table.
LARGE_METHODS: tuple[tuple[str, str | None, int], ...] = (("auto", None, TUNE_SEED), ("auto", None, TUNE_SEED + 2))
LARGE_FACTOR = 4
LARGE_BUDGET = 20000
#: The per-step search on a stratified calibration batch (:func:`hard_calibration`), from two draws of the pool (the
#: seed is the pool's and the search's): :data:`HARD_POOL` samples of noise from the spec's seed, disjoint from the
#: benchmark's batches and the other tunings', of which ``fewstep.tune.hard.hard_samples`` flags the ones its probes
#: (few-step samplers at the NFE) send far from the teacher; the calibration batch (twice :data:`TUNE_CALIBRATION`) is
#: drawn from the first half of the pool and the held-out batch (half as large) from the second, each with up to
#: :data:`HARD_SHARE` of its samples from the flagged ones. Labelled "hard" in the table; "hard large" on
#: :data:`LARGE_FACTOR` times :data:`TUNE_CALIBRATION` with :data:`LARGE_BUDGET` calls, from the first draw (the second,
#: tried at 64-D NFE 5 and 10, measured 0.24 and 0.20 on the evaluation batch). As (``method``, ``solver``, ``seed``,
#: calibration factor, budget).
HARD_METHODS: tuple[tuple[str, str | None, int, int, int], ...] = (
    ("auto", None, 11, 2, TUNE_BUDGET), ("auto", None, 13, 2, TUNE_BUDGET),
    ("auto", None, 11, LARGE_FACTOR, LARGE_BUDGET),
)  # fmt: skip
#: The per-step search at each NFE started from the :data:`GROWN_FROM` sampler of the largest smaller NFE measured,
#: grown to this NFE (``fewstep.tune(..., start=)``: every way of splitting its steps scored on the calibration batch,
#: the search from the best), on that spec's stratified calibration batch at this NFE and with its budget. Labelled
#: "hard large grown" in the table. At the smallest NFE, the spec is first tuned at NFE - 1 (kept with the samplers,
#: not a row of the table) and grown from there.
GROWN_FROM = ("auto", None, 11, LARGE_FACTOR, LARGE_BUDGET)
HARD_POOL = 20000
HARD_SHARE = 0.25
KDIFFUSION_SPACINGS = ("karras", "exponential", "polyexponential")
DIFFUSERS_SPACINGS: tuple[str | None, ...] = (None, *SPACINGS, *SIGMA_GRIDS)
GOAL = 0.7
#: The second held-out selection batch: every configuration of each side is rerun on ``CHECK_SAMPLES`` further
#: samples (seed ``CHECK_SEED``, labels in turn), and each side takes the one with the smallest RMSE over both
#: selection batches together (4,096 samples): the first selection batch alone picks, among hundreds of candidates,
#: the one that happens to steer its two or three boundary trajectories right (and a shortlist of its ten best, the
#: previous procedure, passed over configurations that one or two of its samples went against). With 768 (1,024 in
#: all, the previous procedure) the choice at 64-D NFE 5 went to a sampler whose RMSE moved from 0.18 to 0.29 between
#: batches of 256-2,048 samples; a change of these two reruns the second batch and the confirmation only.
CHECK_SAMPLES = 3840
CHECK_SEED = 2
#: A larger batch that no choice and no tuning saw, on which each side's chosen configuration is measured once more:
#: the evaluation batch's 256 samples hold a few boundary trajectories each, so its ratio moves by a tenth or more
#: with the draw; ``CONFIRM_SAMPLES`` samples from seed ``CONFIRM_SEED`` (labels in turn) say how far it moved.
CONFIRM_SAMPLES = 2048
CONFIRM_SEED = 4
#: Spacings with tuned options, searched for fewstep's side with the solvers that led the named-spacing grid (a
#: spacing fitted to the guided model: chosen on the selection batch like every other configuration).
TUNED_SPACINGS: dict[str, str | Spacing] = {
    **{f"karras(rho={r})": Spacing("karras", rho=r) for r in (2, 3, 4, 5, 10)},
    **{f"polyexponential(rho={r})": Spacing("polyexponential", rho=r) for r in (0.5, 0.75, 1.5, 2, 3)},
    **{f"beta(a={a},b={b})": Spacing("beta", a=a, b=b) for a in (0.4, 0.6, 0.8) for b in (0.4, 0.6, 0.8)},
}
SPACING_SOLVERS = (
    "ipndm_v", "lms", "deis_2", "deis_3", "deis_rho_3", "dpm_solver_2", "dpm_solver_3", "unipc_bh1", "unipc_bh2",
    "dpmpp_2m", "dpmpp_3m",
)  # fmt: skip
Row = list[Any]  # [RMSE on the selection batch, RMSE on the evaluation batch, NFE spent]; RMSE None: failed


def _errors(x: torch.Tensor | None, reference: torch.Tensor, nfe: int | None) -> Row:
    """The RMSE against the reference on each batch (None for a run that failed or returned inf / NaN), and the NFE."""
    if x is None or not bool(torch.all(torch.isfinite(x))):
        return [None, None, nfe]
    out: Row = []
    for half in (slice(0, SAMPLES), slice(SAMPLES, 2 * SAMPLES)):
        value = rmse(x[half].to(torch.float64), reference[half])
        out.append(value if math.isfinite(value) else None)
    return [*out, nfe]


def fewstep_rows(case: dict[str, Any], model: Any, noise: torch.Tensor, reference: torch.Tensor, run: GuidedRun,
                 schedule: fewstep.NoiseSchedule, nfes: list[int], save: Any, into: str = "fewstep",
                 solvers: tuple[str, ...] | None = None,
                 spacings: dict[str, str | Spacing] | None = None) -> None:  # fmt: skip
    """Every deterministic solver (or ``solvers``) x named spacing (or ``spacings``, by label) at every NFE, into
    ``case[into]`` ("solver|spacing|nfe": Row); saved after each solver."""
    rows = case.setdefault(into, {})
    grid = spacings if spacings is not None else {name: name for name in FEWSTEP_SPACINGS}
    for solver in solvers if solvers is not None else deterministic_solvers():
        new = False
        for label, spacing in grid.items():
            for asked in nfes:
                key = f"{solver}|{label}|{asked}"
                nfe = _feasible_nfe(solver, asked, schedule, True)
                if key in rows or nfe is None:
                    continue
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        x = fewstep.sample(
                            model, noise, schedule, solver, nfe=nfe, spacing=spacing, progress=False,
                            **run.sample_kwargs(),
                        )  # fmt: skip
                except ValueError:  # a spacing this schedule or solver does not take
                    continue
                rows[key], new = _errors(x, reference, nfe), True
        if new:
            save()


def peer_rows(case: dict[str, Any], model: Any, noise: torch.Tensor, reference: torch.Tensor, run: GuidedRun,
              schedule: fewstep.NoiseSchedule, nfes: list[int]) -> None:  # fmt: skip
    """Every k-diffusion sampler x sigma grid and diffusers scheduler x spacing at every NFE, with CFG, into
    ``case["peers"]`` ("library:label|spacing|nfe": Row)."""
    rows = case.setdefault("peers", {})
    libs = available_peers()
    grids: dict[tuple[str, str | None], list[Any]] = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "k-diffusion" in libs:
            k = kdiffusion_grid(
                model, schedule, noise, nfes, "epsilon", KDIFFUSION_ODE, KDIFFUSION_SPACINGS, run.peer()
            )
            grids.update({(f"k-diffusion:{label}", sp): runs for (label, sp), runs in k.items()})
        if "diffusers" in libs:
            d = diffusers_grid(model, schedule, noise, nfes, "epsilon", DIFFUSERS, DIFFUSERS_SPACINGS, run.peer())
            grids.update({(f"diffusers:{label}", sp): runs for (label, sp), runs in d.items()})
    for (label, spacing), runs in grids.items():
        for r in runs:
            rows[f"{label}|{spacing or 'default'}|{r.nfe_asked}"] = _errors(r.x, reference, r.nfe)


def tuned_rows(case: dict[str, Any], name: str, target: Any, noise: torch.Tensor, reference: torch.Tensor,
               run: GuidedRun, schedule: fewstep.NoiseSchedule, nfes: list[int], save: Any) -> None:  # fmt: skip
    """Samplers tuned by ``fewstep.tune`` to the guided model at each NFE, one per :data:`TUNE_METHODS`, calibrated
    on their own noise (:data:`TUNE_CALIBRATION` samples from the spec's seed, disjoint from the benchmark's
    batches), run on the benchmark's noise with CFG, into ``case["tuned"]`` ("tuned[spec]:solver|found|nfe": Row;
    the tuning's own calibration / held-out RMSE in ``case["tuned_errors"]``, the sampler in
    ``case["tuned_samplers"]``)."""
    rows, errors = case.setdefault("tuned", {}), case.setdefault("tuned_errors", {})
    cfg = target.model(schedule, "epsilon")
    classes = target.num_classes
    count = TUNE_CALIBRATION[name]
    if count % classes:
        raise ValueError(f"TUNE_CALIBRATION[{name!r}]: {count} is not a multiple of the {classes} classes")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # CFG of the labels 0, 1, ... by batch position
        labels = torch.arange(x.shape[0]) % classes
        return cfg_combine(cfg(x, t, torch.full_like(labels, -1)), cfg(x, t, labels), SCALE)

    def tuned_at(spec: tuple[str, str | None, int, int, int], hard: bool, nfe: int,
                 start: fewstep.TunedSampler | None = None) -> fewstep.TunedSampler:  # fmt: skip
        """The tuning of ``spec`` (method, solver, seed, calibration factor, budget) at ``nfe``, on a stratified batch
        (:func:`hard_calibration`) when ``hard``, grown from ``start`` when given."""
        method, solver, seed, factor, budget = spec
        calibration: torch.Tensor | int = factor * count
        holdout: torch.Tensor | int = factor * count // 2
        if hard:
            calibration, holdout = hard_calibration(guided, schedule, target, nfe, factor * count, seed)
        return fewstep.tune(
            guided, schedule, nfe=nfe, calibration=calibration, holdout=holdout, shape=(target.dim,),
            method=method, solver=solver, budget=budget, seed=seed, loss="rmse", start=start,
        )  # fmt: skip

    specs = [(*spec, 1, TUNE_BUDGET, "") for spec in TUNE_METHODS]
    specs += [(*spec, LARGE_FACTOR, LARGE_BUDGET, " large") for spec in LARGE_METHODS]
    specs += [(*spec, " hard" + (" large" if spec[3] == LARGE_FACTOR else "")) for spec in HARD_METHODS]
    specs += [(*GROWN_FROM, " hard large grown")]
    for asked in nfes:
        for method, solver, seed, factor, budget, kind in specs:
            label = method if solver is None else f"{method} {solver}"
            label += "" if seed == TUNE_SEED else f" seed {seed}"
            label += kind
            if any(k.startswith(f"tuned[{label}]:") and k.endswith(f"|{asked}") for k in rows):
                continue
            started = time.perf_counter()
            spec, hard = (method, solver, seed, factor, budget), kind.startswith(" hard")
            start = None
            if kind.endswith(" grown"):
                start = _grown_start(case, label.removesuffix(" grown"), asked)
                if start is None and asked > 2:  # the smallest NFE: grow one tuned at NFE - 1 (not a row)
                    start = tuned_at(spec, hard, asked - 1)
                    base_key = f"tuned[{label.removesuffix(' grown')}]:{start.solver}|{start.method}|{asked - 1}"
                    case.setdefault("tuned_samplers", {})[base_key] = start.to_dict()
                if start is None:
                    continue
            tuned = tuned_at(spec, hard, asked, start)
            print(f"{name}: tuned[{label}] at NFE {asked} in {time.perf_counter() - started:.0f} s", flush=True)
            x = fewstep.sample(cfg, noise, schedule, solver=tuned, progress=False, **run.sample_kwargs())
            key = f"tuned[{label}]:{tuned.solver}|{tuned.method}|{asked}"
            rows[key], errors[key] = _errors(x, reference, tuned.nfe), tuned.errors
            case.setdefault("tuned_samplers", {})[key] = tuned.to_dict()
            save()


def _grown_start(case: dict[str, Any], label: str, nfe: int) -> fewstep.TunedSampler | None:
    """The ``tuned[label]`` sampler of the largest NFE below ``nfe`` measured so far (None: there is none)."""
    found = [(int(k.rsplit("|", 1)[1]), k) for k in case.get("tuned_samplers", {}) if k.startswith(f"tuned[{label}]:")]
    below = [(n, k) for n, k in found if n < nfe]
    return fewstep.TunedSampler.from_dict(case["tuned_samplers"][max(below)[1]]) if below else None


def hard_calibration(guided: Callable[..., torch.Tensor], schedule: fewstep.NoiseSchedule, target: Any, nfe: int,
                     count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A stratified calibration batch of ``count`` samples and a held-out batch of ``count // 2`` for the
    ``nfe``-evaluation tuning of the guided model (which labels a batch's samples by position, ``i % classes``):
    :data:`HARD_POOL` samples of noise from ``seed``, the hard ones flagged by ``fewstep.tune.hard.hard_samples``;
    the calibration batch from the pool's first half, the held-out batch from its second, each with up to
    :data:`HARD_SHARE` of every class's samples from the hard ones and the rest from the others, at random, in
    positions that keep every sample's label."""
    from fewstep.tune.hard import hard_samples

    classes = target.num_classes
    scale = float(schedule.sigma(schedule.t_max))
    pool = torch.randn(HARD_POOL, target.dim, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale
    hard = hard_samples(guided, schedule, noise=pool, nfe=nfe)
    labels = torch.arange(HARD_POOL) % classes
    gen = torch.Generator().manual_seed(seed + 1)

    def draw(part: torch.Tensor, size: int) -> torch.Tensor:
        per, columns = size // classes, []
        for c in range(classes):
            members = part[labels[part] == c]
            flagged, others = members[hard[members]], members[~hard[members]]
            n = min(len(flagged), round(per * HARD_SHARE))
            flagged = flagged[torch.randperm(len(flagged), generator=gen)[:n]]
            others = others[torch.randperm(len(others), generator=gen)[: per - n]]
            columns.append(torch.cat([flagged, others])[torch.randperm(per, generator=gen)])
        return torch.stack(columns, 1).reshape(-1)  # position j holds a sample of class j % classes

    index = torch.arange(HARD_POOL)
    calibration, holdout = draw(index[: HARD_POOL // 2], count), draw(index[HARD_POOL // 2 :], count // 2)
    print(f"hard samples at NFE {nfe}: {int(hard.sum())} of {HARD_POOL}, {int(hard[calibration].sum())} in the "
          f"calibration batch, {int(hard[holdout].sum())} held out", flush=True)  # fmt: skip
    return pool[calibration], pool[holdout]


def _selectable(rows: dict[str, Row], nfe: int) -> list[str]:
    """The keys at ``nfe`` that ran on the selection and evaluation batches, by their RMSE on the selection batch."""
    ranked = sorted((v[0], k) for k, v in rows.items() if k.endswith(f"|{nfe}") and v[0] is not None and v[1])
    return [k for _, k in ranked]


def _rerun_fewstep(key: str, case: dict[str, Any], model: Any, noise: torch.Tensor, run: GuidedRun,
                   schedule: fewstep.NoiseSchedule, spent: int | None) -> torch.Tensor:  # fmt: skip
    """fewstep's configuration ``key`` (a solver on a spacing, or a tuned sampler) on other noise."""
    if key.startswith("tuned["):
        tuned = fewstep.TunedSampler.from_dict(case["tuned_samplers"][key])
        return fewstep.sample(model, noise, schedule, solver=tuned, progress=False, **run.sample_kwargs())
    solver, label, _ = key.split("|")
    spacing = TUNED_SPACINGS.get(label, label)
    return fewstep.sample(
        model, noise, schedule, solver, nfe=spent, spacing=spacing, progress=False, **run.sample_kwargs()
    )


def _rerun_peer(key: str, model: Any, noise: torch.Tensor, run: GuidedRun, schedule: fewstep.NoiseSchedule) -> Any:
    """The peer configuration ``key`` ("library:label|spacing|nfe") on other noise (None when it fails)."""
    config, spacing, asked = key.split("|")
    library, label = config.split(":", 1)
    if library == "k-diffusion":
        samplers = [s for s in KDIFFUSION_ODE if s[0] == label]
        grid = kdiffusion_grid(model, schedule, noise, [int(asked)], "epsilon", samplers, (spacing,), run.peer())
    else:
        peers = [p for p in DIFFUSERS if p.label == label]
        sp = None if spacing == "default" else spacing
        grid = diffusers_grid(model, schedule, noise, [int(asked)], "epsilon", peers, (sp,), run.peer())
    runs = [r for runs in grid.values() for r in runs]
    return runs[0].x if runs else None


def check_rows(case: dict[str, Any], target: Any, schedule: fewstep.NoiseSchedule, nfes: list[int],
               save: Any) -> None:  # fmt: skip
    """Each side's configurations (:func:`_selectable`) rerun on the second selection batch (:data:`CHECK_SAMPLES`),
    their RMSE there into ``case["check"][side][key]`` (None: the run failed)."""
    chosen_keys = {side: {nfe: _selectable(rows, nfe) for nfe in nfes} for side, rows in _sides(case).items()}
    _rerun_rows(case, target, schedule, chosen_keys, CHECK_SAMPLES, CHECK_SEED, "check", save)


def confirm_rows(case: dict[str, Any], target: Any, schedule: fewstep.NoiseSchedule, nfes: list[int],
                 save: Any) -> None:  # fmt: skip
    """Each side's chosen configuration (:func:`chosen`) rerun on the confirmation batch (:data:`CONFIRM_SAMPLES`),
    its RMSE there into ``case["confirm"][side][key]``."""
    picks = {
        side: {nfe: [chosen(r, case.get("check", {}).get(side, {}), nfe)[0] + f"|{nfe}"] for nfe in nfes}
        for side, r in _sides(case).items()
    }
    _rerun_rows(case, target, schedule, picks, CONFIRM_SAMPLES, CONFIRM_SEED, "confirm", save)


def _rerun_rows(case: dict[str, Any], target: Any, schedule: fewstep.NoiseSchedule,
                keys: dict[str, dict[int, list[str]]], samples: int, seed: int, field: str,
                save: Any) -> None:  # fmt: skip
    """The configurations ``keys[side][nfe]`` rerun on ``samples`` samples of noise from ``seed`` (labels in turn),
    their RMSE against the exact guided solution into ``case[field][side][key]`` (None: the run failed)."""
    noise = torch.randn(samples, target.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    noise = noise * float(schedule.sigma(schedule.t_max))
    run = GuidedRun.of(target, SCALE, samples)
    assert run is not None
    reference: torch.Tensor | None = None
    model = target.model(schedule, "epsilon")
    for side, rows in _sides(case).items():
        done = case.setdefault(field, {}).setdefault(side, {})
        for wanted in keys[side].values():
            for key in wanted:
                if key in done:
                    continue
                if reference is None:
                    reference = reference_solution_from_time(run.exact(), noise, schedule, schedule.t_max)
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if side == "fewstep":
                        x = _rerun_fewstep(key, case, model, noise, run, schedule, rows[key][2])
                    else:
                        x = _rerun_peer(key, model, noise, run, schedule)
                ok = x is not None and bool(torch.all(torch.isfinite(x)))
                done[key] = rmse(x.to(F64), reference) if ok else None
            save()


def measure(name: str, nfes: list[int], results: dict[str, Any], tune: bool, spaced: bool, save: Any) -> None:
    case = results.setdefault("cases", {}).setdefault(name, {})
    target, schedule = make_target(name), make_schedule(SCHEDULE)
    gen = torch.Generator().manual_seed(SEED)
    noise = torch.randn(2 * SAMPLES, target.dim, generator=gen, dtype=torch.float64)
    noise = noise * float(schedule.sigma(schedule.t_max))
    run = GuidedRun.of(target, SCALE, 2 * SAMPLES)
    assert run is not None
    started = time.perf_counter()
    reference = reference_solution_from_time(run.exact(), noise, schedule, schedule.t_max)
    loose = reference_solution_from_time(run.exact(), noise, schedule, schedule.t_max, rtol=1e-8, atol=1e-8)
    case["reference_check"] = {  # the tight solve against a looser one: an upper bound of its own error
        "max_abs_difference_rtol_1e-8": float((reference - loose).abs().max()),
        "rms": float(reference.pow(2).mean().sqrt()),
    }
    print(f"{name}: reference in {time.perf_counter() - started:.1f} s", flush=True)
    model = target.model(schedule, "epsilon")
    fewstep_rows(case, model, noise, reference, run, schedule, nfes, save)
    print(f"{name}: fewstep done at {time.perf_counter() - started:.0f} s", flush=True)
    if spaced:
        fewstep_rows(
            case, model, noise, reference, run, schedule, nfes, save, "spaced", SPACING_SOLVERS, TUNED_SPACINGS
        )
        print(f"{name}: tuned spacings done at {time.perf_counter() - started:.0f} s", flush=True)
    if any(not any(k.endswith(f"|{n}") for k in case.get("peers", {})) for n in nfes):
        peer_rows(case, model, noise, reference, run, schedule, nfes)
        save()
    print(f"{name}: peers done at {time.perf_counter() - started:.0f} s", flush=True)
    if tune:
        tuned_rows(case, name, target, noise, reference, run, schedule, nfes, save)
        print(f"{name}: tuned done at {time.perf_counter() - started:.0f} s", flush=True)
    check_rows(case, target, schedule, nfes, save)
    print(f"{name}: second selection batch done at {time.perf_counter() - started:.0f} s", flush=True)
    confirm_rows(case, target, schedule, nfes, save)
    print(f"{name}: confirmation batch done at {time.perf_counter() - started:.0f} s", flush=True)


def _ours(case: dict[str, Any]) -> dict[str, Row]:
    """fewstep's candidates: the named-spacing grid, the tuned spacings and the tuned samplers."""
    return {**case.get("fewstep", {}), **case.get("spaced", {}), **case.get("tuned", {})}


def _sides(case: dict[str, Any]) -> dict[str, dict[str, Row]]:
    """Each side's candidates by side ("fewstep", "peers")."""
    return {"fewstep": _ours(case), "peers": case.get("peers", {})}


def best(rows: dict[str, Row], nfe: int, column: int) -> tuple[str, Row]:
    """The configuration with the smallest RMSE on batch ``column`` (0: selection, 1: evaluation) at ``nfe``."""
    picks = [(v[column], k.rsplit("|", 1)[0], v) for k, v in rows.items() if k.endswith(f"|{nfe}") and v[column]]
    _, key, row = min(picks, default=(math.inf, "-", [math.nan, math.nan, None]))
    return key, row


def chosen(rows: dict[str, Row], checked: dict[str, float | None], nfe: int) -> tuple[str, Row, float]:
    """The configuration with the smallest RMSE over both selection batches together (the selection batch's alone
    where none was rerun), and that pooled RMSE."""
    pooled = []
    for key in _selectable(rows, nfe):
        a, c = rows[key][0], checked.get(key)
        if c is not None:
            pooled.append((math.sqrt((a * a * SAMPLES + c * c * CHECK_SAMPLES) / (SAMPLES + CHECK_SAMPLES)), key))
    if not pooled:
        key, row = best(rows, nfe, 0)
        return key, row, row[0]
    score, key = min(pooled)
    return key.rsplit("|", 1)[0], rows[key], score


def table(results: dict[str, Any], nfes: list[int]) -> tuple[str, list[dict[str, Any]]]:
    """Per target and NFE: fewstep's and the peers' configurations chosen on both selection batches
    (:func:`chosen`), their RMSE on the evaluation batch and its ratio; the ratio with both chosen on the first
    selection batch alone, and with both chosen on the evaluation batch itself (oracle)."""
    head = (
        f"{'target':<13}{'NFE':>4}  {'fewstep (chosen on the selection batches)':<50}{'RMSE':>8}  "
        f"{'peer (chosen on the selection batches)':<50}{'RMSE':>8}{'ratio':>7}{'first':>7}{'oracle':>8}"
        f"{'confirm':>9}"
    )
    lines = [
        f"CFG scale {SCALE}, {SCHEDULE} schedule: RMSE against the exact guided PF-ODE solution on {SAMPLES} "
        "evaluation samples",
        head,
        "-" * len(head),
    ]
    summary = []
    for name, case in results.get("cases", {}).items():
        ours_rows, peer_rows_ = _ours(case), case.get("peers", {})
        check = case.get("check", {})
        for nfe in nfes:
            ours, ours_row, ours_sel = chosen(ours_rows, check.get("fewstep", {}), nfe)
            theirs, theirs_row, theirs_sel = chosen(peer_rows_, check.get("peers", {}), nfe)
            ratio = ours_row[1] / theirs_row[1]
            first = best(ours_rows, nfe, 0)[1][1] / best(peer_rows_, nfe, 0)[1][1]
            oracle = best(ours_rows, nfe, 1)[1][1] / best(peer_rows_, nfe, 1)[1][1]
            spent = f" ({theirs_row[2]})" if theirs_row[2] != nfe else ""
            confirm = case.get("confirm", {})
            a, b = confirm.get("fewstep", {}).get(f"{ours}|{nfe}"), confirm.get("peers", {}).get(f"{theirs}|{nfe}")
            confirmed = a / b if a is not None and b else math.nan
            lines.append(
                f"{name:<13}{nfe:>4}  {ours:<50}{ours_row[1]:>8.3g}  {theirs + spent:<50}{theirs_row[1]:>8.3g}"
                f"{ratio:>7.2f}{first:>7.2f}{oracle:>8.2f}{confirmed:>9.2f}"
            )
            summary.append(
                {"target": name, "nfe": nfe, "fewstep": ours, "fewstep_rmse": ours_row[1],
                 "fewstep_selection_rmse": ours_sel, "peer": theirs, "peer_nfe": theirs_row[2],
                 "peer_rmse": theirs_row[1], "peer_selection_rmse": theirs_sel, "ratio": ratio,
                 "first_batch_ratio": first, "oracle_ratio": oracle, "fewstep_confirm_rmse": a,
                 "peer_confirm_rmse": b, "confirm_ratio": confirmed}
            )  # fmt: skip
    lines.append(
        f"ratio: fewstep / peer on the evaluation batch (goal <= {GOAL}), each side's configuration chosen by the "
        f"RMSE over the selection batch and a second batch of {CHECK_SAMPLES}; first: "
        "both chosen on the first selection batch alone; oracle: both chosen on the evaluation batch itself; "
        f"confirm: the chosen configurations' ratio on a further batch of {CONFIRM_SAMPLES}; "
        "tuned[method solver seed]: a sampler fitted by fewstep.tune to the guided model on its own noise"
    )
    return "\n".join(lines), summary


def guided_defaults(results: dict[str, Any], nfes: list[int]) -> str:
    """Per NFE, the fixed configuration with the smallest geometric-mean ratio to the best of each target, on the
    selection batch (what ``fewstep.defaults.GUIDED`` holds), with its ratio on the evaluation batch."""
    cases = results.get("cases", {})
    lines = ["guided defaults (fewstep.defaults.GUIDED): geometric-mean ratio to the best of each target"]
    for nfe in nfes:
        per_target = [
            {k.rsplit("|", 1)[0]: v for k, v in case.get("fewstep", {}).items() if k.endswith(f"|{nfe}") and v[0]}
            for case in cases.values()
        ]
        common = set.intersection(*(set(rows) for rows in per_target)) if per_target else set()

        def score(key: str, column: int, rows: list[dict[str, Row]] = per_target) -> float:
            logs = [math.log(r[key][column] / min(v[column] for v in r.values())) for r in rows]
            return math.exp(sum(logs) / len(logs))

        if common:
            key = min(sorted(common), key=lambda k: score(k, 0))
            lines.append(f"  NFE {nfe:>2}: {key:<28} selection {score(key, 0):.2f}, evaluation {score(key, 1):.2f}")
    return "\n".join(lines)


def drop_tuned(results: dict[str, Any], stale: Callable[[str], bool]) -> None:
    """Remove the tuned samplers whose key is ``stale`` (their rows, errors and samplers) from every case, and
    fewstep's second-batch reruns, which a resumed run then measures again."""
    for case in results.get("cases", {}).values():
        for field in ("tuned", "tuned_errors", "tuned_samplers"):
            rows = case.get(field, {})
            for key in [k for k in rows if stale(k)]:
                del rows[key]
        case.setdefault("check", {}).pop("fewstep", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming from the JSON")
    parser.add_argument("--no-tune", action="store_true", help="leave out the tuned samplers (fewstep.tune)")
    parser.add_argument("--no-spacings", action="store_true", help="leave out the spacings with tuned options")
    parser.add_argument("--targets", default="labelled_2d,labelled_64d")
    parser.add_argument("--nfe", default="5,8,10")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON to resume from and write")
    args = parser.parse_args()
    path: Path = args.results
    torch.set_num_threads(1)
    nfes = [int(n) for n in args.nfe.split(",")]
    settings = {
        "schedule": SCHEDULE, "scale": SCALE, "samples": SAMPLES, "seed": SEED, "prediction": "epsilon",
        "tune_budget": TUNE_BUDGET, "tune_seed": TUNE_SEED,
    }  # fmt: skip
    # the tuning's settings apart from the others: a change of them reruns the tuned rows only (a new spec of
    # TUNE_METHODS is tuned by the resumed run)
    tuning = {"budget": TUNE_BUDGET, "seed": TUNE_SEED, "calibration": TUNE_CALIBRATION}
    large = {"factor": LARGE_FACTOR, "budget": LARGE_BUDGET}  # a change of these reruns the "large" rows only
    hard = {"pool": HARD_POOL, "share": HARD_SHARE}  # and of these the "hard" rows only
    selection = {"check_samples": CHECK_SAMPLES, "check_seed": CHECK_SEED}  # and of these the reruns only
    results: dict[str, Any] = {}
    if path.is_file() and not args.fresh:
        results = json.loads(path.read_text())
        if results.get("settings") != settings:
            print("settings changed: starting over", flush=True)
            results = {}
        elif {k: results.get("tuning", {}).get(k) for k in tuning} != json.loads(json.dumps(tuning)):
            print("tuning settings changed: tuning again", flush=True)
            drop_tuned(results, lambda key: True)
        else:
            if results.get("large_tuning", large) != large:
                print("settings of the large tunings changed: tuning them again", flush=True)
                drop_tuned(results, lambda key: " large" in key.split("]:", 1)[0])  # and the rows grown from them
            if results.get("selection", {"check_samples": 768, "check_seed": 2}) != selection:
                print("the second selection batch changed: rerunning it and the confirmation", flush=True)
                for case in results.get("cases", {}).values():
                    case.pop("check", None)
                    case.pop("confirm", None)
            if results.get("hard_tuning", hard) != hard:
                print("settings of the stratified tunings changed: tuning them again", flush=True)
                drop_tuned(results, lambda key: " hard" in key.split("]:", 1)[0])  # "hard" and "hard large"
    results["settings"], results["tuning"], results["large_tuning"] = settings, tuning, large
    results["hard_tuning"], results["selection"] = hard, selection
    started = time.perf_counter()

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(results, indent=1, sort_keys=True) + "\n")

    for name in args.targets.split(","):
        measure(name, nfes, results, not args.no_tune, not args.no_spacings, save)
    text, summary = table(results, nfes)
    results["summary"] = summary
    save()
    print(text)
    print(guided_defaults(results, nfes))
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
