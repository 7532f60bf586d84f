"""Predictor–corrector sampling (Song et al. 2021, "Score-based generative modeling through SDEs", Alg. 1, 4, 5).

Each step runs one step of a predictor (any registered one-evaluation solver: ``euler_maruyama``, Song et al.'s
Euler–Maruyama predictor, by default; ``ddpm``, the reverse-diffusion predictor; ``dpmpp_2m_sde``; or an ODE
solver) from node i to node i + 1, then ``n_corrector`` Langevin MCMC steps at node i + 1 (Alg. 4/5):

    g = score(x, t_{i+1}) = -eps_hat/sigma,   z ~ N(0, I),
    e = 2 a_{i+1} (snr ||z|| / ||g||)^2,      x <- x + e g + sqrt(2 e) z,

with ``a_{i+1} = (alpha_i/alpha_{i+1})^2`` (DDPM's per-step ``1 - beta``, Song et al.'s ``alpha_i`` of the VP SDE;
1 for VE/EDM, whose alpha is constant). ``norm="batch"`` (default, as Song et al.'s code) takes ``||z||`` and
``||g||`` as the batch means of the per-sample norms, so a sample depends on the rest of its batch;
``norm="sample"`` uses each sample's own norms (Alg. 5 read per sample: a sample depends on its seed only), which
in low dimension takes huge steps where a sample's score is near 0 (on the 2-D mixtures the samples do not improve
with more steps). No corrector follows the last step (at sigma = 0 the score is undefined; at ``t_min`` the state the
callback and the caller see is the predictor's), so a run spends ``steps + n_corrector * (steps - 1)``
evaluations.

The corrector moves the state the predictor continues from: the state the predictor asks to have evaluated at
node i + 1 is overwritten in place with the corrected state before that evaluation (hence predictors spending one
evaluation per step, whose requests are their states; a callback that keeps the tensor of step i sees it
corrected). Noise: with a ``noise_sampler``, step i's interval of noise levels ``[l_{i+1}, l_i]`` is split into
``n_corrector + 1`` equal parts; the corrector draws on the first ``n_corrector`` (from ``l_i`` down), the
predictor on the last, so every draw is a normalised increment of the path over its own interval. The corrector's
step size does not shrink with the step size, so PC sampling does not converge to one SDE solution as the steps
grow (it adds ``n_corrector`` Langevin moves at every level).

A fixed step size instead of the snr rule (``step_size=c``, Bradley & Nakkiran 2024, "Classifier-Free Guidance is a
Predictor-Corrector", Alg. 1-2): at node j, reached by a step of lambda-size ``h_j``,

    e_j = c sigma_j^2 (1 - exp(-2 h_j)) / 2,   x <- x + e_j g + sqrt(2 e_j) z,

so that the move's noise ``sqrt(2 e_j)`` is a DDPM (ancestral) step's over the same interval (for ``c = 1``; ``1``
on a step from alpha = 0). To first order in ``h_j`` this is the Langevin part of the reverse SDE over the step
(``e = beta dt / 2`` for VP, ``d(sigma^2) / 2`` for VE): a deterministic predictor (``ddim``) with ``c = 1`` and one
corrector move per step is DDPM in the limit of small steps, which is how the paper reads CFG as a predictor plus a
Langevin corrector on the gamma-powered distribution. The step does not depend on the batch or on the drawn
noise. A move contracts a Gaussian target of variance ``v`` by ``1 - e/v``, so ``e_j < 2 v`` is needed for
stability: ``c <= 1`` keeps ``e_j <= sigma_j^2 / 2``.

Corrector requests are marked: the corrector asks for its evaluations at the node's
:class:`~fewstep.model.point.CorrectorPoint` (the node's values, another type), so a layer of the model-call stack
can answer them differently from the predictor's (:class:`fewstep.guidance.CFGPredictorCorrector` guides them at
its own scale); every other layer sees an ordinary point.

Log-probabilities (``trajectory=``): the snr rule's Langevin step ``x + e g + sqrt(2 e) z`` is not a Gaussian
transition (its step size ``e`` depends on ``||z||``, and with ``norm="batch"`` on the other samples' noise); the
fixed-step move is, but recording it is not implemented; so recording a run with ``n_corrector > 0`` raises
NotImplementedError; with ``n_corrector=0`` the run is the predictor's, and its transitions are recorded as the
predictor records them.

Song et al.'s code (and diffusers' ``ScoreSdeVePipeline``) run the corrector before the predictor at each level,
at ``t_max`` too and not at the last level; Alg. 4 here (and in the paper) corrects after each predictor step.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ...context import RunContext
from ...model.point import CorrectorPoint
from ...nodes import NodeTable
from ...noise.source import NoiseSource
from ...options import real_option
from ..base import Solver, Steps, get_solver, register
from ..stochastic import noise_levels

NORMS = ("batch", "sample")


class LangevinPlan(NamedTuple):
    """The corrector's moves at model node ``j``: the marked request ``point``, ``size`` (the fixed step ``e_j`` with
    ``step_size``, else the snr rule's factor ``2 a_j snr^2``), ``score_scale`` (``-1/sigma_j``: the score is
    ``score_scale * eps_hat``) and the noise ``intervals`` of its draws."""

    j: int
    point: CorrectorPoint
    size: float
    score_scale: float
    intervals: list[tuple[float, float]]


@register
class PredictorCorrector(Solver):
    """Song et al. 2021 predictor–corrector: ``predictor`` (a solver name, with ``predictor_options``) plus
    ``n_corrector`` Langevin steps of signal-to-noise ratio ``snr`` per step (``norm``: module docstring), or of
    the fixed size ``step_size`` (Bradley & Nakkiran 2024; module docstring)."""

    name = "pc_langevin"
    order = 1
    nfe_per_step = 2
    stochastic = True
    lambda_based = True
    summary = "predictor-corrector: a predictor step, then n_corrector Langevin steps with the snr step-size rule"
    paper = "Song et al. 2021, Score-based generative modeling through SDEs, Alg. 4-5"
    peers = "score_sde EulerMaruyamaPredictor / ReverseDiffusionPredictor + LangevinCorrector"
    predictor: Solver
    snr: float
    n_corrector: int
    norm: str
    step_size: float | None

    def __init__(
        self,
        predictor: str = "euler_maruyama",
        snr: float = 0.16,
        n_corrector: int = 1,
        predictor_options: dict[str, Any] | None = None,
        norm: str = "batch",
        step_size: float | None = None,
    ):
        if isinstance(n_corrector, bool) or not isinstance(n_corrector, numbers.Integral) or n_corrector < 0:
            raise ValueError(f"n_corrector: must be an integer >= 0, got {n_corrector!r}")
        if not isinstance(predictor, str):
            raise TypeError(f"predictor: must be a solver name, got {type(predictor).__name__}")
        if predictor == self.name:
            raise ValueError("predictor: must be another solver, not 'pc_langevin'")
        self.predictor = get_solver(predictor, **dict(predictor_options or {}))
        if self.predictor.nfe_per_step != 1 or self.predictor.corrects_requests:
            raise ValueError(
                f"predictor: must spend one evaluation per step at its own state, without a corrector of its own "
                f"(e.g. 'ddpm', 'euler_maruyama', 'euler_ancestral', 'dpmpp_2m_sde', 'ddim'), got {predictor!r}"
            )
        if norm not in NORMS:
            raise ValueError(f"norm: choose 'batch' or 'sample', got {norm!r}")
        self.norm = norm
        self.snr = real_option("snr", snr)
        self.step_size = None if step_size is None else real_option("step_size", step_size)
        if self.step_size == 0.0:
            raise ValueError("step_size: must be > 0 (1.0: the DDPM-matched Langevin step), got 0")
        if self.step_size is not None and (snr != 0.16 or norm != "batch"):
            raise ValueError(
                f"step_size: replaces the snr rule, so snr= and norm= do not apply (got snr={snr!r}, norm={norm!r}); "
                "give step_size= or snr=/norm=, not both"
            )
        self.n_corrector = int(n_corrector)  # a step spends 1 + n_corrector evaluations (nfe_per_step: the default)

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return self.predictor.step_orders(nodes)

    def nfe(self, nodes: NodeTable) -> int:
        return self.predictor.nfe(nodes) + self.n_corrector * (nodes.steps - 1)

    def batch_dependence(self) -> str | None:
        if self.n_corrector and self.norm == "batch" and self.step_size is None:
            return (
                "pc_langevin with norm='batch' (the default, as Song et al.'s code) sizes each Langevin step by the "
                "batch's mean noise and score norms, so a sample depends on its batch; use norm='sample' for "
                "per-sample seeds"
            )
        return None

    def recording_refusal(self) -> str | None:
        if self.n_corrector == 0:
            return self.predictor.recording_refusal()
        if self.step_size is not None:
            return (
                "trajectory: pc_langevin's fixed-size Langevin moves (step_size=) are not recorded as Gaussian "
                "transitions (not implemented); with n_corrector=0 the predictor's transitions are recorded"
            )
        return (
            "trajectory: pc_langevin's Langevin step x + e g + sqrt(2 e) z is not a Gaussian transition: its "
            "step size e = 2 a (snr ||z||/||g||)^2 depends on the drawn z itself (with norm='batch' also on the "
            "other samples' noise), so the corrected state has no Gaussian log-density; with n_corrector=0 the "
            "predictor's transitions are recorded"
        )

    def steps_for_nfe(self, nfe: int, first_infinite: bool, clean_end: bool) -> int:
        """``steps (1 + n_corrector) - n_corrector = nfe`` (no corrector after the last step)."""
        per = 1 + self.n_corrector
        steps, rest = divmod(nfe + self.n_corrector, per)
        if rest or steps < 1:
            ok = [n for n in range(1, 4 * per + 1) if (n + self.n_corrector) % per == 0]
            raise ValueError(
                f"nfe: 'pc_langevin' spends {per} evaluations per step (one on the last), so nfe={nfe} cannot be "
                f"spent exactly; possible values start {ok[:6]}"
            )
        return steps

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        level = noise_levels(nodes)
        m = self.n_corrector
        # node j (>= 1, a model node), keyed by its Point: the plan of its corrector moves
        corrector: dict[int, LangevinPlan] = {}
        for j in range(1, nodes.steps if m else 1):  # the nodes the predictor continues from
            sigma_j = float(nodes.sigma[j])
            if self.step_size is None:
                size = 2.0 * float(nodes.alpha[j - 1] / nodes.alpha[j]) ** 2 * self.snr**2  # 2 a_j snr^2
            else:  # c sigma_j^2 (1 - e^{-2 h}) / 2, (1 - e^{-2h}) = 1 on a step from alpha = 0
                size = 0.5 * self.step_size * sigma_j**2 * -math.expm1(-2.0 * float(nodes.h[j - 1]))
            lo, hi = float(level[j]), float(level[j - 1])
            if math.isinf(hi):  # a step from alpha = 0: noise on [l_j, 2 l_j + 1] (the predictor draws none)
                hi = 2.0 * lo + 1.0
            cuts = [hi + (lo - hi) * k / (m + 1) for k in range(m + 1)]
            point = CorrectorPoint.of(nodes.node(j))
            corrector[id(nodes.points[j])] = LangevinPlan(
                j, point, size, -1.0 / sigma_j, list(zip(cuts, cuts[1:], strict=False))
            )
        inner, sampler = ctx, ctx.noise.sampler
        if m and sampler is not None:  # the predictor's noise: the last part of each step's interval
            inner = ctx.with_noise(NoiseSource(sampler=lambda s, t: sampler(s + (t - s) * m / (m + 1), t)))
        steps = self.predictor.solve(x, nodes, inner)
        request = next(steps)
        try:
            while True:
                x_req, p = request
                node = corrector.pop(id(p), None)
                if node is not None:  # the predictor continues from the tensor it asked about: correct it in place
                    x_req.copy_((yield from self._langevin(ctx, x_req, node)))
                request = steps.send((yield request))
        except StopIteration as done:
            return done.value

    def _langevin(self, ctx: RunContext, x: Tensor, plan: LangevinPlan) -> Steps:
        """Alg. 5 at node ``plan.j`` from ``x``: a new tensor (``x`` itself is never evaluated, so that the caller may
        overwrite it under autograd)."""
        x = x.clone()
        for s, t in plan.intervals:
            _, eps = yield x, plan.point
            z = ctx.draw(s, t, x)
            if self.step_size is not None:  # x + e g + sqrt(2 e) z with the fixed e, g = -eps_hat/sigma
                x = x.add(eps, alpha=plan.size * plan.score_scale).add_(z, alpha=math.sqrt(2.0 * plan.size))
                continue
            g = eps * plan.score_scale  # the score, -eps_hat/sigma
            e = plan.size * (_norm(z, self.norm) / _norm(g, self.norm)).square()  # 2 a (snr ||z|| / ||g||)^2
            x = x + e * g + (2.0 * e).sqrt() * z
        return x


def _norm(v: Tensor, kind: str) -> Tensor:
    """Per-sample Euclidean norms (``"batch"``: their batch mean), shaped to broadcast against ``v``."""
    n = v.flatten(1).norm(dim=1)
    if kind == "batch":
        n = n.mean().expand(v.shape[0])
    return n.clamp_min(torch.finfo(v.dtype).tiny).view(-1, *([1] * (v.ndim - 1)))
