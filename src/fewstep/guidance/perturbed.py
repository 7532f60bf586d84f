"""Guidance away from perturbed branches: Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with
Perturbed-Attention Guidance" (PAG, eq. 9), with any number of branches and, optionally, classifier-free guidance.

    out = out_c + sum_k w_k (out_c - out_k)                                   (PAG: one branch, w = s)
    out = out_u + s (out_c - out_u) + sum_k w_k (out_c - out_k)               (with CFG, as diffusers' PAG pipelines)

where ``out_k`` is a perturbed branch: the run's network under other conditioning (a flag that perturbs the
attention, a dropped token; batched with the conditional and unconditional branches into one network call), or a
separate model (the network with perturbed layers, or a weaker model as in Karras et al. 2024's autoguidance, where
``w = s_auto - 1``; one more network call each). The combination is affine in the outputs, hence in ``(x0, eps)``:
it acts on the network's output and runs under the time shift as plain CFG does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..model.network import Network
from ..model.stack import ModelOutput
from .cfg import guided
from .rule_checks import conditioning, finite_number
from .terms import Source, Term, TermOutputs, add_differences, check_terms, terms_from


@dataclass(frozen=True)
class PerturbedGuidance:
    """Guidance away from the perturbed ``branches`` (each a :class:`~fewstep.guidance.Term`: its weight, and
    ``kwargs`` or a separate ``model``), plus classifier-free guidance at ``scale`` with ``uncond_kwargs`` where
    ``scale != 1`` (module docstring)."""

    branches: Sequence[Term]
    scale: float = 1.0
    uncond_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        terms = check_terms("branches", self.branches)
        for i, term in enumerate(terms):
            if term.kwargs is None and term.model is None:
                raise ValueError(
                    f"branches[{i}]: a perturbed branch needs kwargs= (the conditioning that perturbs the network) or "
                    "model= (a perturbed network); without either it is the conditional branch and adds nothing"
                )
        object.__setattr__(self, "branches", terms)
        finite_number("scale", self.scale)
        if self.scale != 1.0:
            conditioning("uncond_kwargs", self.uncond_kwargs, "classifier-free guidance (scale != 1)")

    @classmethod
    def weighted(
        cls, branches: Sequence[Mapping[str, Any] | Callable[..., Tensor]], weights: Sequence[float],
        scale: float = 1.0, uncond_kwargs: Mapping[str, Any] | None = None,
    ) -> PerturbedGuidance:  # fmt: skip
        """From parallel lists: ``branches[k]`` a mapping of model kwargs or a perturbed model, weighted by
        ``weights[k]``."""
        return cls(terms_from(branches, weights), scale, uncond_kwargs)

    def wrap(self, network: Network) -> ModelOutput:
        cfg = self.scale != 1.0
        sources = ([Source(self.uncond_kwargs)] if cfg else []) + [Source()] + [b.source for b in self.branches]
        outputs = TermOutputs(network, sources, "branches")
        scale, weights = float(self.scale), [float(b.weight) for b in self.branches]

        def guided_output(x: Tensor, time: Tensor, t: float) -> Tensor:
            outs = outputs(x, time, t)
            if cfg:
                out_u, out_c, *perturbed = outs
                base = guided(out_u, out_c, scale)
            else:
                out_c, *perturbed = outs
                base = out_c
            return add_differences(base, [(w, out_c, o) for w, o in zip(weights, perturbed, strict=True)])

        return guided_output
