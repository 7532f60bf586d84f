"""ODE solvers. ``available()`` lists them; ``get_solver(name, **options)`` builds one."""

from . import ddim, dpm_solver, dpmpp, euler  # noqa: F401  (registers the solvers)
from .ancestral import DDPM, EulerAncestral  # registers euler_ancestral, ddpm (stochastic)
from .base import Solver, SolverInfo, available, get_solver, register
from .ddim import DDIM
from .deis import DEIS1, DEIS2, DEIS3, DEISRho2, DEISRho3  # registers deis_1/2/3, deis_rho_2/3
from .dpm_solver import DPMSolver1, DPMSolver2, DPMSolver3
from .dpmpp import DPMSolverPP2M, DPMSolverPP2S, DPMSolverPP3M
from .edm_sde import EDMStochastic  # registers edm_sde (stochastic)
from .euler import Euler, Heun
from .grid import Grid
from .lms import LMS  # registers lms
from .pndm import IPNDM, IPNDMVariable  # registers ipndm, ipndm_v
from .res import GradientEstimation, ResMultistep  # registers gradient_estimation, res_multistep
from .sde_dpm import DPMSolver1SDE, DPMSolverPP2MSDE, DPMSolverPP3MSDE  # registers dpm_solver_1_sde, dpmpp_2m/3m_sde
from .unipc import UniPCBH1, UniPCBH2  # registers unipc_bh1, unipc_bh2

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
    "DEIS1",
    "DEIS2",
    "DEIS3",
    "DEISRho2",
    "DEISRho3",
    "IPNDM",
    "IPNDMVariable",
    "LMS",
    "ResMultistep",
    "GradientEstimation",
    "UniPCBH1",
    "UniPCBH2",
    "EulerAncestral",
    "DDPM",
    "EDMStochastic",
    "DPMSolver1SDE",
    "DPMSolverPP2MSDE",
    "DPMSolverPP3MSDE",
]
