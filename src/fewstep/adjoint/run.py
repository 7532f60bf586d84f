"""A run under an adjoint: the solver's generator driven so that autograd's backward pass is the adjoint's."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Literal

from torch import Tensor

from ..model import ModelStack
from ..nodes import NodeTable
from ..solvers.base import drive_counted
from .continuous import Request, run_continuous
from .differentiable import CheckedModel
from .options import AdjointODE


def drive_adjoint(
    mode: Literal["adjoint"] | AdjointODE,
    steps: Generator[Request, Any, Any],
    start: Tensor,
    nodes: NodeTable,
    stack: ModelStack,
    backward_stack: Callable[[], ModelStack],
) -> tuple[Tensor, int]:
    """Drive ``steps`` with ``stack`` (grad mode on); the result and the number of requests.

    ``"adjoint"``, the discrete adjoint: every network call runs under a non-reentrant
    :func:`torch.utils.checkpoint.checkpoint`, so the graph keeps the solver's arithmetic and each call's inputs but
    no activations, and the backward pass recomputes one network at a time for its vector-Jacobian product (as
    reverse-mode differentiation of the run, the gradient is plain autograd's up to rounding; stochastic solvers'
    drawn noise is part of the recorded arithmetic). :class:`AdjointODE`: the continuous adjoint
    (:func:`fewstep.adjoint.continuous.run_continuous`) with a second stack from ``backward_stack()``."""
    if isinstance(mode, AdjointODE):
        back = backward_stack()
        back.network.model = CheckedModel(back.network.model, "adjoint_ode", checkpoint=False)
        return run_continuous(mode, steps, start, nodes, stack, back)
    network = stack.network
    model = network.model
    network.model = CheckedModel(model, mode, checkpoint=True)
    try:
        return drive_counted(steps, stack.outer)
    finally:
        network.model = model
