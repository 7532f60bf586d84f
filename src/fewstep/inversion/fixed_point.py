"""Fixed-point refinement of each inversion step: solve the sampler's own step for its start.

A deterministic one-step sampler maps the state at the noisier time ``s_{i+1}`` to the state at ``s_i`` by
``x_i = Phi_i(x_{i+1})``. Plain inversion (:func:`fewstep.inversion.invert`) approximates ``x_{i+1}`` by the same
update rule run from ``x_i`` upwards, so ``Phi_i(x_{i+1}) != x_i`` by the step's local error. The refinement solves
the implicit equation ``Phi_i(z) = x_i`` for ``z`` by the fixed-point iteration

    z^{m+1} = z^m + (x_i - Phi_i(z^m)) / a_i,       a_i = alpha(s_i) / alpha(s_{i+1}),

started at the plain inversion step. ``a_i`` is the linear part of the DDIM map in the epsilon form
(``Phi(z) = a_i z + b_i eps_hat(z)``), for which the iteration is the usual one, ``z = (x_i - b_i eps_hat(z)) / a_i``;
its error multiplier along an eigenvector of the score's Jacobian is ``mu = (1 - e^{-h_i})(1 - alpha^2 c / sigma^2)``
(``c`` the posterior variance of the data there, ``h_i`` the step's lambda-size): below 1, but close to 1 on long
steps and below -1 between modes. So every sample takes Anderson mixing of depth 1 (Walker & Ni 2011, "Anderson
acceleration for fixed-point iterations") after an accepted correction, and a sample whose residual would grow keeps
its state and halves its step (the damped iteration); each sample's residual never grows. Where
``alpha(s_{i+1}) = 0`` (a flow's ``t = 1``, where ``eps_hat = z / sigma`` does not depend on the model) ``a_i`` is
``sigma(s_i) / sigma(s_{i+1})``. Each step's residual ``||x_i - Phi_i(z)|| / ||x_i||`` (per sample) is reported; as
it falls, the round trip ``sample(invert(x0))`` becomes exact step by step.

Fixed-point inversion of a DDIM step: Pan et al. 2023, "Effective Real Image Editing with Accelerated Iterative
Diffusion Inversion" (AIDI, ICCV); Garibi et al. 2024, "ReNoise: Real Image Inversion Through Iterative Noising"
(ECCV); as a fixed-point problem under a joint condition: "DCI: Dual-Conditional Inversion for Boosting
Diffusion-Based Image Editing" (2025).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..context import RunContext
from ..model import Denoiser
from ..model.stack import ModelStack
from ..nodes import NodeTable
from ..solvers import Solver

#: The invertible solvers whose step is a function of the state at its start alone (the ones a fixed point of a
#: single step can invert; a multistep solver's step also needs the earlier, noisier states).
ONE_STEP: tuple[str, ...] = ("ddim", "euler", "heun")


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point refinement of every inversion step (module docstring): at most ``iterations`` corrections per
    step, fewer when every sample's residual is at most ``tol`` (None: always ``iterations``; a tolerance reads the
    residual on the host once per correction)."""

    iterations: int = 5
    tol: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int):
            raise TypeError(f"FixedPoint.iterations: must be an integer, got {type(self.iterations).__name__}")
        if self.iterations < 0:
            raise ValueError(f"FixedPoint.iterations: must be >= 0 (0 reports plain inversion's residual), got "
                             f"{self.iterations}; e.g. iterations=5")  # fmt: skip
        if self.tol is not None:
            if isinstance(self.tol, bool) or not isinstance(self.tol, int | float):
                raise TypeError(f"FixedPoint.tol: must be a number or None, got {type(self.tol).__name__}")
            if not float(self.tol) >= 0.0:
                raise ValueError(f"FixedPoint.tol: must be >= 0 (a relative residual), got {self.tol}; e.g. 1e-8")


@dataclass
class FixedPointReport:
    """What a refined inversion did, filled by ``invert(..., refine=FixedPoint(...), report=FixedPointReport())``.

    Rows follow the inversion's steps (row ``i``: from the ``i``-th smallest time to the next). ``residual`` and
    ``initial`` are ``(steps, batch)`` float64 relative residuals ``||x_i - Phi_i(z)|| / ||x_i||`` of the returned
    state and of the plain inversion step's state; ``iterations`` the corrections tried at each step (one sampling
    step each; a sample whose trial would raise its residual keeps its state)."""

    residual: Tensor = field(default_factory=lambda: torch.empty(0, 0, dtype=torch.float64))
    initial: Tensor = field(default_factory=lambda: torch.empty(0, 0, dtype=torch.float64))
    iterations: list[int] = field(default_factory=list)


