"""``fewstep.generate``: ``n`` samples of a model with a sampler, over torch.distributed, resumable, and identical
for any world size, rank layout and (up to a network's batched rounding) batch size.

Sample ``i`` starts from the first draw of its own noise stream and takes its step noise from the following
draws (:mod:`.seeds`); the ``n`` indices fall into fixed shards, and each rank generates the shards it is assigned
(:mod:`.indices`) that are not already done (:mod:`.shards`); rank 0 writes the manifest (:mod:`.manifest`).
Everything that can be checked is checked on every rank before the first sample: the options, the model factory,
the solver and its plan (a dry run of :func:`fewstep.sample` that stops at the first model call), the PNG shape
and the output directory.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..user_model import UserModel
from .distributed import Group, join
from .indices import LAYOUTS, assign, batches, index_ranges, make_shards
from .manifest import check_directory, versions, write_manifest
from .models import DEFAULT_MODEL, model_name, resolve_model
from .png import check_image_shape
from .seeds import MAX_INDEX, check_base_seed, index_seeds
from .shards import FORMATS, sha256_file, verify_shard, write_shard

__all__ = ["generate", "DTYPES"]

#: The state dtypes a run may use.
DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: The NFE when neither ``nfe`` nor a tuned sampler gives one.
DEFAULT_NFE = 10


class _PlanChecked(Exception):
    """Raised by the dry run's model at its first call: everything before it was checked."""


@dataclass
class _Plan:
    """What each batch is sampled with."""

    user: UserModel
    solver: Any
    nfe: int
    spacing: str | Tensor | None
    seed: int
    dtype: torch.dtype
    device: torch.device
    guidance_scale: float


@dataclass(frozen=True)
class _Request:
    """The options of one :func:`generate` call, checked (see its docstring)."""

    n: int
    out: Path
    model: str | Callable[[], Any]
    solver: str | None
    options: dict[str, Any]
    tuned: Any
    nfe: int | None
    spacing: str | None
    seed: int
    batch: int
    shard_size: int
    format: str
    guidance_scale: float
    dtype: str
    layout: str
    progress: bool


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: must be at least 1, got {value}")
    return value


def _choice(value: object, name: str, allowed: Any) -> Any:
    if value not in allowed:
        raise ValueError(f"{name}: choose one of {', '.join(allowed)}, got {value!r}")
    return value


def _on(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, Tensor) else value


def _kwargs(make: Any, indices: range, device: torch.device) -> dict[str, Any] | None:
    """The per-index keyword arguments of ``make`` (a conditioning function) for ``indices``, on ``device``."""
    if make is None:
        return None
    made = make(torch.arange(indices.start, indices.stop, dtype=torch.int64))
    if not isinstance(made, Mapping):
        raise TypeError(f"model: conditioning must return a mapping of keyword arguments, got {type(made).__name__}")
    return {k: _on(v, device) for k, v in made.items()}


def _sample_batch(plan: _Plan, indices: range, calls: Any, model: Any = None) -> Tensor:
    """The samples of ``indices``: start noise and step noise from each index's stream (module :mod:`.seeds`)."""
    from ...noise import SeededNoise
    from ...sampling import sample

    user = plan.user
    like = torch.empty((len(indices), *user.shape), dtype=plan.dtype, device=plan.device)
    stream = SeededNoise(like, index_seeds(plan.seed, indices))
    sigma_max = float(user.schedule.sigma(user.schedule.t_max))
    start = stream() * sigma_max  # the first draw: the state at t_max (N(0, sigma_max^2 I))
    with torch.no_grad():
        return sample(
            model or user.model,
            start,
            user.schedule,
            solver=plan.solver,
            nfe=plan.nfe,
            spacing=plan.spacing,
            prediction=user.prediction,
            time_input=user.time_input,
            noise_sampler=stream,  # the following draws: the step noise
            model_kwargs=_kwargs(user.conditioning, indices, plan.device),
            guidance_scale=plan.guidance_scale,
            uncond_kwargs=_kwargs(user.unconditional, indices, plan.device),
            calls=calls,
            progress=False,
        )


def _dry_run(plan: _Plan) -> None:
    """Run every check of :func:`fewstep.sample` on one sample, stopping at the first model call."""

    def stop(*args: Any, **kwargs: Any) -> Tensor:
        raise _PlanChecked

    try:
        _sample_batch(plan, range(0, 1), None, model=stop)
    except _PlanChecked:
        return
    raise ValueError("solver: the sampler made no model call")  # pragma: no cover - every solver calls the model


