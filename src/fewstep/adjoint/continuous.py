"""The continuous adjoint of the probability-flow ODE (Pan et al. 2023, "AdjointDPM: Adjoint Sensitivity Method for
Gradient Backpropagation of Diffusion Probabilistic Models"), with memory independent of the number of steps.

The forward pass is the solver's own run without a graph; it keeps only the last request. The backward pass
solves, in the ODE frame ``y = x / c``, ``tau`` of :meth:`fewstep.nodes.NodeTable.ode_frame` (``tau = sigma /
alpha``, ``c = alpha``: the exponential-integrator variable of DDIM/DPM-Solver in which ``dy/dtau = eps_hat`` is
non-stiff; ``tau = t``, ``c = 1`` for flows), the augmented system backwards from the sample to the noise::

    dy/dtau = v(y, tau),   da/dtau = -(dv/dy)^T a,   dg/dtau = -(dv/dtheta)^T a,

from ``y(tau_end)``, ``a(tau_end) = c_end dL/dx_end``, ``g(tau_end) = 0`` to ``tau_start``, reconstructing ``y``
on the way (no state is stored), with Euler or Heun on the run's nodes (:class:`~fewstep.adjoint.AdjointODE`).
Then ``dL/dx_start = a(tau_start) / c_start`` and ``dL/dtheta = g(tau_start)``. At a clean end (``final="zero"``)
the last step is the denoising step ``x_0 = x0_hat(x_{t_min})`` at the last request, whose vector-Jacobian product
starts ``a``; ``v`` itself is not defined at ``sigma = 0``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model import ModelStack, Point
from ..nodes import NodeTable
from .leaves import grad_leaves
from .options import AdjointODE

Request = tuple[Tensor, Point]


class ContinuousAdjoint:
    """The backward pass of one run: ``nodes``, the model-call stack ``stack`` (asked for ``eps_hat``), the
    conditioning tensors ``cond`` and the ``leaves`` the model depends on (gradients are returned for both)."""

    def __init__(
        self, mode: AdjointODE, nodes: NodeTable, stack: ModelStack, cond: Sequence[Tensor], leaves: Sequence[Tensor]
    ):
        tau, c = nodes.ode_frame()
        model_tau = tau[:-1] if nodes.clean_end else tau
        if not np.all(np.isfinite(model_tau)):
            raise ValueError(
                "grad='adjoint_ode': the run starts where alpha = 0 (an infinite noise level in the ODE frame); "
                "use grad='adjoint' or start below t_max"
            )
        self.order, self.nodes, self.stack = mode.order, nodes, stack
        self.tau, self.c = tau.tolist(), c.tolist()
        self.inputs = [*cond, *leaves]
        self.last: Request | None = None
        self.requests = 0

    def velocity(self, x: Tensor, p: Point) -> Tensor:
        """``dy/dtau = a x0_hat + b eps_hat`` at state ``x`` and point ``p``."""
        x0, eps = self.stack.outer(x, p)
        a, b = self.nodes.ode_velocity(p)
        assert eps is not None  # the stack is built with needs_eps
        if a == 0.0:
            return eps if b == 1.0 else eps * b
        return x0 * a + eps * b

    def vjp(self, x: Tensor, p: Point, weight: Tensor, clean: bool) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        """The velocity (``clean``: ``x0_hat``) at ``(x, p)`` and its vector-Jacobian product with ``weight`` for the
        state and for :attr:`inputs`."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            value = self.stack.outer(xg, p)[0] if clean else self.velocity(xg, p)
            grads = torch.autograd.grad(value, [xg, *self.inputs], weight, retain_graph=True, allow_unused=True)
        gx = grads[0] if grads[0] is not None else torch.zeros_like(x)
        return value.detach(), gx, list(grads[1:])

    def stage(self, y: Tensor, a: Tensor, i: int) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        """The augmented system's derivative at node ``i``: ``(dy, da, dg)`` per unit ``tau``."""
        c = self.c[i]
        v, gx, gth = self.vjp(y * c, self.nodes.node(i), a, False)
        return v, gx * -c, [None if g is None else -g for g in gth]

    def backward(self, x_end: Tensor, grad_end: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        """``(dL/dx_start, dL/dinputs)`` from ``dL/dx_end``."""
        theta: list[Tensor | None] = [None] * len(self.inputs)

        def accumulate(terms: list[Tensor | None], weight: float) -> None:
            for j, g in enumerate(terms):
                if g is not None:
                    cur = theta[j]
                    theta[j] = g * weight if cur is None else cur.add_(g, alpha=weight)

        last = len(self.tau) - 1
        if self.nodes.clean_end:
            assert self.last is not None
            x_rec, p_rec = self.last
            _, gx, gth = self.vjp(x_rec, p_rec, grad_end, True)
            accumulate(gth, 1.0)
            i = last - 1
            y, a = x_rec / self.c[i], gx * self.c[i]
        else:
            i = last
            y, a = x_end / self.c[i], grad_end * self.c[i]
        for k in range(i - 1, -1, -1):  # from node k + 1 back to node k
            h = self.tau[k] - self.tau[k + 1]
            v1, da1, dg1 = self.stage(y, a, k + 1)
            if self.order == 1:
                y, a = y + v1 * h, a + da1 * h
                accumulate(dg1, h)
                continue
            v2, da2, dg2 = self.stage(y + v1 * h, a + da1 * h, k)
            y, a = y + (v1 + v2) * (h / 2), a + (da1 + da2) * (h / 2)
            accumulate(dg1, h / 2)
            accumulate(dg2, h / 2)
        return a / self.c[0], theta


class _ODEAdjointFunction(torch.autograd.Function):
    """The run as one autograd node: forward drives the solver without a graph, backward is
    :meth:`ContinuousAdjoint.backward`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        adjoint: ContinuousAdjoint,
        steps: Generator[Request, Any, Any],
        stack: ModelStack,
        start: Tensor,
        *inputs: Tensor,
    ) -> Tensor:
        n, last = 0, None
        try:
            request = next(steps)
            while True:
                n, last = n + 1, request
                request = steps.send(stack.outer(*request))
        except StopIteration as done:
            x: Tensor = done.value
        adjoint.requests, adjoint.last = n, last
        nodes = adjoint.nodes
        if nodes.clean_end and (last is None or last[1].t != float(nodes.t[-2])):
            raise ValueError(
                "grad='adjoint_ode': with final='zero' the solver's last evaluation must be at the last model node "
                f"t = {float(nodes.t[-2]):.6g} (the denoising step to the clean end); use final='t_min' or "
                "grad='adjoint'"
            )
        ctx.adjoint = adjoint
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_end: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (x_end,) = ctx.saved_tensors
        g_start, theta = ctx.adjoint.backward(x_end, grad_end)
        return (None, None, None, g_start, *theta)


def run_continuous(
    mode: AdjointODE,
    steps: Generator[Request, Any, Any],
    start: Tensor,
    nodes: NodeTable,
    stack: ModelStack,
    backward_stack: ModelStack,
) -> tuple[Tensor, int]:
    """Drive ``steps`` (the solver's generator) with ``stack`` under the continuous adjoint; the result and the
    number of requests.

    One forward call of ``backward_stack`` at the first node finds the leaves the model depends on
    (:func:`~fewstep.adjoint.leaves.grad_leaves`: its parameters and the tensors it closes over) besides the
    conditioning tensors of ``model_kwargs`` that require grad, so that ``.backward()`` and ``torch.autograd.grad``
    both reach them."""
    kwargs = backward_stack.network.kwargs
    cond = [v for v in kwargs.values() if isinstance(v, Tensor) and v.requires_grad]
    adjoint = ContinuousAdjoint(mode, nodes, backward_stack, cond, [])
    with torch.enable_grad():
        probe = start.detach().requires_grad_(True)
        leaves = grad_leaves(adjoint.velocity(probe, nodes.node(0)), [probe, *cond])
    adjoint.inputs = [*cond, *leaves]
    x = _ODEAdjointFunction.apply(adjoint, steps, stack, start, *adjoint.inputs)
    return x, adjoint.requests