def check_refine(refine: object, report: object, solver: Solver) -> FixedPoint | None:
    """``refine`` (None or a :class:`FixedPoint` for a solver of :data:`ONE_STEP`) and ``report`` (None or a
    :class:`FixedPointReport`, only with ``refine``): TypeError/ValueError naming the argument otherwise."""
    if report is not None and not isinstance(report, FixedPointReport):
        raise TypeError(f"report: must be a fewstep.inversion.FixedPointReport, got {type(report).__name__}")
    if refine is None:
        if report is not None:
            raise ValueError("report: is filled by a refined inversion only; give refine=FixedPoint(...) too")
        return None
    if not isinstance(refine, FixedPoint):
        raise TypeError(f"refine: must be None or a fewstep.inversion.FixedPoint, got {type(refine).__name__}")
    if solver.name not in ONE_STEP:
        raise ValueError(
            f"refine: fixed-point refinement inverts one step at a time, and {solver.name!r} is a multistep solver "
            f"(its step needs earlier, noisier states); choose one of {', '.join(ONE_STEP)} (e.g. 'ddim'), or the "
            "exact methods bdia_invert / edict_invert"
        )
    return refine


@dataclass(frozen=True)
class _Step:
    """One inversion step: its plain (``up``) and sampling (``down``) two-node tables and contexts, and ``a``."""

    up: NodeTable
    up_ctx: RunContext
    down: NodeTable
    down_ctx: RunContext
    a: float


def refined_inversion(
    solver: Solver,
    x0: Tensor,
    times: np.ndarray,
    denoiser: Denoiser,
    stack: ModelStack,
    refine: FixedPoint,
    report: FixedPointReport | None,
    grad: bool,
) -> Tensor:
    """The latent at ``times[-1]`` (increasing ``times``) with every step refined (module docstring)."""
    batch, device, dtype = x0.shape[0], x0.device, x0.dtype
    shape = (batch,) + (1,) * (x0.dim() - 1)
    steps = []
    for lo, hi in zip(times[:-1], times[1:], strict=True):
        up = NodeTable.build(denoiser, np.array([lo, hi]), False, batch, device, dtype)
        down = NodeTable.build(denoiser, np.array([hi, lo]), False, batch, device, dtype)
        alpha, sigma = down.alpha, down.sigma
        a = float(alpha[1] / alpha[0]) if alpha[0] > 0 else float(sigma[1] / sigma[0])
        steps.append(_Step(up, RunContext(up), down, RunContext(down), a))
    residuals: list[Tensor] = []
    initials: list[Tensor] = []
    done: list[int] = []
    x = x0
    with torch.set_grad_enabled(grad):
        for step in steps:
            z = solver.run(x, step.up, step.up_ctx, stack.evaluate)
            scale = x.flatten(1).norm(dim=1).to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
            r = x - solver.run(z, step.down, step.down_ctx, stack.evaluate)
            res = r.flatten(1).norm(dim=1).to(torch.float64) / scale
            initials.append(res)
            damping = torch.ones_like(res)
            f = r / step.a  # the fixed-point map's increment G(z) - z
            z_old, f_old = z, f
            anderson = torch.zeros_like(res, dtype=torch.bool)  # whether the last trial of a sample was accepted
            m = 0
            while m < refine.iterations and (refine.tol is None or not bool(res.max() <= refine.tol)):
                trial = _trial(z, f, z_old, f_old, damping, anderson, shape)
                r_trial = x - solver.run(trial, step.down, step.down_ctx, stack.evaluate)
                res_trial = r_trial.flatten(1).norm(dim=1).to(torch.float64) / scale
                better = res_trial <= res  # a sample whose residual grew keeps its state and halves its damping
                keep = better.view(shape)
                z_old = torch.where(keep, z, z_old)
                f_old = torch.where(keep, f, f_old)
                z, f = torch.where(keep, trial, z), torch.where(keep, r_trial / step.a, f)
                res = torch.where(better, res_trial, res)
                damping = torch.where(better, damping, damping * 0.5)
                anderson = better
                m += 1
            residuals.append(res)
            done.append(m)
            x = z
    if report is not None:
        report.residual = torch.stack(residuals).cpu()
        report.initial = torch.stack(initials).cpu()
        report.iterations = done
    return x


def _trial(
    z: Tensor, f: Tensor, z_old: Tensor, f_old: Tensor, damping: Tensor, anderson: Tensor, shape: tuple[int, ...]
) -> Tensor:
    """The next iterate of every sample: Anderson mixing of depth 1 (Walker & Ni 2011) after an accepted step,
    ``z + f - gamma (dz + df)`` with ``gamma = <f, df> / <df, df>``, else the damped iteration ``z + damping f``."""
    dz, df = (z - z_old).flatten(1), (f - f_old).flatten(1)
    flat = f.flatten(1)
    den = (df * df).sum(dim=1)
    gamma = torch.where(den > 0, (flat * df).sum(dim=1) / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)
    mixed = (flat - gamma.unsqueeze(1) * (dz + df)).view_as(f)
    plain = f * damping.to(f.dtype).view(shape)
    return z + torch.where((anderson & (den > 0)).view(shape), mixed, plain)


__all__ = ["ONE_STEP", "FixedPoint", "FixedPointReport", "check_refine", "refined_inversion"]
