"""``CallCount``: the model-call accounting of one run, defined once for every layer of the model-call stack.

- ``network``: forward calls of the network. A batched classifier-free-guidance call that runs the conditional
  and the unconditional branch in one batch is one network call.
- ``branches``: branch evaluations inside those calls (that guided call is two).
- ``substituted``: evaluations answered without calling the network (a cached or extrapolated output), counted
  apart from the network calls.
- ``backward``: backward passes through the network (a gradient-based guidance or posterior step); each costs
  about a forward call and counts as one.
- ``requests``: the evaluations the solver asked for, each answered by the stack (by the network, or substituted).

The NFE of a run is ``network + backward``. A solver plans its ``requests`` before the run (:func:`fewstep.sample`'s
``nfe=``) and the run checks them after it; with the plain stack every request is one network call, so the NFE is
exactly the ``nfe`` asked for, while a layer that substitutes outputs spends fewer network calls and a gradient step
more.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CallCount:
    """Counters of one run (module docstring); pass one as ``calls=`` to :func:`fewstep.sample` to read them."""

    network: int = 0
    branches: int = 0
    substituted: int = 0
    backward: int = 0
    requests: int = 0

    @property
    def nfe(self) -> int:
        """Network evaluations: forward calls plus backward passes."""
        return self.network + self.backward

    def add(self, other: CallCount) -> None:
        """Add another run's counts to these."""
        self.network += other.network
        self.branches += other.branches
        self.substituted += other.substituted
        self.backward += other.backward
        self.requests += other.requests
