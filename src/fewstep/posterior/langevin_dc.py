"""Langevin data consistency: annealed Langevin dynamics on ``log p_t(x) + log p(y | x_t)`` at every noise level,
backpropagation-free, as in LanPaint (Zheng et al. 2025, "LanPaint: Training-Free Diffusion Inpainting with
Asymptotically Exact and Fast Conditional Sampling") and the plug-and-play unadjusted Langevin algorithm (PnP-ULA:
Laumont et al. 2022, "Bayesian imaging using Plug & Play priors: when Langevin meets Tweedie"), which combine the
denoiser's score with the measurement's likelihood score and no derivative of the network.

The move at node ``j`` (``solver="pc_langevin"``'s fixed-step corrector, Bradley & Nakkiran 2024):

    x <- x + e_j (score_t(x) + grad_x log p(y | x_t)) + sqrt(2 e_j) z,   score_t = -eps_hat / sigma_t,

and each predictor step integrates with the same guided score. The likelihood score is PiGDM's with the Gaussian
Jacobian of data of scale ``data_std`` (:class:`fewstep.posterior.PiGDM` with ``through_network=False``):

    grad_x log p(y | x_t) ~ (alpha r_t^2 / sigma_t^2) A^T (r_t^2 A A^T + s^2 I)^{-1} (y - A x0_hat),

which tends, as the noise level goes to 0, to PnP-ULA's data-fidelity gradient ``A^T (y - A x) / s^2``, and at
every level keeps the spread ``r_t^2`` of ``x0 | x_t`` so that noiseless measurements (inpainting masks) are served
as well. For Gaussian data of scale ``data_std`` the guided score is exactly that of ``p_t(x | y)``, so the chain's
stationary law at each level is the posterior's (up to the Langevin step's discretisation bias, ``O(e_j)``); for
other data it is an approximation (the tests and docs/posterior.md report its bias on a mixture).

LanPaint's own inner dynamics (its "bidirectional guided" score and fast Langevin) are not reproduced; this is the
plain annealed Langevin variant of the same target, built from the library's predictor–corrector solver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..guidance.loss_steps import check_count
from ..guidance.rule_checks import finite_number
from ..solvers.base import Solver, get_solver
from .measurement import Measurement
from .pigdm import PiGDM


@dataclass(frozen=True)
class LangevinDC:
    """Langevin data consistency on a linear ``measurement``: ``n_corrector`` Langevin moves of size ``step_size``
    (``pc_langevin``'s ``c``) after each ``predictor`` step, with the likelihood score of data of scale
    ``data_std`` (module docstring). Run it as
    ``sample(model, noise, schedule, solver=dc.solver, guidance=dc.guidance, nfe=...)``."""

    measurement: Measurement
    step_size: float = 1.0
    n_corrector: int = 1
    predictor: str = "ddim"
    data_std: float = 1.0
    solver: Solver = field(init=False, repr=False)
    guidance: PiGDM = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_count("n_corrector", self.n_corrector, 1)
        if finite_number("step_size", self.step_size) <= 0:
            raise ValueError(
                f"step_size: must be > 0 (1.0, the default: the DDPM-matched Langevin step), got {self.step_size}"
            )
        options: dict[str, Any] = {"n_corrector": self.n_corrector, "step_size": self.step_size}
        object.__setattr__(self, "solver", get_solver("pc_langevin", predictor=self.predictor, **options))
        rule = PiGDM(self.measurement, data_std=self.data_std, through_network=False)
        object.__setattr__(self, "guidance", rule)
