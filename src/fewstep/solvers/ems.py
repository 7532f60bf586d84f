"""Empirical model statistics (EMS) of DPM-Solver-v3 (Zheng, Lu, Chen & Zhu 2023, "DPM-Solver-v3: Improved
Diffusion ODE Solver with Empirical Model Statistics", Sec. 3.1-3.2).

The PF-ODE in ``lambda = log(alpha/sigma)`` is ``dx/dlambda = (dlog alpha/dlambda) x - sigma eps_theta``. For any
``l_lambda`` it is, with ``y = x / alpha``,

    dy/dlambda = -l_lambda y - f_theta,   f_theta = (sigma eps_theta - l_lambda x) / alpha              (eq. 6)

and with ``s_lambda``, ``b_lambda`` the model is written ``f_theta = e^{S} (g_theta + B)``,
``S(lambda) = int s``, ``B(lambda) = int e^{-S} b``, so that ``df/dlambda = s f + b + e^{S} dg/dlambda``: ``g`` is
constant where f follows the linear ODE ``f' = s f + b`` (eq. 7). The statistics minimise the first-order
discretisation error (eq. 8-9), estimated on states ``x_lambda`` of the model's own ODE:

    l*_lambda = argmin E ||grad_x (sigma eps_theta - l x)||_F^2 = diag E[sigma grad_x eps_theta]
    s*_lambda, b*_lambda = argmin E ||f'_theta - s f_theta - b||^2
                         = Cov(f', f) / Var(f),  E f' - s E f

where ``f'`` is the total derivative along the ODE. ``l`` uses Jacobian-vector products (Hutchinson's diagonal
estimate ``E_v[v * (J v)]`` with Rademacher ``v``, exact for a diagonal Jacobian), ``f'`` a central difference
along the ODE's tangent and ``l'`` the derivative of the cubic spline through the estimated ``l``.

``l``, ``s``, ``b`` are stored on a uniform lambda grid (per data dimension, or pooled: one ``l``, ``s`` per
lambda) and interpolated by cubic splines (twice continuously differentiable: a piecewise-linear ``l`` would put
kinks into ``f`` and cost the solver its order), held constant outside the grid. The integrals an update needs
(``L = int l``, ``S = int s`` exactly, ``B`` and the weights ``int e^{L+S} (lambda - lambda_s)^k / k!``,
``int e^{L+S} B`` by Gauss-Legendre quadrature between the grid nodes) are in :meth:`EmpiricalModelStatistics.
step_integrals`. ``l = 1, s = b = 0`` is the data prediction (DPM-Solver++: ``f = -x0``), ``l = 0, s = -1,
b = 0`` the noise prediction (DPM-Solver: ``f = e^{-lambda} eps``, ``g = e^{-lambda_s} eps``).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwad
from scipy.interpolate import CubicSpline
from torch import Tensor

from ..cache import cache_dir, save_atomic
from ..model import Denoiser, Point
from ..schedules import NoiseSchedule

CACHE_VERSION = "ems-1"
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(10)
_MAX_PIECE = 0.25  # longest lambda-interval of one Gauss-Legendre panel


@dataclass
class EmpiricalModelStatistics:
    """``l``, ``s``, ``b`` at the increasing lambda grid ``lam``: arrays of shape ``(n, *event)``, where ``event``
    is the data's per-sample shape (per-dimension statistics) or ``()`` (one value per lambda, broadcast).

    ``key`` names what they were computed for (model, schedule, grid settings; see :func:`ems_key`); the solver
    refuses statistics whose key names another schedule.
    """

    lam: np.ndarray
    l: np.ndarray  # noqa: E741  (the paper's name)
    s: np.ndarray
    b: np.ndarray
    key: str = ""
    _spline: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.lam = np.asarray(self.lam, dtype=np.float64)
        if self.lam.ndim != 1 or self.lam.size < 2 or not np.all(np.diff(self.lam) > 0):
            raise ValueError("lam: need an increasing 1-D grid of at least 2 finite values")
        if not np.all(np.isfinite(self.lam)):
            raise ValueError("lam: need finite values")
        for name in ("l", "s", "b"):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.shape[:1] != self.lam.shape or not np.all(np.isfinite(v)):
                raise ValueError(f"{name}: need finite values of shape ({self.lam.size}, *event), got {v.shape}")
            setattr(self, name, v)
        if not self.l.shape == self.s.shape == self.b.shape:
            raise ValueError(f"l, s, b: need one shape, got {self.l.shape}, {self.s.shape}, {self.b.shape}")
        for name in ("l", "s", "b"):  # C^2 interpolants (g inherits their smoothness, which the order needs)
            self._spline[name] = CubicSpline(self.lam, getattr(self, name), axis=0)
        for name in ("l", "s"):
            self._spline["int_" + name] = self._spline[name].antiderivative()

    @classmethod
    def constant(
        cls, l: float = 1.0, s: float = 0.0, b: float = 0.0, event: tuple[int, ...] = ()
    ) -> EmpiricalModelStatistics:  # noqa: E741
        """Constant statistics: ``l = 1, s = b = 0`` (the default) is DPM-Solver++'s data prediction,
        ``l = 0, s = -1, b = 0`` DPM-Solver's noise prediction (``g = e^{-lambda_s} eps``)."""
        full = lambda v: np.full((2, *event), float(v))  # noqa: E731
        return cls(np.array([-1.0, 1.0]), full(l), full(s), full(b), key=f"constant(l={l}, s={s}, b={b})")

    @property
    def event(self) -> tuple[int, ...]:
        return tuple(self.l.shape[1:])

    # -- interpolation ---------------------------------------------------------------------------------------
    def value(self, name: str, q: np.ndarray | float) -> np.ndarray:
        """``l``, ``s`` or ``b`` at the lambdas ``q``: shape ``(len(q), *event)`` (cubic spline through the grid
        values, constant outside the grid)."""
        q = np.atleast_1d(np.asarray(q, dtype=np.float64))
        return self._spline[name](np.clip(q, self.lam[0], self.lam[-1]))

    def integral(self, name: str, a: float, q: np.ndarray | float) -> np.ndarray:
        """``int_a^q`` of ``l`` or ``s``, shape ``(len(q), *event)`` (exact for the interpolant)."""
        q = np.atleast_1d(np.asarray(q, dtype=np.float64))
        return self._cumulative(name, q) - self._cumulative(name, np.array([a]))

    def _cumulative(self, name: str, q: np.ndarray) -> np.ndarray:
        qc = np.clip(q, self.lam[0], self.lam[-1])
        outside = (q - qc).reshape(-1, *([1] * len(self.event)))
        return self._spline["int_" + name](qc) + outside * self.value(name, qc)  # constant outside the grid

    # -- the integrals of one step ---------------------------------------------------------------------------
    def _panels(self, a: float, b: float) -> np.ndarray:
        """Panel ends from a to b (either direction): the grid nodes in between, then at most _MAX_PIECE apart."""
        lo, hi = min(a, b), max(a, b)
        pts = np.unique(np.concatenate([[lo, hi], self.lam[(self.lam > lo) & (self.lam < hi)]]))
        out = [pts[:1]]
        for u, v in zip(pts[:-1], pts[1:], strict=True):
            k = max(1, math.ceil((v - u) / _MAX_PIECE))
            out.append(np.linspace(u, v, k + 1)[1:])
        pts = np.concatenate(out)
        return pts if a <= b else pts[::-1]

    @staticmethod
    def _gauss(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gauss-Legendre nodes and weights on the panels [u_k, v_k]: shape (K, m) each (signed lengths)."""
        half = (v - u)[:, None] / 2
        return u[:, None] + half * (_GL_NODES + 1.0), half * _GL_WEIGHTS

    def _weighted(self, w: np.ndarray, vals: np.ndarray) -> np.ndarray:
        return np.tensordot(w.reshape(-1), vals.reshape(w.size, *self.event), axes=1)

    def step_integrals(self, lam_s: float, lam_t: float, nodes: list[float], kmax: int) -> dict[str, Any]:
        """For a step from ``lam_s`` to ``lam_t`` (anchored at ``lam_s``: ``L(lam_s) = S(lam_s) = B(lam_s) = 0``):

        - ``L_t = int_s^t l``,
        - ``I[k] = int_s^t e^{L + S} (lambda - lam_s)^k / k!`` for k = 0..kmax,
        - ``C = int_s^t e^{L + S} B``, ``B(lambda) = int_s^lambda e^{-S} b``,
        - ``S_j``, ``B_j``: ``S`` and ``B`` at each of ``nodes`` (the data points of the step).

        All event-shaped float64 arrays.
        """
        ebs = lambda q: np.exp(-self.integral("s", lam_s, q)) * self.value("b", q)  # noqa: E731  (e^{-S} b)
        els = lambda q: np.exp(self.integral("l", lam_s, q) + self.integral("s", lam_s, q))  # noqa: E731
        pts = self._panels(lam_s, lam_t)
        q, w = self._gauss(pts[:-1], pts[1:])  # (K, m)
        weight = els(q.reshape(-1)).reshape(*q.shape, *self.event)
        u = (q - lam_s).reshape(*q.shape, *([1] * len(self.event)))
        integrals = [self._weighted(w, weight * u**k / math.factorial(k)) for k in range(kmax + 1)]
        out = {"L_t": self.integral("l", lam_s, lam_t)[0], "I": integrals}
        out["S"] = [self.integral("s", lam_s, lj)[0] for lj in nodes]
        zero = np.zeros(self.event)
        if not np.any(self.b):  # b = 0: B = 0 and C = 0
            return {**out, "C": zero, "B": [zero] * len(nodes)}
        # B at the quadrature nodes: B(panel start) + the panel's part up to the node (nested Gauss-Legendre)
        b_nodes = np.empty_like(weight)
        b_start = zero
        for k in range(q.shape[0]):
            qi, wi = self._gauss(np.full(q.shape[1], pts[k]), q[k])  # (m, m): from the panel start to each node
            b_nodes[k] = b_start + np.einsum("ij,ij...->i...", wi, ebs(qi.reshape(-1)).reshape(*qi.shape, *self.event))
            qk, wk = self._gauss(pts[k : k + 1], pts[k + 1 : k + 2])
            b_start = b_start + self._weighted(wk, ebs(qk.reshape(-1)))
        out["C"] = self._weighted(w, weight * b_nodes)
        out["B"] = []
        for lj in nodes:
            pj = self._panels(lam_s, lj)
            qj, wj = self._gauss(pj[:-1], pj[1:])
            out["B"].append(self._weighted(wj, ebs(qj.reshape(-1))) if lj != lam_s else zero)
        return out

    # -- files -------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (torch.save of plain tensors and the key; atomic)."""

        blob: dict[str, Any] = {"version": CACHE_VERSION, "key": self.key}
        blob.update({n: torch.from_numpy(np.ascontiguousarray(getattr(self, n))) for n in ("lam", "l", "s", "b")})
        save_atomic(blob, Path(path))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, key: str | None = None) -> EmpiricalModelStatistics:
        """Read statistics written by :meth:`save`; ValueError when ``key`` is given and differs from the stored one."""
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION:
            raise ValueError(f"path: {path} is not an EMS file of version {CACHE_VERSION}")
        if key is not None and blob["key"] != key:
            raise ValueError(f"key: {path} holds statistics for {blob['key']!r}, not for {key!r}")
        lam, l, s, b = (blob[n].numpy() for n in ("lam", "l", "s", "b"))  # noqa: E741
        return cls(lam, l, s, b, key=str(blob["key"]))


