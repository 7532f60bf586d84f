"""The solvers: ``available()`` lists them, ``get_solver(name, **options)`` builds one.

Layout: :mod:`.base` (the :class:`Solver` interface and the registry), the shared machinery (:mod:`.phi`,
:mod:`.multistep`, :mod:`.singlestep`, :mod:`.frame`, :mod:`.stages`, :mod:`.unic`, :mod:`.momentum`,
:mod:`.stochastic`), and the solvers themselves in :mod:`.ode` (probability-flow ODE) and :mod:`.sde` (stochastic).
Every module of those two folders is imported here, so a new solver is one new file there (with ``@register``).
"""

import importlib
import pkgutil

from . import ode, sde
from .base import Solver, SolverInfo, available, get_solver, register


def _import_all() -> None:
    for package in (ode, sde):
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")


_import_all()

from .ode.ddim import DDIM  # noqa: E402
from .ode.deis import DEIS1, DEIS2, DEIS3, DEISRho2, DEISRho3  # noqa: E402
from .ode.dpm_solver import DPMSolver1, DPMSolver2, DPMSolver3  # noqa: E402
from .ode.dpm_solver_v3 import DPMSolverV3  # noqa: E402
from .ode.dpmpp import DPMSolverPP2M, DPMSolverPP2S, DPMSolverPP3M  # noqa: E402
from .ode.ems import EmpiricalModelStatistics  # noqa: E402
from .ode.euler import Euler, Heun  # noqa: E402
from .ode.evodiff import EVODiff  # noqa: E402
from .ode.lms import LMS  # noqa: E402
from .ode.pndm import IPNDM, IPNDMVariable  # noqa: E402
from .ode.res import GradientEstimation, ResMultistep  # noqa: E402
from .ode.unipc import UniPCBH1, UniPCBH2  # noqa: E402
from .sde.ancestral import DDPM, EulerAncestral  # noqa: E402
from .sde.edm_sde import EDMStochastic  # noqa: E402
from .sde.er_sde import ERSDE1, ERSDE2, ERSDE3  # noqa: E402
from .sde.pc import PredictorCorrector  # noqa: E402
from .sde.sa_solver import SASolver  # noqa: E402
from .sde.sde_dpm import DPMSolver1SDE, DPMSolverPP2MSDE, DPMSolverPP3MSDE  # noqa: E402
from .sde.sde_dpm_2 import DPMSolver2SDE  # noqa: E402
from .sde.sde_family import EulerMaruyama, ReverseSDE  # noqa: E402
from .sde.seeds import SEEDS1, SEEDS2, SEEDS3  # noqa: E402

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
