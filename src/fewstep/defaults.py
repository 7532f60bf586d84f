"""The solver and spacing ``fewstep.sample`` uses when none is given: measured, per schedule family and NFE.

``benchmarks/defaults.py`` runs every ODE solver on every spacing at NFE 5, 10 and 20 on every built-in exact target
(and the learned one) under every built-in schedule, and keeps, per family of schedules and NFE, the configuration
with the smallest geometric-mean RMSE ratio to the best configuration of each case (:data:`MEASURED`). It rewrites the
table below; docs/benchmarks.md shows the ratios. A run that names its solver but no spacing keeps logSNR steps
(``FALLBACK``), as before the table; one that names a spacing but no solver gets the table's solver. A run's NFE picks the nearest measured point on a log scale.

A guided run (any guidance rule, e.g. ``guidance_scale=7.5``) on a ``discrete_vp`` schedule at NFE up to 14 takes
:data:`GUIDED` instead: ``benchmarks/guidance.py`` measures every ODE solver on every spacing under classifier-free
guidance at scale 7.5 on the class-labelled 2-D and 64-D mixtures (exact guided solutions) at NFE 5, 8 and 10, and
the unguided choices break there (``ipndm`` on polyexponential or Align-Your-Steps SDXL times: 5 to 20 times the
best error). :data:`GUIDED` keeps, per NFE, the configuration with the smallest geometric-mean ratio to the best of
each target, chosen on one batch of noise and checked on another (docs/guidance.md).

Families (:func:`family`): ``discrete_vp`` (DDPM / Stable Diffusion tables), ``vp`` (continuous VP, cosine),
``edm`` (sigma schedules without a signal scale: EDM, VE), ``flow`` (flows and interpolants that start from pure
noise).
"""

from __future__ import annotations

import math

from .schedules import EDM, VE, DiscreteVP, Flow, NoiseSchedule

__all__ = ["FALLBACK", "GUIDED", "MEASURED", "NFE_POINTS", "default_solver_and_spacing", "family"]

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

#: Guided runs on ``discrete_vp`` schedules, per NFE (module docstring): measured by ``benchmarks/guidance.py``
#: (``python benchmarks/guidance.py`` prints the choice last), the geometric-mean ratio to the best of each
#: target on the checking batch in the comment.
GUIDED: dict[int, tuple[str, str]] = {
    5: ("deis_rho_3", "beta"),  # 1.18
    8: ("ipndm_v", "ays_sd15"),  # 1.35
    10: ("ipndm_v", "ays_sd15"),  # 1.28
}
#: The largest NFE a guided run takes :data:`GUIDED` at (nearest measured point 10 on a log scale, up to 20).
GUIDED_MAX_NFE = 14


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


def default_solver_and_spacing(schedule: NoiseSchedule, nfe: int, guided: bool = False) -> tuple[str, str]:
    """The solver and spacing for a run of ``nfe`` evaluations on ``schedule`` that names neither (``guided``: the
    run has a guidance rule)."""
    if guided and family(schedule) == "discrete_vp" and nfe <= GUIDED_MAX_NFE:
        return GUIDED[min(GUIDED, key=lambda p: abs(math.log(p) - math.log(max(nfe, 1))))]
    return MEASURED.get((family(schedule), nearest_point(nfe)), FALLBACK)