def _load_solver(
    solver: str | None,
    options: Mapping[str, Any],
    tuned: str | os.PathLike[str] | None,
    nfe: int | None,
    user: UserModel,
) -> tuple[Any, int, str | Tensor | None, dict[str, Any]]:
    """The solver instance, NFE, spacing override and the configuration's sampler entries."""
    from ...solvers import get_solver

    if tuned is None:
        instance = get_solver(solver, **options) if solver is not None else None
        return instance, nfe or DEFAULT_NFE, None, {"solver": solver or "default", "solver_options": dict(options)}
    try:
        from ...tune.tuned import TunedSampler
    except ImportError as err:
        raise ValueError(f"tuned: this fewstep has no fewstep.tune.TunedSampler to read {tuned} ({err})") from err
    loaded = TunedSampler.load(Path(tuned), user.model, user.schedule)
    if nfe is not None and nfe != loaded.nfe:
        raise ValueError(f"nfe: the tuned sampler {tuned} spends {loaded.nfe} evaluations, not {nfe}; leave nfe out")
    instance = get_solver(loaded.solver, **loaded.solver_options)
    entries = {"tuned": sha256_file(Path(tuned)), "solver": loaded.solver, "solver_options": loaded.solver_options}
    return instance, loaded.nfe, loaded.times_tensor(), entries


def _say(group: Group, message: str) -> None:
    print(f"fewstep generate [rank {group.rank}/{group.world_size}] {message}", file=sys.stderr, flush=True)


