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
step_integrals`; :func:`fewstep.compute_ems` estimates them for a model. ``l = 1, s = b = 0`` is the data prediction (DPM-Solver++: ``f = -x0``), ``l = 0, s = -1,
b = 0`` the noise prediction (DPM-Solver: ``f = e^{-lambda} eps``, ``g = e^{-lambda_s} eps``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...cache import cache_dir, save_atomic
from ...schedules import NoiseSchedule

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
        from scipy.interpolate import CubicSpline  # scipy is imported by this solver's statistics only

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


__all__ = ["EmpiricalModelStatistics", "default_path", "ems_key", "model_fingerprint", "schedule_fingerprint"]
