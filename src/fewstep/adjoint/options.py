"""The ``grad=`` option of :func:`fewstep.sample`: plain autograd, the discrete adjoint or the continuous adjoint.

- ``False``: no graph (the default); ``True``: plain autograd through the run, whose memory holds every network
  evaluation's activations (O(steps x activations)).
- ``"adjoint"``: the discrete adjoint of the solver's own steps (:mod:`fewstep.adjoint.discrete`): the gradient of
  the run itself, equal to plain autograd's up to rounding, with each network evaluation recomputed in the backward
  pass (memory O(steps x state) plus one network's activations).
- ``"adjoint_ode"`` or :class:`AdjointODE`: the continuous adjoint of the probability-flow ODE
  (:mod:`fewstep.adjoint.continuous`, AdjointDPM): memory independent of the number of steps; the gradient of the
  exact ODE flow to the order of its integration, which approaches the run's gradient as the NFE grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..options import suggestion
from ..solvers.base import Solver

#: The names ``grad=`` accepts besides ``True``/``False``.
GRAD_NAMES: tuple[str, ...] = ("adjoint", "adjoint_ode")


@dataclass(frozen=True)
class AdjointODE:
    """The continuous adjoint (Pan et al. 2023, "AdjointDPM: Adjoint Sensitivity Method for Gradient
    Backpropagation of Diffusion Probabilistic Models") integrated with an explicit Runge-Kutta method of ``order``
    1 (Euler, the adjoint of DDIM) or 2 (Heun) on the run's own nodes, backwards from the sample to the noise.

    In the ODE frame ``y = x / c``, ``tau`` (:meth:`fewstep.nodes.NodeTable.ode_frame`: ``tau = sigma / alpha``,
    ``c = alpha``, the exponential-integrator variable in which ``dy/dtau = eps_hat`` is non-stiff; ``tau = t`` for
    flows) the augmented system ``dy/dtau = v(y)``, ``da/dtau = -(dv/dy)^T a``, ``dg/dtau = -(dv/dtheta)^T a`` is
    solved from ``tau_end`` to ``tau_start`` with ``a(tau_end) = c dL/dx_end`` and ``g(tau_end) = 0``; then
    ``dL/dx_start = a(tau_start) / c_start`` and ``dL/dtheta = g(tau_start)`` (theta: the conditioning tensors and
    the leaves the model depends on). Each Runge-Kutta stage is one vector-Jacobian product of the network: the
    backward pass costs ``order`` VJPs per step, plus one for the denoising step to a clean end and one forward call
    to find the leaves."""

    order: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.order, bool) or self.order not in (1, 2):
            raise ValueError(f"AdjointODE: order must be 1 (Euler) or 2 (Heun), got {self.order!r}")


#: A checked ``grad=`` value.
GradMode = bool | Literal["adjoint"] | AdjointODE


def check_grad(grad: object, solver: Solver, checkpoint: object = None, resume: object = None) -> GradMode:
    """``grad`` as a :data:`GradMode`; ValueError/TypeError naming the option before any model call."""
    if isinstance(grad, bool):
        return grad
    if isinstance(grad, AdjointODE):
        mode: GradMode = grad
    elif isinstance(grad, str) and grad in GRAD_NAMES:
        mode = AdjointODE() if grad == "adjoint_ode" else "adjoint"
    else:
        kind = TypeError if not isinstance(grad, str) else ValueError
        raise kind(
            "grad: choose False (no graph), True (plain autograd), 'adjoint' (the discrete adjoint of the solver's "
            "steps) or 'adjoint_ode' (the continuous adjoint, or fewstep.adjoint.AdjointODE(order=1 or 2)), got "
            f"{grad!r}{suggestion(grad, GRAD_NAMES)}"
        )
    shown = "adjoint_ode" if isinstance(mode, AdjointODE) else mode
    for name, value in (("checkpoint", checkpoint), ("resume", resume)):
        if value is not None:
            raise ValueError(
                f"{name}: grad={shown!r} differentiates one whole run and cannot stop or resume it part-way; drop "
                f"{name}= or use grad=True"
            )
    if isinstance(mode, AdjointODE) and solver.stochastic:
        raise ValueError(
            f"grad='adjoint_ode': the continuous adjoint is that of the probability-flow ODE and solver "
            f"{solver.name!r} is stochastic; use grad='adjoint' (the discrete adjoint differentiates stochastic "
            "runs through their drawn noise) or a deterministic solver"
        )
    return mode
