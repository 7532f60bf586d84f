"""The solver and spacing ``fewstep.sample`` uses when none is given: measured, per schedule family and NFE.

``benchmarks/defaults.py`` runs every ODE solver on every spacing at NFE 5, 10 and 20 on every built-in exact target
(and the learned one) under every built-in schedule, and keeps, per family of schedules and NFE, the configuration
with the smallest geometric-mean RMSE ratio to the best configuration of each case (:data:`MEASURED`). It rewrites the
table below; docs/benchmarks.md shows the ratios. A run that names its solver but no spacing keeps logSNR steps
(``FALLBACK``), as before the table; one that names a spacing but no solver gets the table's solver. A run's NFE picks the nearest measured point on a log scale.

Families (:func:`family`): ``discrete_vp`` (DDPM / Stable Diffusion tables), ``vp`` (continuous VP, cosine),
``edm`` (sigma schedules without a signal scale: EDM, VE), ``flow`` (flows and interpolants that start from pure
noise).
"""

from __future__ import annotations

import math

from .schedules import EDM, VE, DiscreteVP, Flow, NoiseSchedule

__all__ = ["FALLBACK", "MEASURED", "NFE_POINTS", "default_solver_and_spacing", "family"]

#: The NFE values the tables are measured at.
NFE_POINTS = (5, 10, 20)
#: What a schedule of no measured family gets.
FALLBACK = ("dpmpp_3m", "logsnr")

# --- measured by benchmarks/defaults.py: start ---
MEASURED: dict[tuple[str, int], tuple[str, str]] = {
    ("discrete_vp", 5): ("ipndm", "polyexponential"),  # mean ratio to the best: 1.825
    ("discrete_vp", 10): ("ipndm", "ays_sdxl"),  # mean ratio to the best: 1.716
    ("discrete_vp", 20): ("ipndm", "time_quadratic"),  # mean ratio to the best: 2.071
    ("edm", 5): ("gradient_estimation", "ays_svd"),  # mean ratio to the best: 1.713
    ("edm", 10): ("ipndm", "ays_svd"),  # mean ratio to the best: 1.237
    ("edm", 20): ("ipndm", "ays_svd"),  # mean ratio to the best: 1.822
    ("flow", 5): ("dpm_solver_v3", "sgm_uniform"),  # mean ratio to the best: 1.392
    ("flow", 10): ("ipndm", "beta"),  # mean ratio to the best: 1.412
    ("flow", 20): ("ipndm_v", "beta"),  # mean ratio to the best: 1.452
    ("vp", 5): ("dpm_solver_v3", "sgm_uniform"),  # mean ratio to the best: 1.622
    ("vp", 10): ("ipndm", "ays_svd"),  # mean ratio to the best: 1.620
    ("vp", 20): ("ipndm", "beta"),  # mean ratio to the best: 2.423
}
# --- measured by benchmarks/defaults.py: end ---


def family(schedule: NoiseSchedule) -> str:
    """The family whose measurements serve ``schedule`` (module docstring)."""
    if isinstance(schedule, DiscreteVP):
        return "discrete_vp"
    if isinstance(schedule, (EDM, VE)):
        return "edm"
    if isinstance(schedule, Flow) or float(schedule.alpha(schedule.t_max)) == 0.0:
        return "flow"
    return "vp"


def nearest_point(nfe: int) -> int:
    """The measured NFE nearest to ``nfe`` on a log scale."""
    return min(NFE_POINTS, key=lambda p: abs(math.log(p) - math.log(max(nfe, 1))))


def default_solver_and_spacing(schedule: NoiseSchedule, nfe: int) -> tuple[str, str]:
    """The solver and spacing for a run of ``nfe`` evaluations on ``schedule`` that names neither."""
    return MEASURED.get((family(schedule), nearest_point(nfe)), FALLBACK)