def schedule_fingerprint(schedule: NoiseSchedule) -> str:
    """The schedule's repr and a hash of its lambda(t) at 64 times (a repr alone may not tell tables apart)."""
    t = torch.linspace(float(schedule.t_min), float(schedule.t_max), 64, dtype=torch.float64)
    lam = schedule.lambda_(t).numpy().round(10)
    return f"{schedule!r}#{hashlib.sha256(lam.tobytes()).hexdigest()[:12]}"


def model_fingerprint(model: Any) -> str | None:
    """A hash of an ``nn.Module``'s parameters and buffers (None for other models: give ``model_key``)."""
    if not isinstance(model, torch.nn.Module):
        return None
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def ems_key(model_key: str, schedule: NoiseSchedule, prediction: str, **settings: Any) -> str:
    """The cache key: model key, schedule fingerprint, prediction and the grid/estimator settings."""
    opts = ", ".join(f"{k}={v!r}" for k, v in sorted(settings.items()))
    return f"model={model_key} | schedule={schedule_fingerprint(schedule)} | prediction={prediction} | {opts}"


def default_path(key: str, directory: str | Path | None = None) -> Path:
    """The cache file of the statistics with this key (under ``directory``, default ``cache_dir()/ems``)."""
    root = Path(directory) if directory is not None else cache_dir() / "ems"
    return root / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"


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
    prediction: str = "epsilon",
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
    another key is an error (ValueError), never silently used.
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
    stats = _estimate(den, lam, x_in, data is not None, per_dimension, n_probe, fd_step, ode_substeps, generator)
    stats.key = key
    if cache and file is not None:
        stats.save(file)
    return stats


