"""Weighted composition of prompts or models: Liu et al. 2022, "Compositional Visual Generation with Composable
Diffusion Models" (eq. 10, the conjunction AND; a negative weight is their negation NOT, eq. 13):

    eps = eps_u + sum_i w_i (eps_i - eps_u),

with ``eps_i`` the prediction under the i-th conditioning (prompt, label) or of the i-th model, and ``eps_u`` the
unconditional one. Branches of the run's network (its unconditional and each conditioning given as ``kwargs``) run
as one batched network call; each separate model is one more call. The combination is affine in the outputs, so it
is the same on the network's output as on ``eps`` or ``x0``: it acts on the output and runs under the time shift.
With one term of weight ``w`` and the run's own conditioning it is classifier-free guidance at scale ``w``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..model.network import Network
from ..model.stack import ModelOutput
from .rule_checks import conditioning
from .terms import Source, Term, TermOutputs, add_differences, check_terms, terms_from


@dataclass(frozen=True)
class Composition:
    """``eps_u + sum_i w_i (eps_i - eps_u)`` over ``terms`` (each a :class:`~fewstep.guidance.Term`: its weight, and
    the conditioning ``kwargs`` it gives the run's network, or a separate ``model``), with the unconditional branch
    the run's network under ``uncond_kwargs``."""

    terms: Sequence[Term]
    uncond_kwargs: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", check_terms("terms", self.terms))
        conditioning("uncond_kwargs", self.uncond_kwargs, "a composition (eps_u + sum_i w_i (eps_i - eps_u))")

    @classmethod
    def weighted(
        cls, conditions: Sequence[Mapping[str, Any] | Callable[..., Tensor] | None], weights: Sequence[float],
        uncond_kwargs: Mapping[str, Any],
    ) -> Composition:  # fmt: skip
        """From parallel lists: ``conditions[i]`` a mapping of model kwargs, a separate model, or None (the run's own
        conditioning), weighted by ``weights[i]``."""
        return cls(terms_from(conditions, weights), uncond_kwargs)

    def wrap(self, network: Network) -> ModelOutput:
        sources = [Source(self.uncond_kwargs)] + [term.source for term in self.terms]
        outputs = TermOutputs(network, sources, "terms")
        weights = [float(term.weight) for term in self.terms]

        def composed_output(x: Tensor, time: Tensor, t: float) -> Tensor:
            out_u, *outs = outputs(x, time, t)
            return add_differences(out_u, [(w, o, out_u) for w, o in zip(weights, outs, strict=True)])

        return composed_output
