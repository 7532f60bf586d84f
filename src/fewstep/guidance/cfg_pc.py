"""Classifier-free guidance as a predictor-corrector (Bradley & Nakkiran 2024, "Classifier-Free Guidance is a
Predictor-Corrector", Sec. 4, Alg. 1-2).

CFG at scale ``gamma`` combines the two predictions, ``eps_gamma = eps_u + gamma (eps_c - eps_u)``, and the score it
implies, ``-eps_gamma / sigma_t = gamma grad log p_t(x | c) + (1 - gamma) grad log p_t(x)``, is the score of the
gamma-powered distribution

    p_t^gamma(x) proportional to p_t(x | c)^gamma p_t(x)^(1 - gamma)

(the power of the noisy marginals, not the noisy marginal of the powered data distribution). Splitting the reverse
SDE's drift into its probability-flow part and a Langevin part, a DDPM step with the score ``s_w`` is a DDIM step
with ``s_1`` plus a Langevin step with ``2 s_w - s_1 = s_(2w - 1)``: in the limit of small steps, CFG-DDPM at scale
``w`` is a DDIM predictor of the conditional distribution followed by a Langevin corrector on ``p_t^(2w - 1)``
(their Theorem: predictor scale 1, corrector scale ``2 w - 1``). Their predictor-corrector guidance (PCG) frees the
two scales: a predictor step guided at ``predictor_scale``, then ``n_corrector`` Langevin moves

    x <- x + e grad log p_t^gamma(x) + sqrt(2 e) z,     gamma = corrector_scale,

at the level the predictor reached.

Design: the solver stays unaware of guidance, the rule of solvers. ``pc_langevin``
(:mod:`fewstep.solvers.sde.pc`) runs the predictor and the corrector moves (``n_corrector``, and ``step_size`` for
the paper's fixed Langevin step) and asks for its corrector's evaluations at a
:class:`~fewstep.model.point.CorrectorPoint`, the node's point marked as a corrector request (another type, the
same values). :class:`CFGPredictorCorrector` acts on the predictions at a point (a
:class:`~fewstep.guidance.PredictionGuidance`): it answers a marked request with CFG at ``corrector_scale`` and any
other with CFG at ``predictor_scale``, by plain CFG's batched call and formula (:func:`~fewstep.guidance.cfg.guided`
of :func:`~fewstep.guidance.cfg.paired_outputs`), so a predictor request is evaluated exactly as
:class:`~fewstep.guidance.ClassifierFreeGuidance` evaluates it, and under a solver without corrector requests the
rule is plain CFG at ``predictor_scale``. As a rule on predictions it does not run under the time shift.

Accounting: every request, the predictor's or the corrector's, is one network call running both branches as one
batch (two branch evaluations). The corrector's requests are in the solver's plan (``pc_langevin`` spends
``steps + n_corrector (steps - 1)`` evaluations), so ``nfe=`` counts them and the run checks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..model.network import Network
from ..model.point import CorrectorPoint, Point
from ..model.stack import Evaluation, Prediction, convert
from .cfg import guided, paired_outputs
from .rule_checks import conditioning, finite_number


@dataclass(frozen=True)
class CFGPredictorCorrector:
    """CFG as a predictor-corrector (module docstring): predictor requests guided at ``predictor_scale``, corrector
    requests (``pc_langevin``'s Langevin moves, on ``p(x|c)^gamma p(x)^(1-gamma)`` with ``gamma = corrector_scale``)
    at ``corrector_scale``; ``uncond_kwargs`` the unconditional inputs (the keys of the model's conditioning,
    tensors batched with theirs). Use it with ``solver="pc_langevin"`` and its ``predictor`` (``"ddim"`` for the
    paper's PCG-DDIM), ``n_corrector`` and ``step_size``."""

    predictor_scale: float
    corrector_scale: float
    uncond_kwargs: Mapping[str, Any] | None

    def __post_init__(self) -> None:
        finite_number("predictor_scale", self.predictor_scale)
        finite_number("corrector_scale", self.corrector_scale)
        conditioning("uncond_kwargs", self.uncond_kwargs, "CFG as a predictor-corrector")

    @classmethod
    def matching_ddpm(cls, scale: float, uncond_kwargs: Mapping[str, Any] | None) -> CFGPredictorCorrector:
        """The scales of Bradley & Nakkiran's Theorem for CFG-DDPM at ``scale`` w: a conditional predictor (scale 1)
        and a corrector at ``2 w - 1``. With ``pc_langevin(predictor="ddim", n_corrector=1, step_size=1.0)`` the run
        approaches CFG at w with ``ddpm`` as the steps shrink."""
        return cls(1.0, 2.0 * finite_number("scale", scale) - 1.0, uncond_kwargs)

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        cond, uncond = network.kwargs, self.uncond_kwargs
        assert uncond is not None  # checked when built
        if not cond:
            raise ValueError(
                "model_kwargs: CFG as a predictor-corrector needs a conditional model, but model_kwargs is empty (the "
                "conditional and unconditional branches would be the same call); pass the conditioning as "
                "model_kwargs and its unconditional counterpart as uncond_kwargs"
            )
        unknown = sorted(set(uncond) - set(cond))
        if unknown:
            raise ValueError(
                f"uncond_kwargs: keys {unknown} are not in model_kwargs ({sorted(cond)}); give the unconditional "
                "value of each conditioning input the model is called with"
            )
        pair = paired_outputs(network, uncond)
        w_p, w_c = float(self.predictor_scale), float(self.corrector_scale)

        def evaluate(x: Tensor, p: Point) -> Prediction:
            scale = w_c if isinstance(p, CorrectorPoint) else w_p
            return convert(x, guided(*pair(x, p.model_time, p.t), scale), p, needs_eps)

        return evaluate