def generate(
    n: int,
    out: str | os.PathLike[str],
    *,
    model: str | Callable[[], Any] = DEFAULT_MODEL,
    solver: str | None = None,
    solver_options: Mapping[str, Any] | None = None,
    tuned: str | os.PathLike[str] | None = None,
    nfe: int | None = None,
    spacing: str | None = None,
    seed: int = 0,
    batch: int = 64,
    shard_size: int | None = None,
    format: str = "npz",
    guidance_scale: float = 1.0,
    dtype: str = "float32",
    layout: str = "interleaved",
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate samples ``0 .. n - 1`` into ``out``, over every process of the torchrun group (or this one alone).

    Sample ``i`` depends on ``(seed, i)`` only: its start noise and its step noise are the draws of its own stream,
    so the output is the same for any world size and rank layout, bit for bit at the same ``batch``, and up to the
    network's batched rounding at another. A rerun with the same options verifies the shards in ``out`` and
    generates only the missing or damaged ones; ``out`` holding another configuration's run is refused.

    Args:
        n: the number of samples (1 to 2**32).
        out: the output directory (new, empty, or this configuration's earlier run).
        model: an embedded target (:data:`fewstep.bench.generation.models.EMBEDDED`; default ``"image"``) or a
            ``module:function`` factory returning ``(model, schedule, prediction, shape)`` or a
            :class:`~fewstep.bench.user_model.UserModel` (with per-index ``conditioning`` and ``data_range``), or
            such a factory itself (the configuration records its ``module:qualified name``).
        solver, solver_options: the solver's name and options (default: :mod:`fewstep.defaults`' choice). Solvers
            whose samples depend on their batch (``Solver.batch_dependence``) are refused.
        tuned: a tuned sampler's JSON (``fewstep.tune.TunedSampler.load``) instead of ``solver``/``spacing``.
        nfe: the model evaluations per sample (default 10, or the tuned sampler's).
        spacing: a spacing name (default: the solver's).
        seed: the base seed, in ``[0, 2**63)``.
        batch: the samples per model call.
        shard_size: the samples per shard, the unit of resumption (default ``batch``).
        format: ``"npz"`` (shards holding ``indices`` and ``samples``) or ``"png"`` (``images/IIIIII.png`` per
            sample, the model's data range mapped to 0-255).
        guidance_scale: classifier-free guidance scale (1: off); the factory's ``unconditional`` gives the
            unconditional branch's arguments.
        dtype: the state's dtype, ``"float32"`` or ``"float64"``.
        layout: how ranks take shards, ``"interleaved"`` or ``"blocked"``.
        device: where to sample (default: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU).
        progress: print a line per shard and the throughput on stderr.

    Returns:
        The manifest (also in ``out/manifest.json``).
    """
    n = _positive(n, "n")
    if n > MAX_INDEX:
        raise ValueError(f"n: at most 2**32 samples, got {n}")
    batch = _positive(batch, "batch")
    shard_size = batch if shard_size is None else _positive(shard_size, "shard_size")
    nfe = None if nfe is None else _positive(nfe, "nfe")
    seed = check_base_seed(seed)
    _choice(format, "format", FORMATS)
    _choice(dtype, "dtype", tuple(DTYPES))
    _choice(layout, "layout", LAYOUTS)
    if tuned is not None and (solver is not None or solver_options or spacing is not None):
        raise ValueError(
            "tuned: a tuned sampler gives the solver, its options and the times; leave solver, "
            "solver_options and spacing out"
        )
    if not math.isfinite(float(guidance_scale)):
        raise ValueError(f"guidance_scale: must be finite, got {guidance_scale}")
    request = _Request(
        n, Path(out), model, solver, dict(solver_options or {}), tuned, nfe, spacing, seed, batch, shard_size,
        format, float(guidance_scale), dtype, layout, progress,
    )  # fmt: skip
    group = join(device)
    try:
        return _run(group, request)
    finally:
        group.close()


def _prepare(group: Group, r: _Request) -> tuple[_Plan, dict[str, Any], dict[str, Any] | None]:
    """The checks before any sample (module docstring): the plan, the configuration and the previous manifest."""
    user = resolve_model(r.model)
    if r.format == "png":
        check_image_shape(tuple(user.shape))
    instance, nfe_used, times, sampler = _load_solver(r.solver, r.options, r.tuned, r.nfe, user)
    reason = instance.batch_dependence() if instance is not None else None
    if reason is not None:
        raise ValueError(f"solver: generate gives each sample its own noise, but {reason}")
    plan = _Plan(
        user,
        instance,
        nfe_used,
        times if times is not None else r.spacing,
        r.seed,
        DTYPES[r.dtype],
        group.device,
        r.guidance_scale,
    )
    _dry_run(plan)
    v = versions()
    config = {
        "model": model_name(r.model),
        **sampler,
        "nfe": nfe_used,
        "spacing": r.spacing or "default",
        "n": r.n,
        "seed": r.seed,
        "batch": r.batch,
        "shard_size": r.shard_size,
        "format": r.format,
        "guidance_scale": r.guidance_scale,
        "dtype": r.dtype,
        "device_type": group.device.type,
        "shape": list(user.shape),
        "data_range": list(user.data_range),
        "fewstep": v["fewstep"],
        "torch": v["torch"],
    }
    previous = check_directory(r.out, config)
    return plan, config, previous


def _run(group: Group, request: _Request) -> dict[str, Any]:
    from ...model import CallCount

    n, out, fmt, layout, progress = request.n, request.out, request.format, request.layout, request.progress
    failure: Exception | None = None
    try:
        plan, config, previous = _prepare(group, request)
    except Exception as err:  # every rank must learn of any rank's failure before the first sample
        failure = err
    if not group.all_true(failure is None):
        raise failure or RuntimeError("another rank failed its checks before generating; see its message")
    shards = make_shards(n, request.shard_size)
    ranges = {str(r): index_ranges(assign(shards, r, group.world_size, layout)) for r in range(group.world_size)}
    history = list(previous.get("history", [])) if previous else []
    manifest: dict[str, Any] = {
        "config": config,
        "versions": versions(),
        "world_size": group.world_size,
        "layout": layout,
        "ranges": ranges,
        "complete": False,
        "history": history,
    }
    if group.rank == 0:
        write_manifest(out, {**manifest, "shards": (previous or {}).get("shards", [])})
    group.barrier()

    mine = assign(shards, group.rank, group.world_size, layout)
    calls, generated, reused = CallCount(), 0, 0
    evaluations = 0
    start = time.perf_counter()
    for number, shard in enumerate(mine, 1):
        done, why = verify_shard(out, shard, fmt)
        if done is not None:
            reused += len(shard)
            continue
        if progress and why != "not written":
            _say(group, f"shard {shard.number}: {why}; generating it again")
        parts = []
        for indices in batches(shard, request.batch):
            before = calls.nfe
            parts.append(_sample_batch(plan, indices, calls).cpu().numpy())
            evaluations += (calls.nfe - before) * len(indices)
        write_shard(out, shard, n, np.concatenate(parts), fmt, plan.user.data_range)
        generated += len(shard)
        if progress:
            seconds = time.perf_counter() - start
            _say(
                group,
                f"shard {shard.number} done ({number}/{len(mine)} of this rank's shards, "
                f"{generated / seconds:.1f} samples/s)",
            )
    seconds = time.perf_counter() - start
    per_rank = group.gather([float(generated), float(reused), seconds, float(evaluations)])
    group.barrier()  # every rank's shards are written
    missing: list[str] = []
    if group.rank == 0:
        records = []
        for shard in shards:
            record, why = verify_shard(out, shard, fmt)
            if record is None:
                missing.append(f"{shard.number} ({why})")
            else:
                records.append({k: record[k] for k in ("shard", "start", "stop", "sha256")})
        wall = max(r[2] for r in per_rank)
        total, evals = sum(r[0] for r in per_rank), sum(r[3] for r in per_rank)
        throughput = {
            "world_size": group.world_size,
            "samples_generated": int(total),
            "samples_reused": int(sum(r[1] for r in per_rank)),
            "seconds": round(wall, 3),
            "samples_per_s": round(total / wall, 3) if wall > 0 and total else 0.0,
            "model_evaluations_per_s": round(evals / wall, 3) if wall > 0 and total else 0.0,
            "per_rank": [{"rank": i, "samples": int(r[0]), "seconds": round(r[2], 3)} for i, r in enumerate(per_rank)],
        }
        manifest.update(shards=records, complete=not missing, throughput=throughput, history=[*history, throughput])
        write_manifest(out, manifest)
        if progress:
            _say(
                group,
                f"{int(total)} samples generated, {throughput['samples_reused']} reused; "
                f"{throughput['samples_per_s']} samples/s, {throughput['model_evaluations_per_s']} model "
                f"evaluations/s over {group.world_size} process(es); {out / 'manifest.json'}",
            )
    missing_here = group.rank == 0 and bool(missing)
    if not group.all_true(not missing_here):  # every rank stops together
        where = f"shards {', '.join(missing[:5])} are" if group.rank == 0 else "some shards are"
        raise RuntimeError(f"out: {where} not done; run the same command again")
    if group.rank != 0:
        from .manifest import read_manifest

        manifest = read_manifest(out) or manifest
    return manifest
