"""``compute_dc_ratios``: DC-Solver's compensation ratios searched for a model and a node table (see
:mod:`fewstep.solvers.ode.dc_solver` for what they are).

The search follows the paper (Sec. 3.3): from a few noise samples, a reference trajectory through the run's node
times is solved with many small steps (DPM-Solver++(3M), ``reference_substeps`` steps between two nodes, as the
paper's 200-step DDIM ground truth); then, step by step, the ratio ``rho_i`` of step ``i`` minimises the mean
squared distance between the state DC-Solver reaches at node ``i + 1`` (after the UniC correction there, which
evaluates the model at the predicted state) and the reference state, with the earlier ratios fixed. The paper
minimises with AdamW through the model; here a bounded scalar minimisation (Brent's method on ``bounds``, the
reference code's ``1 +- 0.5``) needs no gradient (the exact mixture denoisers have none), and a ratio is kept
only when it beats ``rho = 1`` (UniPC) on the step. Cost: the reference run, plus one evaluation per trial
ratio (about 10-25 per step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from .cache import cache_dir as user_cache_dir
from .model import CallCount, Denoiser
from .nodes import NodeTable
from .prepare import Final, check_counts, check_final, node_times
from .sampling import sample
from .schedules import NoiseSchedule
from .solvers.ode.dc_solver import DCRatios, DCSolver, compensation_weights
from .solvers.ode.ems import default_path, ems_key, model_fingerprint
from .solvers.unic import compensate, correct_state, predict_state
from .spacing import SpacingLike

__all__ = ["compute_dc_ratios"]


def compute_dc_ratios(
    model: Callable[..., Tensor] | Denoiser,
    schedule: NoiseSchedule | None = None,
    *,
    noise: Tensor,
    nfe: int | None = None,
    steps: int | None = None,
    spacing: SpacingLike = "logsnr",
    final: Final = "zero",
    prediction: str = "auto",
    dc_order: int = 2,
    solver_order: int = 2,
    lower_order_final: bool | str = True,
    disable_corrector: Iterable[int] = (),
    bounds: tuple[float, float] = (0.5, 1.5),
    xatol: float = 1e-4,
    reference_substeps: int = 32,
    model_key: str | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    path: str | Path | None = None,
    calls: CallCount | None = None,
) -> DCRatios:
    """The ratios of ``DCSolver(dc_order=..., solver_order=..., ...)`` for the run ``sample(model, x, schedule,
    "dc_solver", nfe=nfe or steps=steps, spacing=spacing, final=final)`` with ``x`` like ``noise`` (module
    docstring). ``noise``: the search samples at ``t_max`` (the paper uses 10).

    Caching as :func:`fewstep.compute_ems`: with a ``model_key`` (or an ``nn.Module``, hashed by its parameters)
    the ratios are stored under ``cache_dir`` (default ``fewstep.cache.cache_dir()/dc_ratios``) keyed by the
    model, schedule, node times and settings, and read back on the next call; ``path`` gives the file itself. A
    file holding another key is an error. ``calls``: a :class:`~fewstep.model.CallCount` the search's model calls
    are added to.
    """
    den = _denoiser(model, schedule, prediction)
    if not isinstance(noise, Tensor) or noise.ndim < 2:
        raise ValueError("noise: need a tensor of shape (batch, *shape), the search samples at t_max")
    lo, hi = (float(b) for b in bounds)
    if not (0.0 < lo < 1.0 < hi):
        raise ValueError(f"bounds: need 0 < lo < 1 < hi (a ratio of 1 is no compensation), got {bounds!r}")
    if not isinstance(reference_substeps, int) or reference_substeps < 1:
        raise ValueError(f"reference_substeps: need an integer >= 1, got {reference_substeps!r}")
    solver = DCSolver(None, dc_order, solver_order, True, lower_order_final, disable_corrector)
    check_counts(nfe, steps, spacing)
    clean_end = check_final(final)
    times = node_times(den.schedule, solver, nfe, steps, spacing, clean_end)
    nodes = NodeTable.build(den, times, clean_end, noise.shape[0], noise.device, noise.dtype)
    settings = dict(
        times=tuple(np.round(times, 10).tolist()), dc_order=dc_order, solver_order=solver_order,
        lower_order_final=lower_order_final, disable_corrector=tuple(disable_corrector), bounds=(lo, hi),
        xatol=xatol, reference_substeps=reference_substeps, batch=tuple(noise.shape),
    )  # fmt: skip
    key_model = model_key if model_key is not None else model_fingerprint(den.model)
    key = ems_key(key_model or "unnamed", den.schedule, den.prediction, **settings)
    root = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "dc_ratios"
    file = Path(path) if path is not None else (default_path(key, root) if key_model is not None else None)
    if cache and file is not None and file.is_file():
        return DCRatios.load(file, key)
    counted = calls if calls is not None else CallCount()
    reference = _reference(den, nodes, noise, reference_substeps, final, counted)
    ratios = _search(den, solver, nodes, noise, reference, (lo, hi), xatol, counted)
    result = DCRatios(times, np.array(ratios), dc_order, key)
    if cache and file is not None:
        result.save(file)
    return result


def _denoiser(model: Callable[..., Tensor] | Denoiser, schedule: NoiseSchedule | None, prediction: str) -> Denoiser:
    if isinstance(model, Denoiser):
        return model
    if schedule is None:
        raise TypeError("schedule: required (the NoiseSchedule the model was trained with)")
    return Denoiser(model, schedule, prediction)


def _reference(
    den: Denoiser, nodes: NodeTable, noise: Tensor, substeps: int, final: Final, calls: CallCount
) -> list[Tensor]:
    """The reference states at every node: DPM-Solver++(3M) with ``substeps`` steps between two nodes (uniform
    in lambda where it is finite, else in t) through the nodes' own times."""
    m = nodes.steps + (0 if nodes.clean_end else 1)  # model nodes
    t, lam = nodes.t[:m], nodes.lam[:m]
    frac = np.linspace(0, m - 1, (m - 1) * substeps + 1)
    if np.all(np.isfinite(lam)):
        fine = den.schedule.t_of_lambda(torch.from_numpy(np.interp(frac, np.arange(m), lam))).numpy()
    else:
        fine = np.interp(frac, np.arange(m), t)
    fine[::substeps] = t  # the nodes exactly
    states: dict[int, Tensor] = {0: noise}
    out = sample(
        den, noise, solver="dpmpp_3m", spacing=torch.from_numpy(fine), final=final, progress=False,
        callback=lambda d: states.__setitem__(d["i"] + 1, d["x"]), calls=calls,
    )  # fmt: skip
    ref = [states[k * substeps] for k in range(m)]
    return ref + [out] if nodes.clean_end else ref