def _states(den: Denoiser, lam: np.ndarray, x: Tensor, is_data: bool, substeps: int, g: torch.Generator | None):
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
    from ..sampling import sample

    fine = np.interp(np.linspace(0, lam.size - 1, (lam.size - 1) * substeps + 1), np.arange(lam.size), lam)
    fine_t = sched.t_of_lambda(torch.from_numpy(fine)).numpy()
    lead = [float(sched.t_max)] if float(sched.t_max) > fine_t[0] * (1 + 1e-12) else []
    spacing = np.concatenate([lead, fine_t])
    states: dict[int, Tensor] = {0: x}
    sample(
        den, x, solver="dpmpp_3m", spacing=torch.from_numpy(spacing), final="t_min", progress=False,
        callback=lambda d: states.__setitem__(d["i"] + 1, d["x"]),
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
) -> EmpiricalModelStatistics:
    """One pass over the nodes: l's diagonal estimate and the moments of (x, sigma eps, h') that f and f' are
    built from (``h = (sigma/alpha) eps``, ``f = (sigma eps - l x)/alpha``, ``f' = h' - (l' x - l sigma eps)/alpha``)."""
    sched = den.schedule
    mom: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "e", "h", "xx", "xe", "ee", "hx", "he", "l")}
    mean = lambda t: t.double().mean(0).cpu().numpy()  # noqa: E731
    for p, x in _states(den, lam, x_in, is_data, substeps, g):
        with torch.no_grad():
            _, eps = den(x, p)
        assert eps is not None
        e = p.sigma * eps
        dloga = p.dalpha / p.alpha / (p.dalpha / p.alpha - p.dsigma / p.sigma)  # dlog(alpha)/dlambda
        v_ode = dloga * x - e  # dx/dlambda
        diag = torch.zeros_like(x, dtype=torch.float64)
        for _ in range(n_probe):  # Hutchinson's diagonal estimate of sigma grad_x eps
            v = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).to(device=x.device, dtype=x.dtype)
            diag += (v * _jvp(functools.partial(_eps, den, p), x, v, fd_step)).double()
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
                _, eq = den(x + sign * fd_step * v_ode, q)
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


def _eps(den: Denoiser, p: Point, x: Tensor) -> Tensor:
    eps = den(x, p)[1]
    assert eps is not None
    return eps


def _alpha_at(den: Denoiser, lam: np.ndarray) -> np.ndarray:
    t = den.schedule.t_of_lambda(torch.from_numpy(lam))
    return den.schedule.alpha(t).numpy()


__all__ = ["EmpiricalModelStatistics", "compute_ems", "ems_key", "model_fingerprint", "schedule_fingerprint"]
