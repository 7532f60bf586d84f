"""Cyclic one-way diffusion (Wang et al. 2024, "Diffusion in Diffusion: Cyclic One-Way Diffusion for
Text-Vision-Conditioned Generation", COW): a visual condition (known pixels) is kept in its region of the noisy
state at every step, so that information diffuses one way, from the condition into the rest of the image, and a
stretch of the denoising is repeated in cycles, re-noising back up after each pass, to let it spread further.

- **One way** (:class:`OneWayDiffusion`, a rule): at a request at level ``t`` the condition's region of the state is
  replaced by the condition noised to that level,

      x' = m * (alpha_t y + sigma_t z) + (1 - m) * x,        z ~ N(0, I),

  and the request is answered with the predictions at ``x'`` (of the inner rule, e.g. text CFG, or the plain
  network), so that the first-order CFG++ forms step from ``x'`` (:mod:`~fewstep.guidance.state_moves`). One network
  call per request (the inner rule's); nothing else is evaluated. ``m`` and ``y`` are a
  :class:`fewstep.posterior.Mask` measurement's mask and observation.
- **Cycles** (:func:`fewstep.guidance.cyclic.cyclic_sample`, a sampler): a stretch of the run repeated, the state
  noised back up by the forward process before each repetition (RePaint's jump, Lugmayr et al. 2022).

On a Gaussian mixture with a known coordinate block this is the replacement method: exact where the known and
unknown coordinates are independent, biased where they are correlated (the state's known part is a fresh noisy
copy of ``y``, not one consistent with the rest). ``python benchmarks/guidance_methods.py`` measures it against the
exact conditional law.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction
from .state_moves import (
    MOVING_SOLVERS,
    check_generator,
    check_inner_rule,
    check_moving_solver,
    drawer,
    inner_evaluation,
    require_mask,
)

if TYPE_CHECKING:  # the posterior package builds on the rules: no import back at run time
    from ..posterior.measurement import Mask


@dataclass(frozen=True)
class OneWayDiffusion:
    """COW's one-way step (module docstring): the known region of ``measurement`` (a noiseless
    :class:`fewstep.posterior.Mask`) noised to each request's level and put into the state, then ``rule`` (None: the
    unguided network) evaluated there; ``generator`` draws the condition's noise."""

    measurement: Mask
    rule: object = None
    generator: torch.Generator | None = None
    cfg_pp = True  # answers with the predictions at the moved state: the solvers' CFG++ forms step from it
    cfg_pp_solvers = MOVING_SOLVERS  # the forms that step from the implied state alone

    def __post_init__(self) -> None:
        require_mask("measurement", self.measurement, "the known pixels")
        if not self.measurement.noiseless:
            raise ValueError(
                f"measurement: one-way diffusion copies the known pixels exactly; give noise_std=0, got "
                f"{self.measurement.noise_std} (for a noisy observation use fewstep.guidance.self_guidance)"
            )
        check_inner_rule("rule", self.rule)
        check_generator(self.generator)

    def check_solver(self, solver: object, sde_window: object = None) -> None:
        check_moving_solver("OneWayDiffusion", solver, sde_window)

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        inner = inner_evaluation(self.rule, network)
        draw = drawer(self.generator)
        mask, y = self.measurement.mask, self.measurement.y
        moved: list[Tensor] = []  # the mask and observation on the state's device and dtype, once per run

        def evaluate(x: Tensor, p: Point) -> Prediction:
            if not moved:
                self.measurement.check(x)
                moved.extend([mask.to(x).bool().expand_as(x), y.to(x).expand_as(x)])
            known = moved[1] * p.alpha + draw(x) * p.sigma
            return inner(torch.where(moved[0], known, x), p)

        return evaluate
