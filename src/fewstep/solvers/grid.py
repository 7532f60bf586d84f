"""``Grid``: the nodes of one sampling run, with every per-node quantity precomputed.

Nodes ``t_0 > t_1 > ... > t_N`` in schedule time; the last node may be the clean end (sigma = 0,
lambda = +inf), which is a target only and never evaluated. Node arrays are float64 numpy arrays; the
evaluation :class:`~fewstep.denoiser.Point` of each model node (and of any intermediate time a solver
asks for) is built before the step loop, so that the loop does tensor arithmetic with Python floats only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..denoiser import Denoiser, Point

Callback = Callable[[dict[str, Any]], None]


@dataclass
class Grid:
    denoiser: Denoiser
    t: np.ndarray  # node times; nan at a clean end
    clean_end: bool
    batch: int
    device: torch.device
    dtype: torch.dtype
    callback: Callback | None = None
    progress: bool = False
    generator: torch.Generator | None = None
    nfe_budget: int | None = None
    #: ``noise_sampler(level_s, level_t)``: the standard normal noise of a stochastic step (instead of
    #: ``torch.randn(..., generator=generator)``), see :meth:`noise`.
    noise_sampler: Callable[[float, float], Tensor] | None = None
    #: a :class:`~fewstep.trajectory.Trajectory` to record the run in (None: nothing is recorded, at no cost).
    trajectory: Any = None
    #: ``(t_hi, t_lo)`` in schedule time: stochastic solvers add noise only on the steps whose start time lies in
    #: ``[t_lo, t_hi]`` and take their deterministic (eta = 0) step elsewhere (None: every step), see
    #: :meth:`stochastic_step`.
    sde_window: tuple[float, float] | None = None
    alpha: np.ndarray = field(init=False)
    sigma: np.ndarray = field(init=False)
    lam: np.ndarray = field(init=False)
    points: list[Point | None] = field(init=False)

    def __post_init__(self) -> None:
        sched = self.denoiser.schedule
        model_t = self.t[:-1] if self.clean_end else self.t
        model_points = self.denoiser.points([float(t) for t in model_t], self.batch, self.device, self.dtype)
        alpha = [p.alpha for p in model_points]
        sigma = [p.sigma for p in model_points]
        lam = [p.lam for p in model_points]
        self.points = list(model_points)
        if self.clean_end:
            self.points.append(None)
            alpha.append(sched.alpha_clean)
            sigma.append(0.0)
            lam.append(math.inf)
        self.alpha, self.sigma, self.lam = np.array(alpha), np.array(sigma), np.array(lam)

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    @property
    def h(self) -> np.ndarray:
        """Step sizes in lambda, ``h_i = lambda_{i+1} - lambda_i`` (inf on a step from alpha = 0 or to sigma = 0)."""
        with np.errstate(invalid="ignore"):
            return np.diff(self.lam)

    def finite(self, i: int) -> bool:
        """Whether step i has a finite lambda-size (so higher-order corrections are defined)."""
        return math.isfinite(self.lam[i]) and math.isfinite(self.lam[i + 1])

    def point(self, t: float) -> Point:
        return self.denoiser.point(t, self.batch, self.device, self.dtype)

    def point_at_lambda(self, lam: float) -> Point:
        return self.point(float(self.denoiser.schedule.t_of_lambda(lam)))

    def node(self, i: int) -> Point:
        p = self.points[i]
        if p is None:
            raise IndexError("the clean end is not a model node")
        return p

    def loop(self) -> Iterator[int]:
        """The step indices 0..N-1, with a progress bar when asked."""
        it = range(self.steps)
        return iter(tqdm(it, desc="fewstep", leave=False)) if self.progress else iter(it)

    def stochastic_step(self, i: int) -> bool:
        """Whether step i may add noise: it starts inside :attr:`sde_window` (every step when there is none)."""
        if self.sde_window is None:
            return True
        hi, lo = self.sde_window
        return lo <= float(self.t[i]) <= hi

    def add_noise(self, i: int, x: Tensor, s: float, t: float, std: float) -> Tensor:
        """``x + std z`` (in place on ``x``) with ``z = noise(s, t, x)``: step i's Gaussian transition
        ``N(x, std^2 I)``, recorded in :attr:`trajectory` when there is one."""
        return self.transition(i, x, s, t, std)[0]

    def transition(self, i: int, x: Tensor, s: float, t: float, std: float) -> tuple[Tensor, Tensor]:
        """:meth:`add_noise` that also returns the drawn ``z`` (for a solver that reuses it): ``(x + std z, z)``."""
        z = self.draw(s, t, x)
        mean = x.clone() if self.trajectory is not None else x
        x.add_(z, alpha=std)
        self.record(i, mean, std, x, z)
        return x, z

    def record(self, i: int, mean: Tensor, std: float, x: Tensor, z: Tensor) -> None:
        """Record ``x = mean + std z``, a Gaussian transition of step i, when a :attr:`trajectory` is recorded."""
        if self.trajectory is not None:
            self.trajectory.record(i, mean, std, x, z)

    def noise(self, s: float, t: float, like: Tensor) -> Tensor:
        """The standard normal noise of a stochastic step between the noise levels ``s`` and ``t`` (the schedule's
        :meth:`~fewstep.schedules.NoiseSchedule.level`: sigma/alpha, k-diffusion's sigma, or t for flows; 0 at the
        clean end), shaped like ``like`` and on its device and dtype.

        From ``noise_sampler(s, t)`` when one is given (k-diffusion's convention, e.g. a Brownian path's
        normalised increment), else ``torch.randn`` with ``generator`` (drawn on the generator's device).
        Noise that is not recorded as a Gaussian transition (through :meth:`add_noise`, :meth:`transition`, or
        :meth:`draw` and :meth:`record`) cannot be recorded: NotImplementedError while a :attr:`trajectory` is
        recorded.
        """
        if self.trajectory is not None:
            raise NotImplementedError(
                "trajectory: this solver's noise is not recorded as Gaussian transitions; transitions are recorded "
                "for euler_ancestral, ddpm, dpm_solver_1_sde, dpmpp_2m_sde, dpmpp_3m_sde, euler_maruyama, "
                "er_sde_1/2/3, edm_sde, sa_solver, seeds_1/2/3, dpm_solver_2_sde and pc_langevin with "
                "n_corrector=0 (see fewstep.trajectory)"
            )
        return self.draw(s, t, like)

    def draw(self, s: float, t: float, like: Tensor) -> Tensor:
        """:meth:`noise` without the trajectory check, for a solver that records the Gaussian transitions this draw
        enters itself, with :meth:`record` (one per draw, in draw order)."""
        if self.noise_sampler is not None:
            z = self.noise_sampler(float(s), float(t))
            if not isinstance(z, Tensor) or z.shape != like.shape:
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(f"noise_sampler: must return a tensor of shape {tuple(like.shape)}, got {got}")
            return z.to(device=like.device, dtype=like.dtype)
        g = self.generator
        z = torch.randn(like.shape, generator=g, device=g.device if g is not None else like.device, dtype=like.dtype)
        return z.to(like.device)

    def emit(self, i: int, x: Tensor, denoised: Tensor) -> None:
        if self.trajectory is not None:
            self.trajectory.step_done(i, x)
        if self.callback is not None:
            self.callback({"i": i, "t": float(self.t[i]), "x": x, "denoised": denoised})

    # Euler/Heun-type solvers integrate y = x / c in the noise level tau (NoiseSchedule.ode_variable):
    #   "sigma": tau = sigma/alpha, c = alpha, dy/dtau = eps_hat                  (k-diffusion, EDM)
    #   "t":     tau = t,           c = 1,     dy/dtau = alpha' x0_hat + sigma' eps_hat  (flow matching)
    def ode_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tau, c)`` at every node."""
        if self.denoiser.schedule.ode_variable == "t":
            tau = np.where(np.isnan(self.t), 0.0, self.t)
            return tau, np.ones_like(tau)
        with np.errstate(divide="ignore"):
            return self.sigma / self.alpha, self.alpha.copy()

    def frame_at(self, p: Point) -> tuple[float, float]:
        """``(tau, c)`` of :meth:`ode_frame` at any point (a node or an intermediate time); ``tau`` is the noise
        level the noise samplers are given."""
        if self.denoiser.schedule.ode_variable == "t":
            return p.t, 1.0
        return p.sigma / p.alpha, p.alpha

    def ode_velocity(self, p: Point) -> tuple[float, float]:
        """Coefficients ``(a, b)`` of ``dy/dtau = a x0_hat + b eps_hat`` at point p."""
        if self.denoiser.schedule.ode_variable == "t":
            return p.dalpha, p.dsigma
        return 0.0, 1.0
