"""ODE solvers. ``available()`` lists them; ``get_solver(name, **options)`` builds one."""

from . import ddim, dpm_solver, dpmpp, euler  # noqa: F401  (registers the solvers)
from .ancestral import DDPM, EulerAncestral  # registers euler_ancestral, ddpm (stochastic)
from .base import Solver, SolverInfo, available, get_solver, register
from .ddim import DDIM
from .deis import DEIS1, DEIS2, DEIS3, DEISRho2, DEISRho3  # registers deis_1/2/3, deis_rho_2/3
from .dpm_solver import DPMSolver1, DPMSolver2, DPMSolver3
from .dpm_solver_v3 import DPMSolverV3  # registers dpm_solver_v3
from .dpmpp import DPMSolverPP2M, DPMSolverPP2S, DPMSolverPP3M
from .edm_sde import EDMStochastic  # registers edm_sde (stochastic)
from .ems import EmpiricalModelStatistics, compute_ems
from .er_sde import ERSDE1, ERSDE2, ERSDE3  # registers er_sde_1/2/3 (stochastic)
from .euler import Euler, Heun
from .evodiff import EVODiff  # registers evodiff
from .lms import LMS  # registers lms
from .pc import PredictorCorrector  # registers pc_langevin (stochastic)
from .pndm import IPNDM, IPNDMVariable  # registers ipndm, ipndm_v
from .res import GradientEstimation, ResMultistep  # registers gradient_estimation, res_multistep
from .sa_solver import SASolver  # registers sa_solver (stochastic)
from .sde_dpm import DPMSolver1SDE, DPMSolverPP2MSDE, DPMSolverPP3MSDE  # registers dpm_solver_1_sde, dpmpp_2m/3m_sde
from .sde_dpm_2 import DPMSolver2SDE  # registers dpm_solver_2_sde (stochastic)
from .sde_family import EulerMaruyama, ReverseSDE  # registers euler_maruyama (stochastic)
from .seeds import SEEDS1, SEEDS2, SEEDS3  # registers seeds_1/2/3 (stochastic)
from .unipc import UniPCBH1, UniPCBH2  # registers unipc_bh1, unipc_bh2

__all__ = [
    "Solver",
    "SolverInfo",
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
    "DPMSolverV3",
    "EmpiricalModelStatistics",
    "compute_ems",
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
    "EVODiff",
    "DPMSolver1SDE",
    "DPMSolverPP2MSDE",
    "DPMSolverPP3MSDE",
    "ReverseSDE",
    "EulerMaruyama",
    "ERSDE1",
    "ERSDE2",
    "ERSDE3",
    "PredictorCorrector",
    "DPMSolver2SDE",
    "SASolver",
    "SEEDS1",
    "SEEDS2",
    "SEEDS3",
]
