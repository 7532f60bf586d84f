"""Fewer and cheaper network calls (docs/reducers.md).

- :class:`Teleport` (with :class:`GaussianFit`, :func:`choose_t_skip`): the first part of the probability-flow ODE
  in closed form from a Gaussian fit of the data, then any solver on the rest (``Teleport.sample``).
- Evaluation layers for ``fewstep.sample(..., wrappers=[...])``, each counting its network and substituted requests
  (:class:`ReducerCounts`): :class:`ABCache` (Adams-Bashforth extrapolation of past outputs on a fixed plan),
  :class:`SkipCache` (skipping while the output barely changes), :class:`TStitch` (a small model for the noisy
  requests), :class:`SADA` (skipping where the ODE trajectory's second-order difference says it is stable).
- :class:`Bottleneck` (with :class:`Stage`): some stages of a run at a lower resolution for image-shaped states,
  re-noising the clean estimate at each change of resolution (``Bottleneck.sample``).
"""

from __future__ import annotations

from .ab_cache import ABCache
from .bottleneck import Bottleneck, BottleneckCounts, Stage, StageCount
from .counts import ReducerCounts
from .gaussian import GaussianFit
from .sada import SADA
from .skipping import SkipCache
from .stitch import TStitch
from .teleport import SkipChoice, Teleport, choose_t_skip

__all__ = [
    "ABCache",
    "Bottleneck",
    "BottleneckCounts",
    "GaussianFit",
    "ReducerCounts",
    "SADA",
    "SkipCache",
    "SkipChoice",
    "Stage",
    "StageCount",
    "TStitch",
    "Teleport",
    "choose_t_skip",
]
