"""``compute_ems``: the empirical model statistics of DPM-Solver-v3 estimated for a model (see
:mod:`fewstep.solvers.ode.ems` for what they are and how the solver uses them).

The calibration runs the model: at each lambda node, on the calibration samples (``data``) or along the model's own
ODE trajectories from ``noise`` (solved with :func:`fewstep.sample`), it evaluates the noise estimate, a
Hutchinson estimate of its Jacobian's diagonal and a central difference along the ODE's tangent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor

from .model import CallCount, Denoiser, Evaluation, Point
from .sampling import sample
from .schedules import NoiseSchedule
from .solvers.ode.ems import EmpiricalModelStatistics, default_path, ems_key, model_fingerprint

__all__ = ["compute_ems"]


def _jvp(fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, fd_step: float) -> Tensor:
    """``J v`` of ``fn`` at ``x``: forward-mode autograd, or a central difference where ``fn`` is not
    differentiable (e.g. a model that detaches its input, as the exact mixture denoisers do)."""
    with fwad.dual_level():
        tangent = fwad.unpack_dual(fn(fwad.make_dual(x, v))).tangent
    if tangent is not None:
        return tangent
    scale = fd_step * max(1.0, float(x.abs().max()))
    return (fn(x + scale * v) - fn(x - scale * v)) / (2 * scale)


def compute_ems(
    model: Callable[..., Tensor] | Denoiser,
    schedule: NoiseSchedule | None = None,
    *,
    data: Tensor | None = None,
    noise: Tensor | None = None,
    prediction: str = "auto",
    n_lambda: int = 64,
    lam_range: tuple[float, float] | None = None,
    per_dimension: bool = True,
    n_probe: int = 1,
    fd_step: float = 1e-3,
    ode_substeps: int = 2,
    generator: torch.Generator | None = None,
    model_key: str | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    path: str | Path | None = None,
    calls: CallCount | None = None,
) -> EmpiricalModelStatistics:
    """Estimate ``l``, ``s``, ``b`` (module docstring) on ``n_lambda`` uniform lambda nodes of ``lam_range``
    (default: the schedule's ``[lambda(t_max), lambda(t_min)]``, the start clipped to -12 where alpha = 0).

    The states at each node are ``alpha x0 + sigma eps`` for the calibration samples ``data`` (fixed eps), or the
    ODE trajectories from ``noise`` at ``t_max`` (DPM-Solver++(3M) on the lambda grid refined ``ode_substeps``
    times). Cost per node: 3 evaluations and ``n_probe`` Jacobian-vector products (one forward-mode
    evaluation each, plus 2 for a central difference when the model is not differentiable), plus the trajectory
    when ``noise`` is given.

    Caching: with a ``model_key`` (or an ``nn.Module``, hashed by its parameters) the statistics are stored
    under the user's cache directory (``cache_dir`` to override; ``fewstep.cache.cache_dir()/ems``),
    keyed by :func:`ems_key`, and read back on the next call; ``path`` gives the file itself. A file holding
    another key is an error (ValueError), never silently used. ``calls``: a :class:`~fewstep.model.CallCount` to
    which the calibration's model calls are added.
    """
    if isinstance(model, Denoiser):
        den = model
    elif schedule is None:
        raise TypeError("schedule: required (the NoiseSchedule the model was trained with)")
    else:
        den = Denoiser(model, schedule, prediction)
    sched = den.schedule
    if (data is None) == (noise is None):
        raise ValueError("data, noise: give one of them (calibration samples, or noise at t_max)")
    x_in = data if data is not None else noise
    if not isinstance(x_in, Tensor) or x_in.ndim < 2:
        raise ValueError("data, noise: need a tensor of shape (batch, *shape)")
    if not isinstance(n_lambda, int) or n_lambda < 4:
        raise ValueError(f"n_lambda: need an integer >= 4, got {n_lambda!r}")
    if not isinstance(n_probe, int) or n_probe < 1:
        raise ValueError(f"n_probe: need an integer >= 1, got {n_probe!r}")
    if not isinstance(per_dimension, bool):
        raise TypeError(f"per_dimension: must be a bool, got {per_dimension!r}")
    if lam_range is None:
        lo, hi = (float(sched.lambda_(torch.tensor(t, dtype=torch.float64))) for t in (sched.t_max, sched.t_min))
        lam_range = (max(lo, -12.0), hi)
    lam = np.linspace(float(lam_range[0]), float(lam_range[1]), n_lambda)
    if not lam[-1] > lam[0]:
        raise ValueError(f"lam_range: need lo < hi, got {lam_range}")
    settings = dict(
        n_lambda=n_lambda, lam_range=(round(lam[0], 8), round(lam[-1], 8)), per_dimension=per_dimension,
        n_probe=n_probe, fd_step=fd_step, source="data" if data is not None else "noise",
        batch=tuple(x_in.shape), model_prediction=den.prediction,
    )  # fmt: skip
    key_model = model_key if model_key is not None else model_fingerprint(den.model)
    key = ems_key(key_model or "unnamed", sched, den.prediction, **settings)
    file = Path(path) if path is not None else (default_path(key, cache_dir) if key_model is not None else None)
    if cache and file is not None and file.is_file():
        return EmpiricalModelStatistics.load(file, key)
    counted = calls if calls is not None else CallCount()
    stats = _estimate(
        den, lam, x_in, data is not None, per_dimension, n_probe, fd_step, ode_substeps, generator, counted
    )
    stats.key = key
    if cache and file is not None:
        stats.save(file)
    return stats


def _states(
    den: Denoiser, lam: np.ndarray, x: Tensor, is_data: bool, substeps: int, g: torch.Generator | None, calls: CallCount
):
    """The calibration states at each lambda node (a generator of (point, x))."""
    sched = den.schedule
    times = sched.t_of_lambda(torch.from_numpy(lam)).numpy()
    b, dev, dt = x.shape[0], x.device, x.dtype
    if is_data:
        eps = torch.randn(x.shape, generator=g, dtype=torch.float64).to(device=dev, dtype=dt)
        for t in times:
            p = den.point(float(t), b, dev, dt)
            yield p, p.alpha * x + p.sigma * eps
        return
    fine = np.interp(np.linspace(0, lam.size - 1, (lam.size - 1) * substeps + 1), np.arange(lam.size), lam)
    fine_t = sched.t_of_lambda(torch.from_numpy(fine)).numpy()
    lead = [float(sched.t_max)] if float(sched.t_max) > fine_t[0] * (1 + 1e-12) else []
    spacing = np.concatenate([lead, fine_t])
    states: dict[int, Tensor] = {0: x}
    sample(
        den, x, solver="dpmpp_3m", spacing=torch.from_numpy(spacing), final="t_min", progress=False,
        callback=lambda d: states.__setitem__(d["i"] + 1, d["x"]), calls=calls,
    )  # fmt: skip
    for k, t in enumerate(times):
        yield den.point(float(t), b, dev, dt), states[len(lead) + k * substeps]


def _estimate(
    den: Denoiser,
    lam: np.ndarray,
    x_in: Tensor,
    is_data: bool,
    per_dimension: bool,
    n_probe: int,
    fd_step: float,
    substeps: int,
    g: torch.Generator | None,
    calls: CallCount,
) -> EmpiricalModelStatistics:
    """One pass over the nodes: l's diagonal estimate and the moments of (x, sigma eps, h') that f and f' are
    built from (``h = (sigma/alpha) eps``, ``f = (sigma eps - l x)/alpha``, ``f' = h' - (l' x - l sigma eps)/alpha``)."""
    sched = den.schedule
    mom: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "e", "h", "xx", "xe", "ee", "hx", "he", "l")}
    mean = lambda t: t.double().mean(0).cpu().numpy()  # noqa: E731
    evaluate = den.stack(calls).evaluate
    for p, x in _states(den, lam, x_in, is_data, substeps, g, calls):
        with torch.no_grad():
            _, eps = evaluate(x, p)
        assert eps is not None
        e = p.sigma * eps
        dloga = p.dalpha / p.alpha / (p.dalpha / p.alpha - p.dsigma / p.sigma)  # dlog(alpha)/dlambda
        v_ode = dloga * x - e  # dx/dlambda
        diag = torch.zeros_like(x, dtype=torch.float64)
        for _ in range(n_probe):  # Hutchinson's diagonal estimate of sigma grad_x eps
            v = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).to(device=x.device, dtype=x.dtype)
            diag += (v * _jvp(functools.partial(_eps, evaluate, p), x, v, fd_step)).double()
        mom["l"].append(mean(p.sigma * diag / n_probe))
        hd = []  # h at lambda -+ delta, moved along the ODE's tangent
        for sign in (-1.0, 1.0):
            q = den.point(
                float(sched.t_of_lambda(torch.tensor(p.lam + sign * fd_step, dtype=torch.float64))),
                x.shape[0],
                x.device,
                x.dtype,
            )
            with torch.no_grad():
                _, eq = evaluate(x + sign * fd_step * v_ode, q)
            assert eq is not None
            hd.append(q.sigma / q.alpha * eq)
        h = (hd[1] - hd[0]) / (2 * fd_step)
        for name, val in (("x", x), ("e", e), ("h", h)):
            mom[name].append(mean(val))
        for name, (u, w) in {"xx": (x, x), "xe": (x, e), "ee": (e, e), "hx": (h, x), "he": (h, e)}.items():
            mom[name].append(mean(u.double() * w.double()))
    m = {k: np.stack(v) for k, v in mom.items()}
    alpha = _alpha_at(den, lam).reshape(-1, *([1] * (m["x"].ndim - 1)))
    axes = tuple(range(1, m["l"].ndim))
    l = m["l"] if per_dimension else np.broadcast_to(m["l"].mean(axes, keepdims=True), m["l"].shape)  # noqa: E741
    from scipy.interpolate import CubicSpline

    dl = CubicSpline(lam, l, axis=0)(lam, 1)  # l' of the interpolant the solver uses
    # f = A x + B e, f' = h + C x + D e (elementwise, per lambda)
    a_, b_, c_, d_ = -l / alpha, 1.0 / alpha, -dl / alpha, l / alpha
    ef = a_ * m["x"] + b_ * m["e"]
    efp = m["h"] + c_ * m["x"] + d_ * m["e"]
    eff = a_**2 * m["xx"] + 2 * a_ * b_ * m["xe"] + b_**2 * m["ee"]
    effp = a_ * (m["hx"] + c_ * m["xx"] + d_ * m["xe"]) + b_ * (m["he"] + c_ * m["xe"] + d_ * m["ee"])
    var, cov = eff - ef**2, effp - ef * efp
    if not per_dimension:  # one l and s per lambda (stored per dimension, all equal); b stays per dimension
        var, cov, eff = (np.broadcast_to(v.sum(axes, keepdims=True), v.shape) for v in (var, cov, eff))
    s = np.where(var > 1e-10 * eff + 1e-300, cov / np.where(var > 0, var, 1.0), 0.0)  # no spread of f: s = 0
    return EmpiricalModelStatistics(lam, np.array(l), s, efp - s * ef)


def _eps(evaluate: Evaluation, p: Point, x: Tensor) -> Tensor:
    eps = evaluate(x, p)[1]
    assert eps is not None
    return eps


def _alpha_at(den: Denoiser, lam: np.ndarray) -> np.ndarray:
    t = den.schedule.t_of_lambda(torch.from_numpy(lam))
    return den.schedule.alpha(t).numpy()
