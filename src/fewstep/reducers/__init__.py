"""Fewer and cheaper network calls (docs/reducers.md).

- :class:`Teleport` (with :class:`GaussianFit`, :func:`choose_t_skip`): the first part of the probability-flow ODE
  in closed form from a Gaussian fit of the data, then any solver on the rest (``Teleport.sample``).
- Evaluation layers for ``fewstep.sample(..., wrappers=[...])``, each counting its network and substituted requests
  (:class:`ReducerCounts`): :class:`ABCache` (Adams-Bashforth extrapolation of past outputs on a fixed plan),
  :class:`SkipCache` (skipping while the output barely changes), :class:`TStitch` (a small model for the noisy
  requests).
"""

from __future__ import annotations

from .ab_cache import ABCache
from .counts import ReducerCounts
from .gaussian import GaussianFit
from .skipping import SkipCache
from .stitch import TStitch
from .teleport import SkipChoice, Teleport, choose_t_skip

__all__ = ["ABCache", "GaussianFit", "ReducerCounts", "SkipCache", "SkipChoice", "TStitch", "Teleport", "choose_t_skip"]
