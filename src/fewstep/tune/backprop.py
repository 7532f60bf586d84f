"""A solver run differentiable with respect to its node times, for LD3 (:mod:`fewstep.tune.ld3`).

A fewstep run turns its node times into Python-float coefficients before the loop (:mod:`fewstep.nodes`), so
``fewstep.sample(..., grad=True)`` differentiates through the states, the conditioning and the network but not
through the times. This module adds the times' part without changing the solvers: the run is driven with the
solver's own update rule at the times ``theta_0`` (autograd records the dependence on the network's answers), and
the dependence of the solver's arithmetic on the times *at fixed answers* is measured by central differences of
``2 (n - 1)`` replays of the same generator at ``theta_0 +- eps e_j``, fed the same answers (no network call). With
``S_k(theta, O)`` the state of request ``k`` as the solver computes it from the answers ``O`` and ``t_k(theta)`` its
time, the run used for the gradient is

    s_k = S_k(theta_0, O) + J_k (theta - theta_0),    J_k = dS_k / dtheta |_O   (central differences)
    t_k = t_k(theta_0) + T_k (theta - theta_0),       T_k = dt_k / dtheta
    o_k = A(t_k) [s_k, f(s_k, tau(t_k))]              (the network f and the prediction's affine map A, in torch)
    x_N = R(theta_0, O) + J_N (theta - theta_0),

whose value at ``theta = theta_0`` is the solver's own sample bit for bit, and whose derivative in ``theta`` is the
total derivative of the run (chain rule through every answer, the network's time input included), up to the
central differences' O(eps^2) error. A network whose output does not carry autograd's derivative in its time input
(one that converts the time to a Python number, a table, numpy) is found by one probe call on the first run; its
time derivative is then the forward difference ``(f(s_k, tau(t_k + delta)) - f(s_k, tau(t_k))) / delta`` (one more
network call per request, ``delta = sqrt(machine epsilon of the time input's dtype) max(t_k, 1e-3)``). Every deterministic fewstep solver whose requests do not change structure
under a small change of its times (all fixed-step ODE solvers) is covered; the network must be differentiable in
its state and time input.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..context import RunContext
from ..model import CallCount, Denoiser, Point
from ..nodes import NodeTable
from ..predictions import conversion
from ..solvers import Solver, get_solver

#: Relative size of the central-difference step of a node time.
FD_STEP = 1e-6


def check_backprop(denoiser: Denoiser, solver: Solver) -> str | None:
    """Why a run of ``solver`` on ``denoiser`` has no time gradient here (None: it has one)."""
    if solver.stochastic:
        return f"{solver.name!r} is stochastic"
    if denoiser.guidance is not None:
        return "a guidance rule is set"
    if denoiser.threshold is not None:
        return "thresholding is set"
    if callable(denoiser.time_input):
        return "time_input is a callable"
    return None


@dataclass
class TimeDifferentiableRun:
    """``run(theta, noise)``: the sample of ``solver`` (with ``options``) at the node times ``[t_max, *theta]`` and a
    step to sigma = 0 (module docstring), differentiable in ``theta`` (a float64 tensor of the ``n - 1`` free
    times) and in ``noise``; each run counts its network calls in ``calls``."""

    denoiser: Denoiser
    solver_name: str
    options: dict[str, Any]
    calls: CallCount

    #: whether the network's output carries autograd's derivative in its time input (None: not probed yet)
    time_differentiable: bool | None = None

    def __post_init__(self) -> None:
        self.solver = get_solver(self.solver_name, **self.options)
        reason = check_backprop(self.denoiser, self.solver)
        if reason is not None:
            raise ValueError(f"solver: no time gradient for this run ({reason}); use a derivative-free method")

    def _nodes(self, theta: np.ndarray, like: Tensor) -> NodeTable:
        t_max = float(self.denoiser.schedule.t_max)
        times = np.concatenate([[t_max], theta, [np.nan]])
        return NodeTable.build(self.denoiser, times, True, like.shape[0], like.device, like.dtype)

    def _time_input(self, t: Tensor, point: Point, batch: int) -> Tensor:
        """The network's time input at schedule time ``t`` (differentiable in ``t``), batch-shaped."""
        time = torch.as_tensor(self.denoiser.time_of(t), dtype=torch.float64)
        return time.to(device=point.model_time.device, dtype=point.model_time.dtype).expand(batch)

    def _probe(self, x: Tensor, point: Point, network: Any) -> bool:
        """Whether the network's output depends differentiably on its time input (one network call on two samples;
        module docstring)."""
        t = torch.tensor(point.t, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            out = network(x[:2].detach(), self._time_input(t, point, min(2, x.shape[0])), point.t)
        return bool(out.requires_grad)

    def _answer(self, x: Tensor, point: Point, t: Tensor, network: Any) -> tuple[Tensor, Tensor | None]:
        """``(x0_hat, eps_hat)`` at state ``x`` and time ``t`` (a 0-dim tensor carrying the time's gradient)."""
        sched = self.denoiser.schedule
        alpha, sigma, dalpha, dsigma = sched.alpha(t), sched.sigma(t), sched.dalpha(t), sched.dsigma(t)
        a = conversion(self.denoiser.prediction, alpha, sigma, dalpha, dsigma, check=False)  # type: ignore[arg-type]
        if self.time_differentiable is None:
            self.time_differentiable = self._probe(x, point, network)
        out = network(x, self._time_input(t, point, x.shape[0]), point.t)
        if not self.time_differentiable:  # the time derivative by a forward difference (module docstring)
            delta = math.sqrt(torch.finfo(point.model_time.dtype).eps) * max(abs(point.t), 1e-3)
            with torch.no_grad():
                ahead = torch.tensor(point.t + delta, dtype=torch.float64)
                slope = (
                    network(x.detach(), self._time_input(ahead, point, x.shape[0]), point.t) - out.detach()
                ) / delta
            out = out + (t - t.detach()).to(out.dtype) * slope
        x0 = a.x0_x * x + a.x0_out * out
        eps = a.eps_x * x + a.eps_out * out if self.solver.needs_eps else None
        return x0.to(x.dtype), (eps.to(x.dtype) if eps is not None else None)

    def run(self, theta: Tensor, noise: Tensor) -> Tensor:
        """The differentiable sample (module docstring)."""
        theta0 = theta.detach().to(torch.float64).cpu().numpy()
        n = theta0.size
        steps = np.maximum(np.abs(theta0), 1e-3) * FD_STEP
        base = noise.detach()
        main = self.solver.solve(noise, nodes := self._nodes(theta0, noise), RunContext(nodes))
        replays: list[Generator[Any, Any, Any]] = []
        for j in range(n):
            for sign in (1.0, -1.0):
                shifted = theta0.copy()
                shifted[j] += sign * steps[j]
                table = self._nodes(shifted, noise)
                replays.append(self.solver.solve(base, table, RunContext(table)))
        width = torch.from_numpy(2.0 * steps)
        d_theta = theta.to(torch.float64) - torch.from_numpy(theta0)
        stack = self.denoiser.stack(self.calls, self.solver.needs_eps)

        def slope(pairs: list[Any]) -> tuple[Tensor, ...]:
            """Per free time j, (value(+) - value(-)) / (2 eps_j)."""
            return tuple((pairs[2 * j] - pairs[2 * j + 1]) / width[j] for j in range(n))

        def linear(values: tuple[Tensor, ...]) -> Tensor:
            return sum((v * d_theta[j].to(v.dtype) for j, v in enumerate(values)), start=torch.zeros(()))  # type: ignore[return-value]

        requests, finals = 0, [torch.zeros(())] * len(replays)
        x, point = next(main)
        shadows = [next(r) for r in replays]
        while True:
            state = x + linear(slope([s[0] for s in shadows]))
            t_slope = slope([torch.tensor(s[1].t, dtype=torch.float64) for s in shadows])
            t = torch.tensor(point.t, dtype=torch.float64) + linear(t_slope)
            answer = self._answer(state, point, t, stack.network)
            requests += 1
            frozen = (answer[0].detach(), None if answer[1] is None else answer[1].detach())
            for i, r in enumerate(replays):  # the same answer to every replay, before the run moves on
                try:
                    shadows[i] = r.send(frozen)
                except StopIteration as finished:
                    finals[i] = finished.value
            try:
                x, point = main.send(answer)
            except StopIteration as done:
                result: Tensor = done.value
                break
        self.calls.requests += requests
        return result + linear(slope(finals))
