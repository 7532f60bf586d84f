"""ODE solvers. ``available()`` lists them; ``get_solver(name, **options)`` builds one."""

from . import ddim, dpm_solver, dpmpp, euler  # noqa: F401  (registers the solvers)
from .base import Solver, SolverInfo, available, get_solver, register
from .ddim import DDIM
from .dpm_solver import DPMSolver1, DPMSolver2, DPMSolver3
from .dpmpp import DPMSolverPP2M, DPMSolverPP2S, DPMSolverPP3M
from .euler import Euler, Heun
from .grid import Grid

__all__ = [
    "Solver",
    "SolverInfo",
    "Grid",
    "available",
    "get_solver",
    "register",
    "Euler",
    "Heun",
    "DDIM",
    "DPMSolver1",
    "DPMSolver2",
    "DPMSolver3",
    "DPMSolverPP2S",
    "DPMSolverPP2M",
    "DPMSolverPP3M",
]
