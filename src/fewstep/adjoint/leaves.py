"""The tensors a model's output depends on through autograd: what a continuous adjoint returns gradients for."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def grad_leaves(output: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """The leaf tensors requiring grad that ``output``'s graph reaches without passing through ``inputs``.

    The walk follows ``grad_fn.next_functions`` and stops at the inputs (leaves, or the nodes that made non-leaf
    inputs, such as an encoder's output given as conditioning); what it collects are the model's parameters and the
    leaves of tensors it closes over."""
    stop_leaves = {id(t) for t in inputs if t.grad_fn is None}
    stop_nodes = {id(t.grad_fn) for t in inputs if t.grad_fn is not None}
    found: list[Tensor] = []
    seen: set[int] = set()
    pending = [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen or id(node) in stop_nodes:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf
        if isinstance(variable, Tensor):
            if id(variable) not in stop_leaves:
                found.append(variable)
            continue
        pending.extend(fn for fn, _ in node.next_functions)
    return found