def _search(
    den: Denoiser,
    solver: DCSolver,
    nodes: NodeTable,
    noise: Tensor,
    reference: list[Tensor],
    bounds: tuple[float, float],
    xatol: float,
    calls: CallCount,
) -> list[float]:
    """The ratios, step by step (module docstring); the loop is :func:`~fewstep.solvers.unic.predict_correct`'s
    with the trial of each step's ratio before its predictor."""
    evaluate = den.stack(calls, solver.needs_eps).evaluate
    plan, corr = solver.plan(nodes)
    depth = max([len(p.data) for p in plan] + [len(c.old) for c in corr if c is not None] + [solver.dc_order])
    n, k = nodes.steps, solver.dc_order
    ratios = [1.0] * n
    x, x_prev = noise, noise
    hist: list[Tensor] = []
    x0 = evaluate(x, nodes.node(0))[0]
    with torch.no_grad():
        for i in range(n):
            c_prev = corr[i - 1] if i > 0 else None
            if c_prev is not None:
                x = correct_state(x_prev, x0, hist, c_prev)
            trials: dict[float, tuple[float, list[Tensor], Tensor, Tensor | None]] = {}

            def trial(
                rho: float, i: int = i, x: Tensor = x, x0: Tensor = x0, hist: list[Tensor] = hist, trials: dict = trials
            ) -> float:
                """The squared distance to the reference at node i + 1 after step i with ratio ``rho``."""
                rho = float(rho)
                if rho not in trials:
                    w = compensation_weights(nodes.t, i, rho, k)
                    h = [x0 if w is None else compensate(x0, hist, w), *hist[: depth - 1]]
                    x_next = predict_state(x, h, (), plan[i])
                    x0_next = evaluate(x_next, nodes.node(i + 1))[0] if i < n - 1 else None
                    c = corr[i]
                    end = x_next if c is None or x0_next is None else correct_state(x, x0_next, h, c)
                    err = float((end - reference[i + 1]).double().square().mean())
                    trials[rho] = (err, h, x_next, x0_next)
                return trials[rho][0]

            if i >= k:
                best = minimize_scalar(trial, bounds=bounds, method="bounded", options={"xatol": xatol}).x
                ratios[i] = float(best) if trial(best) < trial(1.0) else 1.0
            trial(ratios[i])
            _, hist, x_pred, x0_next = trials[ratios[i]]
            x_prev, x = x, x_pred
            if x0_next is not None:
                x0 = x0_next
    return ratios
