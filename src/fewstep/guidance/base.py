"""The two kinds of guidance rule, by the level of the model-call stack they act on.

- :class:`Guidance` acts on the network's raw output: ``wrap(network)`` returns ``output(x, time, t)``, which the
  conversion to ``(x0, eps)`` (or the time shift) calls instead of the network. Plain CFG is one: the output is
  affine in ``(x0, eps)``, so combining outputs is combining predictions.
- :class:`PredictionGuidance` acts on the predictions at a point: ``wrap_prediction(network, needs_eps)`` returns
  the evaluation ``(x, point) -> (x0_hat, eps_hat)`` itself, so that it can read the noise level (interval guidance,
  scheduled scales), combine clean-sample predictions non-linearly (APG's projection, a loss gradient), or hand the
  solver an ``eps_hat`` that differs from the one its ``x0_hat`` implies (CFG++'s unconditional renoising).

Either is passed as ``sample(..., guidance=rule)``; :meth:`fewstep.model.Denoiser.stack` builds the layer. A rule
is a description shared between runs: state it keeps along a run (APG's momentum, a density estimate) lives in what
``wrap`` or ``wrap_prediction`` returns, which each run builds anew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # the model package imports the rules' protocols: no import back at run time
    from ..model.network import Network
    from ..model.stack import Evaluation, ModelOutput


@runtime_checkable
class Guidance(Protocol):
    """A rule on the network's output (see the module docstring)."""

    def wrap(self, network: Network) -> ModelOutput: ...


@runtime_checkable
class PredictionGuidance(Protocol):
    """A rule on the predictions at a point (see the module docstring)."""

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation: ...


GuidanceRule = Guidance | PredictionGuidance


def is_guidance_rule(rule: object) -> bool:
    """Whether ``rule`` has ``wrap(network)`` or ``wrap_prediction(network, needs_eps)``."""
    return callable(getattr(rule, "wrap", None)) or callable(getattr(rule, "wrap_prediction", None))
