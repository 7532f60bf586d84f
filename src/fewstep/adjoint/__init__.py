"""Gradients through a run with memory that does not grow with the network's activations per step: the discrete
adjoint of the solver's own steps (``sample(..., grad="adjoint")``) and the continuous adjoint of the
probability-flow ODE (``grad="adjoint_ode"`` or :class:`AdjointODE`, AdjointDPM); docs/inversion.md."""

from .differentiable import NotDifferentiable
from .options import GRAD_NAMES, AdjointODE, GradMode, check_grad
from .run import drive_adjoint

__all__ = ["GRAD_NAMES", "AdjointODE", "GradMode", "NotDifferentiable", "check_grad", "drive_adjoint"]
