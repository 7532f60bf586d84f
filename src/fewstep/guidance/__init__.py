"""Guidance rules: layers of the model-call stack that act on the network's raw output.

A rule has one method, ``wrap(network) -> output``: given the run's :class:`~fewstep.model.network.Network` it
returns the callable ``output(x, time, t)`` that the conversion to ``(x0, eps)`` calls instead of the network
(and which may call the network in a batch of several branches, counted as one call and several branch
evaluations). A new rule is one module here; pass it as ``sample(..., guidance=rule)`` or ``Denoiser(guidance=)``.
"""

from .cfg import ClassifierFreeGuidance, Guidance

__all__ = ["ClassifierFreeGuidance", "Guidance"]
